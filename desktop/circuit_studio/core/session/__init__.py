"""The window's Qt-free state (workspace, analysis, history, events) and session files."""
