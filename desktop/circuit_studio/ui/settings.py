"""Reading the window's QSettings.

QSettings in INI format (and on some platforms natively) stores a one-item list like a plain string,
and an empty list as nothing: reading it back gives a `str`, which iterates as its characters.
`string_list` always gives a list of strings.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings


def string_list(settings: QSettings, key: str) -> list[str]:
    """The string list stored under `key` ([] when none), whether QSettings returns a list, a str or None."""
    value = settings.value(key, [])
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
