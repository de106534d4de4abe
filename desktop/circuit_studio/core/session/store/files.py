"""What the session store checks and says about files: its errors, SQLite headers, locks, journals left
by killed saves, leftovers of dead processes, free space, and the digest of a file's rows."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

from ...atomic_write import is_disk_full, is_read_only, remove_stale_temporaries
from ...errors import CircuitStudioError
from ..records import SESSION_SUFFIX
from ..schema import APPLICATION_ID, DIGEST_SKIP_COLUMNS

SQLITE_MAGIC = b"SQLite format 3\x00"
JOURNAL_SUFFIX = "-journal"  # SQLite's rollback journal: "<file>-journal"
LOCK_TIMEOUT = 0.25  # seconds to wait for another program's lock before saying it holds one
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
SQLITE_READONLY_ROLLBACK = 776  # a journal needs applying and the connection cannot write


class SessionError(CircuitStudioError):
    """A session file cannot be saved or opened; `str()` says why and what to do."""


class SessionLockedError(SessionError):
    """Another program (or window) holds a lock on the session file: retrying later may work."""


# ---- messages ----
def save_error(e: BaseException, path: Path | str) -> SessionError:
    if is_disk_full(e):
        return SessionError(f"Not enough disk space to save {path}.",
                            "Free some space or save to another disk; the previous file is unchanged.")
    if is_read_only(e):
        return SessionError(f"Cannot save {path}: the folder {Path(path).parent} is read-only or not yours.",
                            "Save the session in another folder (Save session as…); the previous file is unchanged.")
    orig = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's exception
    detail = getattr(orig, "strerror", None) or str(orig)
    return SessionError(f"Could not save {path}: {detail}.", "The previous file is unchanged.")


def locked_for_saving(path: Path) -> SessionLockedError:
    return SessionLockedError(f"Cannot save {path}: another program (or another Circuit Studio window) "
                              "has it open and is writing to it.",
                              "Close it there or let it finish, then retry; the previous file is unchanged.")


def locked(path: Path) -> SessionLockedError:
    return SessionLockedError(f"{path} is open in another program (or another Circuit Studio window) that is "
                              "writing to it.",
                              "Close it there or let it finish, then retry; the file was not changed.")


def not_a_session(path: Path, why: str) -> SessionError:
    return SessionError(f"{path} is not a Circuit Studio session: {why}.",
                        "Open a .cs-session file saved by Circuit Studio.")


def damaged(path: Path, why: str) -> SessionError:
    return SessionError(f"{path} is damaged and cannot be opened: {why}.",
                        "Open its .bak copy or an earlier copy if you have one; the file was not changed.")


def is_locked(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return (code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)) if code is not None else "locked" in str(e)


def mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# ---- headers ----
def check_header(path: Path) -> None:
    """Raise SessionError unless `path` starts like a complete session file of ours."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError as e:
        raise SessionError(f"Session file {path} does not exist.") from e
    except IsADirectoryError as e:
        raise not_a_session(path, "it is a folder") from e
    except OSError as e:
        raise SessionError(f"Cannot read {path}: {e.strerror or e}.", "Check that the file is readable.") from e
    if size == 0:
        raise not_a_session(path, "it is empty")
    if not head.startswith(SQLITE_MAGIC):
        raise not_a_session(path, "it is not an SQLite database")
    if len(head) < 100:
        raise damaged(path, f"it is truncated, {size} bytes")
    if int.from_bytes(head[68:72], "big") != APPLICATION_ID:
        raise not_a_session(path, "it is an SQLite database of another program")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    n_pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and n_pages and size < page_size * n_pages:
        raise damaged(path, f"it is truncated, {size:,} of {page_size * n_pages:,} bytes")


def header_schema_version(path: Path) -> int | None:
    """The schema version in the header of a session file of ours (`PRAGMA user_version`); None for
    anything else (no file, another program's, not SQLite)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except OSError:
        return None
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC) or int.from_bytes(head[68:72], "big") != APPLICATION_ID:
        return None
    return int.from_bytes(head[60:64], "big")


# ---- locks and journals ----
def check_not_locked(path: Path) -> None:
    """Refuse to replace a session another program is writing: its changes or ours would be lost.

    Taking the write lock (and giving it back at once, changing nothing) fails only while someone holds it."""
    if not path.is_file():
        return
    try:
        conn = sqlite3.connect(path.as_uri() + "?mode=rw", uri=True, timeout=LOCK_TIMEOUT, isolation_level=None)
    except sqlite3.Error:
        return  # not a database we could lock: nobody else can be writing it as one
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as e:
        if is_locked(e):
            raise locked_for_saving(path) from e
    finally:
        conn.close()


def journal_of(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def settle_journal(path: Path) -> None:
    """Finish what a killed save left beside `path`: SQLite's journal of the pages that save changed.

    Taking the write lock first applies a journal that needs it (the last saved state comes back), which a
    read-only open cannot do; one that is still there then is the unsynced journal of a save killed before
    it changed the file, which SQLite ignores: it is deleted. So is a journal whose file is gone: SQLite
    would apply it to whatever file gets that name next. Nothing happens while another program is writing
    the file (the journal is its own), nor when the file cannot be written (opening it then says why)."""
    journal = journal_of(path)
    if not journal.is_file():
        return
    if not path.exists():
        try:
            journal.unlink(missing_ok=True)
        except OSError:
            pass  # a folder we cannot write: nothing will be saved there either
        return
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=rw", uri=True, timeout=LOCK_TIMEOUT,
                               isolation_level=None)
    except sqlite3.Error:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        journal.unlink(missing_ok=True)
        conn.execute("ROLLBACK")
    except (sqlite3.Error, OSError):
        pass
    finally:
        conn.close()


def unfinished_save(path: Path) -> SessionError:
    return SessionError(f"{path} was being saved when its program stopped, and the unfinished save "
                        f"({journal_of(path).name}) can only be undone with write access.",
                        "Make the file and its folder writable, or copy both files to a folder of yours, and "
                        "open it again.")


def remove_stale_files(folder: str | Path) -> None:
    """Delete what killed processes left in `folder`: the temporaries of whole-file writes
    (".<name>.<pid>-<hex>.tmp", once that process is gone) and journals of session files that no longer
    exist. Meant for the start of the app, on its autosave folder: autosave names carry the process id,
    so no later save there would ever clean up after a dead one. Best effort: never raises."""
    folder = Path(folder)
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return
    targets = {name[1:-4].rpartition(".")[0] for name in names if name.startswith(".") and name.endswith(".tmp")}
    for target in sorted(t for t in targets if t):
        try:
            remove_stale_temporaries(folder / target)
        except OSError:
            pass
    for name in names:
        if name.endswith(SESSION_SUFFIX + JOURNAL_SUFFIX) and not (folder / name[:-len(JOURNAL_SUFFIX)]).exists():
            try:
                (folder / name).unlink()
            except OSError:
                pass


# ---- space ----
def check_free_space(path: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return  # cannot tell: the write itself will report a full disk
    if free < need:
        raise SessionError(f"Not enough disk space to save {path}: it needs about {mb(need)}, "
                           f"the disk has {mb(free)} free.",
                           "Free some space or save to another disk; the previous file is unchanged.")


# ---- the digest ----
def digest(dbapi_conn: sqlite3.Connection) -> str:
    """sha256 over every row of every table in rowid order, except meta's digest and the chunk data
    (covered by the crc32 column). The same function for every schema version."""
    h = hashlib.sha256()
    cur = dbapi_conn.cursor()
    tables = [r[0] for r in cur.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for table in tables:
        skip = DIGEST_SKIP_COLUMNS.get(table, set())
        cols = [r[1] for r in cur.execute(f'PRAGMA table_info("{table}")') if r[1] not in skip]
        where = " WHERE key != 'digest'" if table == "meta" else ""
        h.update(f"{table}\0{','.join(cols)}\n".encode())
        sql = f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{table}"{where} ORDER BY rowid'
        h.update("".join(map(repr, cur.execute(sql))).encode())  # the rows' reprs one after another
    return h.hexdigest()
