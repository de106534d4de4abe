"""Writing outputs whole or not at all, several at once: the one place that does it for every writer.

    with replace_all_or_none([out_json, out_npz]) as (tmp_json, tmp_npz):
        tmp_json.write_text(...)             # the body fills the temporaries
        ...                                  # on return every target is replaced, all or none

1. Each target gets a temporary file (or, with `folders=True`, folder) beside it, named
   ".<name>.<pid>-<random>.tmp": the same folder, so the rename is atomic, and the pid lets a later
   write remove what a killed process left (`remove_stale_temporaries`).
2. When the body returns, each temporary is fsynced; when there is more than one target (or a
   folder, or `backup`), each existing file target is first hard-linked to a temporary name (costs
   no space) and each existing folder renamed aside. Then the temporaries are renamed onto their
   targets. If any step fails, every target is put back as it was, so a command writing two files
   never leaves one new and the other old or missing. Last, the folders are fsynced.
3. When the body raises, the temporaries are removed and no target changes.

OSError and SQLite errors (also wrapped, e.g. by SQLAlchemy) become `OutputError` ("Not enough disk
space to write …", "… is read-only …") naming the file, unless the caller passes its own `error`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import CircuitStudioError
from .processes import pid_alive

__all__ = ["OutputError", "replace_all_or_none", "write_text_atomic", "write_bytes_atomic", "output_error",
           "is_disk_full", "is_read_only", "is_write_failure", "check_output_path", "remove_stale_temporaries"]

_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN = 13, 8, 14
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
NOTHING_WRITTEN = "nothing was written"

ErrorFn = Callable[[BaseException, "Path | str"], Exception]  # (the error, the output(s) it concerns)


class OutputError(CircuitStudioError):
    """An output file could not be written; no partial file was left behind."""


# ---- what went wrong, in words ----
def _cause(e: BaseException) -> BaseException:
    return getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's exception in .orig


def is_disk_full(e: BaseException) -> bool:
    c = _cause(e)
    return getattr(c, "sqlite_errorcode", None) == _SQLITE_FULL or getattr(c, "errno", None) in _DISK_FULL_ERRNOS


def is_read_only(e: BaseException) -> bool:
    c = _cause(e)
    return (getattr(c, "sqlite_errorcode", None) in (_SQLITE_READONLY, _SQLITE_CANTOPEN)
            or getattr(c, "errno", None) in _READ_ONLY_ERRNOS)


def is_write_failure(e: BaseException) -> bool:
    """Errors of the disk or the file system (as opposed to bugs and bad data)."""
    return isinstance(_cause(e), (OSError, sqlite3.Error))


def output_error(e: BaseException, path: Path | str,
                 cls: type[CircuitStudioError] = OutputError) -> CircuitStudioError:
    """The one-line error (an OutputError unless `cls` says otherwise) for a failed write of `path`."""
    if is_disk_full(e):
        return cls(f"Not enough disk space to write {path}.", f"Free some space or write to another disk; "
                                                              f"{NOTHING_WRITTEN}.")
    if is_read_only(e):
        return cls(f"Cannot write {path}: its folder is read-only or not yours.",
                   f"Choose another folder; {NOTHING_WRITTEN}.")
    c = _cause(e)
    detail = getattr(c, "strerror", None) or str(c) or type(c).__name__
    return cls(f"Could not write {path}: {detail}.", f"Check the folder and the disk; {NOTHING_WRITTEN}.")


def check_output_path(path: Path, option: str) -> None:
    """Refuse, before any slow work, an output file that could never be written: raises OutputError."""
    folder = path.absolute().parent
    if not folder.is_dir():
        raise OutputError(f"Cannot write {option} {path}: the folder {folder} does not exist.",
                          "Create it first or choose an existing folder.")
    if path.is_dir():
        raise OutputError(f"Cannot write {option} {path}: it is a folder.", "Give a file name.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {option} {path}: the folder {folder} is read-only or not yours.",
                          "Choose another folder.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"Cannot write {option} {path}: the file is read-only.",
                          "Choose another name or make the file writable.")


# ---- temporaries ----
def _temporary_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _make_temporary(target: Path, folder: bool) -> Path:
    tmp = _temporary_name(target)
    if folder:
        tmp.mkdir()
        return tmp
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    if target.is_file():  # the new file keeps the old one's permissions
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode) | stat.S_IWUSR)
    return tmp


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the original error is the one worth reporting


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporaries that dead processes left beside `target` (POSIX: we can ask if a pid lives)."""
    if os.name != "posix":
        return
    for p in target.parent.glob(f".{_glob_escape(target.name)}.*-*.tmp"):
        pid = p.name[:-4].rpartition(".")[2].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            _remove(p)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync(path: Path) -> None:
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(Path(root) / name)
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (POSIX); best effort: the renames themselves have happened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- the commit ----
def _set_aside(target: Path) -> Path | None:
    """Keep the current target under a temporary name so that it can be put back; None if there is none."""
    if not os.path.lexists(target):
        return None
    aside = _temporary_name(target)
    if target.is_dir() and not target.is_symlink():
        os.replace(target, aside)  # a folder cannot be replaced in one rename
        return aside
    try:
        os.link(target, aside)  # the target stays in place meanwhile
    except OSError:
        shutil.copy2(target, aside)  # file systems without hard links
    return aside


@dataclass
class _Step:
    """One target of a commit, and what is needed to undo it."""

    target: Path
    existed: bool
    aside: Path | None  # its previous self: a hard link (file) or the renamed folder
    replaced: bool = False


def _commit(pairs: list[tuple[Path, Path]], backup: bool) -> None:
    """Rename every temporary onto its target; on any failure put every target back as it was."""
    # One file needs no copy to go back to: its rename either happened or changed nothing.
    need_aside = backup or len(pairs) > 1 or any(tmp.is_dir() for tmp, _ in pairs)
    steps: list[_Step] = []
    try:
        for tmp, target in pairs:
            steps.append(_Step(target, os.path.lexists(target), _set_aside(target) if need_aside else None))
            os.replace(tmp, target)
            steps[-1].replaced = True
        if backup:
            for step in steps:
                if step.aside is not None:
                    os.replace(step.aside, step.target.with_name(step.target.name + ".bak"))
                    step.aside = None
    except BaseException:
        for step in reversed(steps):
            _undo(step)
        raise
    for step in steps:
        if step.aside is not None:
            _remove(step.aside)


def _undo(step: _Step) -> None:
    try:
        folder = step.aside is not None and step.aside.is_dir() and not step.aside.is_symlink()
        if step.replaced and (folder or not step.existed):
            _remove(step.target)
        if step.aside is None:
            return
        if step.replaced or folder:  # a renamed folder is away even when the rename onto it failed
            os.replace(step.aside, step.target)
        else:
            _remove(step.aside)  # the link of a file that was never replaced
    except OSError:
        pass  # nothing more can be done; the original error is reported


@contextmanager
def replace_all_or_none(targets: Sequence[Path | str | None], *, folders: bool = False, backup: bool = False,
                        error: ErrorFn = output_error) -> Iterator[list[Path | None]]:
    """Yield a temporary path for each target (None stays None); see the module docstring.

    `backup` keeps each replaced file as "<name>.bak". Write failures are raised as `error(e, target)`.
    """
    paths = [None if t is None else Path(t).absolute() for t in targets]
    real = [p for p in paths if p is not None]
    if len(set(real)) != len(real):
        raise OutputError(f"The same file is given twice as output: {', '.join(map(str, real))}.",
                          "Give each output its own name.")
    temporaries: dict[Path, Path] = {}
    try:
        for p in real:
            remove_stale_temporaries(p)
            temporaries[p] = _make_temporary(p, folders)
        yield [None if p is None else temporaries[p] for p in paths]
        for tmp in temporaries.values():
            _fsync(tmp)
        _commit([(tmp, p) for p, tmp in temporaries.items()], backup)
    except BaseException as e:
        for tmp in temporaries.values():
            _remove(tmp)
        if is_write_failure(e):
            raise error(e, _failed_target(e, temporaries, real)) from e
        raise
    for folder in {p.parent for p in real}:
        _fsync_folder(folder)


def _failed_target(e: BaseException, temporaries: dict[Path, Path], targets: list[Path]) -> Path | str:
    """The target whose write failed when the error names it (or its temporary), else all of them."""
    names = {str(getattr(_cause(e), attr, None) or "") for attr in ("filename", "filename2")}
    for target, tmp in temporaries.items():
        if str(tmp) in names or str(target) in names:
            return target
    names = [str(t) for t in targets]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def write_text_atomic(path: Path | str, text: str, *, error: ErrorFn = output_error) -> None:
    """`text` as the UTF-8 file `path`, whole or not at all."""
    with replace_all_or_none([path], error=error) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path | str, data: bytes, *, error: ErrorFn = output_error) -> None:
    """`data` as the file `path`, whole or not at all."""
    with replace_all_or_none([path], error=error) as (tmp,):
        tmp.write_bytes(data)
