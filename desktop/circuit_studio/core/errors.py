"""The errors Circuit Studio reports to its users.

Every error carries a one-line statement of what is wrong (naming the file or value) and a hint
saying what to do about it, so the command line and the window can show both without guessing.
"""

from __future__ import annotations


class CircuitStudioError(Exception):
    """Base class: `str(err)` is the one-line message, `err.hint` what the user can do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class ModelLoadError(CircuitStudioError):
    """The model folder is missing, incomplete, corrupt or of an unsupported family."""


class TranscoderLoadError(CircuitStudioError):
    """The transcoder folder is missing, corrupt or does not fit the model."""


class PromptError(CircuitStudioError):
    """The prompt is empty, too long for the model, or does not fit the transcoders' needs."""


class GraphFileError(CircuitStudioError):
    """A graph file cannot be read or written."""


class Cancelled(CircuitStudioError):
    """The user cancelled a running job; nothing was written."""

    def __init__(self, message: str = "Cancelled.") -> None:
        super().__init__(message)
