"""Saving sessions: in place, writing only what changed, when this process knows the file; whole and
atomically otherwise. See the package docstring for the guarantees."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable

from .... import __version__ as APP_VERSION
from ...atomic_write import is_disk_full, remove_stale_temporaries, replace_all_or_none
from ..records import Session, utc_now
from ..schema import APPLICATION_ID, FORMAT_NAME, SCHEMA_VERSION, SCHEMAS
from .files import (LOCK_TIMEOUT, SessionError, check_free_space, check_not_locked, digest, header_schema_version,
                    is_locked, locked_for_saving, save_error, settle_journal)
from .registry import Token, Written, recall, remember, sources
from .rows import ARRAYS, array_rows, diff_table, graph_payload_bound, insert_rows, old_schema_rows, session_rows

_MAX_PAGE_COUNT: int | None = None  # tests set this to make SQLite report a full disk mid-write
_PAGE_SIZE = 4096
_COPY_PAGES = 4096  # pages per step of a copy (16 MiB)
_COMPACT_FREE_BYTES = 64 << 20  # an in-place save rewrites a file whole when more than this and half of it is free


def save_session(session: Session, path: str | Path, *, backup: bool = False) -> None:
    """Save `session` to `path`; with `backup`, "<path>.bak" keeps the file as it was before this process
    first wrote to it (see the package docstring)."""
    _save(session, Path(path), backup=backup)


def save_session_as(session: Session, path: str | Path, *, backup: bool = False) -> None:
    """Write the whole file (Save As, or to compact it); `save_session` to `path` then continues in place."""
    _save(session, Path(path), backup=backup, whole=True)


def _save(session: Session, path: Path, *, backup: bool, whole: bool = False,
          schema_version: int = SCHEMA_VERSION) -> None:
    """The save path; `schema_version` < current writes an old format (only to make test fixtures)."""
    path = path.absolute()
    _check_target(path)
    remove_stale_temporaries(path)  # in-place saves create none, but a killed whole save may have left one
    settle_journal(path)
    if not whole and schema_version == SCHEMA_VERSION and _save_in_place(session, path, backup):
        return
    old = header_schema_version(path)
    migrating = old is not None and 0 < old < SCHEMA_VERSION  # older Circuit Studios can still open the .bak
    _save_whole(session, path, backup=backup or migrating, schema_version=schema_version)


def _check_target(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise SessionError(f"Cannot save {path}: the folder {folder} does not exist.", "Choose an existing folder.")
    if path.is_dir():
        raise SessionError(f"Cannot save to {path}: it is a folder.", "Choose a file name.")
    if path.exists() and not os.access(path, os.W_OK):
        raise SessionError(f"Cannot save {path}: the file is read-only.",
                           "Save under another name (Save session as…) or make the file writable.")
    if not os.access(folder, os.W_OK | os.X_OK):  # in place, SQLite needs it for its journal
        raise SessionError(f"Cannot save {path}: the folder {folder} is read-only or not yours.",
                           "Save the session in another folder (Save session as…); the previous file is unchanged.")


# ---------------------------------------------------------------------------------------------
# in place: one transaction of what changed
# ---------------------------------------------------------------------------------------------

def _save_in_place(session: Session, path: Path, backup: bool) -> bool:
    """Write the difference between the file and `session` in one transaction; False (nothing done) when
    the file is not as this process last saw it, or is mostly free space: it is then written whole."""
    known = recall(path)
    if known is None or not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path.as_uri() + "?mode=rw", uri=True, timeout=LOCK_TIMEOUT, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        # FULL: the journal is on disk before any page of the file changes, so a power cut rolls back too
        conn.execute("PRAGMA synchronous = FULL")
        _limit_pages(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if _token(conn) != known.token or _mostly_free(conn):
                return False
        except sqlite3.Error as e:
            if is_locked(e):
                raise locked_for_saving(path) from e
            return False  # not a session we can read any more: replace it
        if backup and not known.backed_up:
            _backup(path)
        token = known.token
        changed, unchanged = _write_rows(conn, session, path, SCHEMA_VERSION, known, new_file=False)
        if changed:
            token = _stamp(conn, session, SCHEMA_VERSION)
            conn.execute("COMMIT")
        remember(path, token, session, backed_up=known.backed_up or backup, unchanged=unchanged)
        return True
    except SessionError:
        raise
    except (sqlite3.Error, OSError) as e:
        raise save_error(e, path) from e
    finally:
        _rollback(conn)
        conn.close()


def _backup(path: Path) -> None:
    """Copy the file (as last committed: we hold its write lock) to "<path>.bak", atomically."""
    with replace_all_or_none([path.with_name(path.name + ".bak")], error=save_error) as (tmp,):
        shutil.copyfile(path, tmp)


def _mostly_free(conn: sqlite3.Connection) -> bool:
    (free,), (pages,), (page_size,) = (conn.execute(f"PRAGMA {p}").fetchone()
                                       for p in ("freelist_count", "page_count", "page_size"))
    return 2 * free > pages and free * page_size > _COMPACT_FREE_BYTES


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL); the journal undoes the rest


# ---------------------------------------------------------------------------------------------
# whole: a new file renamed onto the target
# ---------------------------------------------------------------------------------------------

def _save_whole(session: Session, path: Path, *, backup: bool, schema_version: int) -> None:
    check_not_locked(path)
    found = sources(session, path) if schema_version == SCHEMA_VERSION else []
    with replace_all_or_none([path], backup=backup, error=save_error) as (tmp,):
        known = _copy(found[0], tmp, path) if found else None
        token = _write_file(tmp, session, path, schema_version, known)
    if schema_version == SCHEMA_VERSION:
        remember(path, token, session, backed_up=backup)


def _copy(source: tuple[Path, Written], tmp: Path, target: Path) -> Written | None:
    """Copy a file holding some of the session's graphs into `tmp` if it is still as remembered, so that
    their arrays are not encoded again; None (`tmp` left empty) otherwise.

    SQLite's backup copies a committed state a few MB at a time: a save to the source in between waits for
    one step at most (rather than for the whole copy) and makes the copy start over."""
    src_path, known = source
    try:
        check_free_space(target, src_path.stat().st_size)
        src = sqlite3.connect(src_path.as_uri() + "?mode=ro", uri=True, timeout=LOCK_TIMEOUT)
        dst = sqlite3.connect(tmp)
        try:
            dst.execute("PRAGMA journal_mode = OFF")  # as the rest of the private file's writing
            src.backup(dst, pages=_COPY_PAGES)
            copied = _token(dst)
        finally:
            src.close()
            dst.close()
    except FileNotFoundError:  # deleted since
        copied = None
    except sqlite3.Error as e:
        if is_disk_full(e):
            raise
        copied = None
    if copied == known.token:
        return known
    tmp.write_bytes(b"")
    return None


def _write_file(tmp: Path, session: Session, target: Path, schema_version: int, known: Written | None) -> Token:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        # The file is private until renamed, so no journal and no syncs (it is fsynced once at the end).
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        if known is None:
            # Small pages: an in-place save writes (and journals) whole pages, and opening is no faster
            # with 64 KiB ones (measured on a 52 MiB graph: within the noise of 0.3 s).
            for pragma in (f"page_size = {_PAGE_SIZE}", f"application_id = {APPLICATION_ID}",
                           f"user_version = {schema_version}"):
                conn.execute(f"PRAGMA {pragma}")
        _limit_pages(conn)
        conn.execute("BEGIN")
        if known is None:
            for table in SCHEMAS[schema_version].sorted_tables:
                conn.execute(str(CreateTable(table).compile(dialect=sqlite_dialect.dialect())))
        _write_rows(conn, session, target, schema_version, known, new_file=known is None)
        token = _stamp(conn, session, schema_version)
        conn.execute("COMMIT")
        return token
    finally:
        _rollback(conn)
        conn.close()


# ---------------------------------------------------------------------------------------------
# both
# ---------------------------------------------------------------------------------------------

def _write_rows(conn: sqlite3.Connection, session: Session, target: Path, schema_version: int,
                known: Written | None, *, new_file: bool) -> tuple[bool, set[int]]:
    """Make the open database hold `session` (in the open transaction): every table synced row by row,
    the arrays of graphs the file does not hold yet written, those of graphs it no longer has deleted.
    Checks the free space first. Returns whether anything changed, and the graphs whose arrays did not."""
    md = SCHEMAS[schema_version]
    cur = conn.cursor()
    if schema_version == SCHEMA_VERSION:
        ids = {tuple(key): rid for rid, *key in cur.execute(
            "SELECT id, kind, path, content_hash, summary FROM resources")}
        tables = session_rows(session, ids)
    elif schema_version >= 3:  # v3 has the current tables (only the adjacency's encoding differs)
        tables = session_rows(session)
    else:
        tables = old_schema_rows(session_rows(session), session)
    stored = {gid for (gid,) in cur.execute("SELECT DISTINCT graph_id FROM graph_arrays")}
    kept = {r.id for r in session.graphs if r.id in stored and known is not None and known.holds(r.id, r.graph)}
    new = [r for r in session.graphs if r.id not in kept]
    changes = [diff_table(cur, md.tables[name], rows, schema_version=schema_version) for name, rows in tables.items()]

    values, n_rows = (sum(x) for x in zip(*(c.written for c in changes)))
    payload = sum(graph_payload_bound(r.graph, schema_version) for r in new)
    # Measured on sessions of 0.08-10 MB written whole: 6-28 % above the real size, never below. In place,
    # the rows changed may also go to the journal once.
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    fixed = (2 * len(md.tables) + 4) * page if new_file else 4 * page
    need = int(((1 if new_file else 2) * values + payload) * 1.05) + 48 * (n_rows + 2 * len(ARRAYS) * len(new)) + fixed
    check_free_space(target, need)

    for c in changes:
        c.apply(cur)
    for gid in sorted(stored - kept):
        cur.execute("DELETE FROM array_chunks WHERE graph_id = ?", (gid,))
        cur.execute("DELETE FROM graph_arrays WHERE graph_id = ?", (gid,))
    for rec in new:
        for info, chunks in array_rows(rec, schema_version):
            insert_rows(cur, md.tables["graph_arrays"], [info])
            for chunk in chunks:  # one at a time: a chunk is up to CHUNK_BYTES
                insert_rows(cur, md.tables["array_chunks"], [chunk])
    changed = any(changes) or bool(stored - kept) or bool(new)
    return changed, kept


def _stamp(conn: sqlite3.Connection, session: Session, schema_version: int) -> Token:
    """Write meta (this save's time, then the digest of every row) and return the file's new token."""
    saved = utc_now().isoformat()
    meta = {"format": FORMAT_NAME, "schema_version": str(schema_version), "app_version": APP_VERSION,
            "created": session.created.isoformat(), "saved": saved}
    upsert = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    conn.executemany(upsert, meta.items())
    d = digest(conn)
    conn.execute(upsert, ("digest", d))
    return saved, d


def _token(conn: sqlite3.Connection) -> Token:
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('saved', 'digest')").fetchall())
    return meta.get("saved", ""), meta.get("digest", "")


def _limit_pages(conn: sqlite3.Connection) -> None:
    if _MAX_PAGE_COUNT is not None:
        conn.execute(f"PRAGMA max_page_count = {_MAX_PAGE_COUNT}")
