"""Qt-free computation: models, transcoders, attribution, pruning and graph files.

Everything here can be used from a script, a notebook or the command line; the desktop window
only presents and delegates to it. Nothing in this package imports Qt.
"""
