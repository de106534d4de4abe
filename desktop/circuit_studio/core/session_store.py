"""Saving and opening `.cs-session` files (SQLite through SQLAlchemy Core); the format is in `session_schema`.

    save_session(session, path, backup=False)   # atomic: the old file or the new one, never half of each
    load_session(path) -> Session               # never needs the model; old schemas are migrated in memory
    read_session_info(path) -> SessionInfo      # meta only (versions, times), e.g. for a recent-files list

Saving:
1. refuse a file another program is writing (`SessionLockedError`, after a short wait);
2. encode every graph's arrays (the adjacency matrix as a bit mask + its non-zero values, losslessly)
   and check that the folder has room for the file they make (estimated from the encoded rows);
3. write the whole database into a temporary file beside the target (SQLite journal off: the file
   means nothing until it is renamed), then a digest of every row;
4. fsync it, optionally keep the previous file as "<name>.bak", rename it onto the target and fsync
   the folder (`atomic_write.replace_all_or_none`). A crash at any point leaves the target as it was
   or fully new; temporary files of dead processes are removed by the next save to the same name.

Every failure raises `SessionError` saying what happened and what to do (read-only file or folder,
full disk, locked, ...); the previous file is untouched and no temporary file is left behind.

Opening checks, in order: the file is an SQLite database of ours (header and application id),
not truncated, has a `meta` table with our format name, a schema version this code can read
(a newer one -> "written by a newer Circuit Studio"), passes `PRAGMA quick_check`, and its rows
match the saved digest and chunk checksums. A file locked by a writer raises `SessionLockedError` (not "damaged").
The file is opened read-only; an older schema is
copied into memory and migrated there (`session_schema.MIGRATIONS`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from .. import __version__ as APP_VERSION
from .analysis import Supernode
from .atomic_write import is_disk_full, is_read_only, replace_all_or_none
from .errors import CircuitStudioError
from .graph import AttributionGraph, AttributionParams
from .session import (CanvasView, GraphRecord, InterventionRecord, ModelRef, Session, TokenProb, TranscoderRef,
                      utc_now)
from .session_schema import (ADJACENCY_ENCODING, APPLICATION_ID, CHUNK_BYTES, DIGEST_SKIP_COLUMNS, FORMAT_NAME,
                             SCHEMA, SCHEMA_VERSION, SCHEMAS, migrate)

__all__ = ["SessionError", "SessionLockedError", "SessionInfo", "save_session", "load_session",
           "read_session_info"]

_ARRAYS = ("input_tokens", "active_features", "activation_values", "selected_features",
           "logit_token_ids", "logit_probabilities", "adjacency_matrix")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
LOCK_TIMEOUT = 0.25  # seconds to wait for another program's lock before saying it holds one
_MAX_PAGE_COUNT: int | None = None  # tests set this to make SQLite report a full disk mid-write


class SessionError(CircuitStudioError):
    """A session file cannot be saved or opened; `str()` says why and what to do."""


class SessionLockedError(SessionError):
    """Another program (or window) holds a lock on the session file: retrying later may work."""


@dataclass(frozen=True)
class SessionInfo:
    schema_version: int
    app_version: str
    created: datetime
    saved: datetime


# =============================================================================================
# saving
# =============================================================================================

def save_session(session: Session, path: str | Path, *, backup: bool = False) -> None:
    """Write `session` to `path` atomically; with `backup`, the previous file is kept as `<path>.bak`."""
    _save(session, Path(path), backup=backup, schema_version=SCHEMA_VERSION)


def _save(session: Session, path: Path, *, backup: bool, schema_version: int) -> None:
    """The save path; `schema_version` < current writes an old format (only to make test fixtures)."""
    path = path.absolute()
    folder = path.parent
    if not folder.is_dir():
        raise SessionError(f"Cannot save {path}: the folder {folder} does not exist.",
                           "Choose an existing folder.")
    if path.is_dir():
        raise SessionError(f"Cannot save to {path}: it is a folder.", "Choose a file name.")
    if path.exists() and not os.access(path, os.W_OK):
        raise SessionError(f"Cannot save {path}: the file is read-only.",
                           "Save under another name (Save session as…) or make the file writable.")
    _check_not_locked(path)
    tables, payload_bytes = _session_rows(session)
    big = payload_bytes > (4 << 20)
    _check_free_space(path, _file_size_estimate(tables, big))
    with replace_all_or_none([path], backup=backup, error=_save_error) as (tmp,):
        _write_database(tmp, tables, schema_version, session, big=big)


def _check_not_locked(path: Path) -> None:
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
        if _is_locked(e):
            raise SessionLockedError(f"Cannot save {path}: another program (or another Circuit Studio window) "
                                     "has it open and is writing to it.",
                                     "Close it there or let it finish, then retry; the previous file is unchanged.") \
                from e
    finally:
        conn.close()


def _file_size_estimate(tables: dict[str, list[dict]], big: bool) -> int:
    """About the size of the database file: the encoded bytes of every value, plus SQLite's own per-row
    and per-page overhead. Measured on sessions of 0.08-10 MB: 6-28 % above the real size (the fixed
    pages weigh most in small files), never below."""
    page = 65536 if big else 4096
    n_rows = sum(len(rows) for rows in tables.values())
    values = sum(_value_bytes(v) for rows in tables.values() for row in rows for v in row.values())
    return int(values * 1.05) + 48 * n_rows + (2 * len(SCHEMA.tables) + 4) * page


def _value_bytes(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, (bytes, bytearray, memoryview)):
        return memoryview(v).nbytes
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, (int, float)):
        return 8
    return len(json.dumps(v))  # JSON columns are stored as their text


def _check_free_space(path: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return  # cannot tell: the write itself will report a full disk
    if free < need:
        raise SessionError(f"Not enough disk space to save {path}: it needs about {_mb(need)}, "
                           f"the disk has {_mb(free)} free.",
                           "Free some space or save to another disk; the previous file is unchanged.")


def _write_database(tmp: Path, tables: dict[str, list[dict]], schema_version: int, session: Session,
                    big: bool) -> None:
    md = SCHEMAS[schema_version]
    engine = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(tmp), poolclass=StaticPool)
    try:
        with engine.connect() as conn:
            # The file is private until renamed, so no journal and no syncs (we fsync once at the end).
            for pragma in (f"page_size = {65536 if big else 4096}", "journal_mode = OFF", "synchronous = OFF",
                           f"application_id = {APPLICATION_ID}", f"user_version = {schema_version}"):
                conn.exec_driver_sql(f"PRAGMA {pragma}")
            if _MAX_PAGE_COUNT is not None:
                conn.exec_driver_sql(f"PRAGMA max_page_count = {_MAX_PAGE_COUNT}")
            md.create_all(conn)
            for name, rows in tables.items():
                table = md.tables[name]
                for row in rows:
                    dropped = {k: v for k, v in row.items() if k not in table.c and v not in ("", None)}
                    if dropped:
                        raise ValueError(f"schema {schema_version} cannot store {name}.{sorted(dropped)}")
                if rows:
                    conn.execute(table.insert(), [{k: v for k, v in r.items() if k in table.c} for r in rows])
            meta = {"format": FORMAT_NAME, "schema_version": str(schema_version), "app_version": APP_VERSION,
                    "created": session.created.isoformat(), "saved": utc_now().isoformat()}
            conn.execute(md.tables["meta"].insert(), [{"key": k, "value": v} for k, v in meta.items()])
            digest = _digest(conn.connection.driver_connection)
            conn.execute(md.tables["meta"].insert(), [{"key": "digest", "value": digest}])
            conn.commit()
    finally:
        engine.dispose()


def _session_rows(session: Session) -> tuple[dict[str, list[dict]], int]:
    """Rows for every table of the current schema, and the total array payload size."""
    t: dict[str, list[dict]] = {name: [] for name in SCHEMA.tables if name != "meta"}
    for role, ref in (("model", session.model), ("transcoders", session.transcoders)):
        if ref is not None:
            t["sources"].append({"role": role, "path": ref.path, "content_hash": ref.content_hash,
                                 "summary": ref.summary})
    t["session"].append({"id": 1, "notes": session.notes, "current_graph": session.current_graph,
                         "settings": session.settings, "window_state": session.window_state})
    for (layer, feature), label in session.labels.items():
        t["labels"].append({"layer": layer, "feature": feature, "label": label})
    payload_bytes = 0
    for seq, rec in enumerate(session.graphs):
        g, v = rec.graph, rec.view
        t["graphs"].append({
            "id": rec.id, "seq": seq, "created": rec.created.isoformat(), "prompt": g.prompt,
            "model_name": g.model_name, "transcoder_name": g.transcoder_name, "n_layers": g.n_layers,
            "vocab_size": g.vocab_size, "token_strings": list(g.token_strings), "logit_tokens": list(g.logit_tokens),
            "params": asdict(g.params), "provenance": g.provenance,
            "node_threshold": rec.node_threshold, "edge_threshold": rec.edge_threshold, "selected": rec.selected,
            "view_x0": v and v.x0, "view_x1": v and v.x1, "view_y0": v and v.y0, "view_y1": v and v.y1,
            "title": rec.title, "notes": rec.notes})
        for name in _ARRAYS:
            arr = getattr(g, name)
            encoding = ADJACENCY_ENCODING if name == "adjacency_matrix" else "raw"
            payload = encode_array(arr, encoding)
            chunks = [payload[i:i + CHUNK_BYTES] for i in range(0, max(len(payload), 1), CHUNK_BYTES)]
            payload_bytes += len(payload)
            t["graph_arrays"].append({"graph_id": rec.id, "name": name, "dtype": arr.dtype.str,
                                      "shape": list(arr.shape), "encoding": encoding, "nbytes": len(payload),
                                      "n_chunks": len(chunks)})
            t["array_chunks"] += [{"graph_id": rec.id, "name": name, "seq": i, "crc32": zlib.crc32(c), "data": c}
                                  for i, c in enumerate(chunks)]
        t["pins"] += [{"graph_id": rec.id, "seq": i, "node": n} for i, n in enumerate(rec.pinned)]
        t["supernodes"] += [{"graph_id": rec.id, "id": s.id, "seq": i, "name": s.name, "members": list(s.members)}
                            for i, s in enumerate(rec.supernodes)]
        t["interventions"] += [{
            "graph_id": rec.id, "id": r.id, "seq": i, "created": r.created.isoformat(),
            "specs": [_intervention_to_json(iv) for iv in r.interventions], "options": r.options,
            "top_before": [tp.to_dict() for tp in r.top_before], "top_after": [tp.to_dict() for tp in r.top_after],
            "extra": r.extra} for i, r in enumerate(rec.interventions)]
    return t, payload_bytes


def _intervention_to_json(iv) -> dict:
    p = iv.position
    position = ({"start": p.start, "stop": p.stop, "step": p.step} if isinstance(p, slice) else int(p))
    return {"layer": int(iv.layer), "position": position, "feature": int(iv.feature), "value": float(iv.value)}


def _save_error(e: BaseException, path: Path | str) -> SessionError:
    if is_disk_full(e):
        return SessionError(f"Not enough disk space to save {path}.",
                            "Free some space or save to another disk; the previous file is unchanged.")
    if is_read_only(e):
        return SessionError(f"Cannot save {path}: the folder {Path(path).parent} is read-only or not yours.",
                            "Save the session in another folder (Save session as…); the previous file is unchanged.")
    orig = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's exception
    detail = getattr(orig, "strerror", None) or str(orig)
    return SessionError(f"Could not save {path}: {detail}.", "The previous file is unchanged.")


def _is_locked(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return (code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)) if code is not None else "locked" in str(e)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# =============================================================================================
# array payloads
# =============================================================================================

_ALLOWED_KINDS = "biuf"  # bool, ints, floats: never objects
_BLOCK_BYTES = 4 << 20  # the non-zero codec works on row blocks of about this size (cache-friendly)


def encode_array(arr: np.ndarray, encoding: str) -> memoryview:
    """The stored bytes of `arr` ("raw" or "nonzero", see `session_schema`)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise ValueError(f"cannot store arrays of dtype {arr.dtype}")
    if encoding == "raw":
        return memoryview(arr.tobytes())
    if encoding != "nonzero":
        raise ValueError(f"unknown array encoding {encoding!r}")
    rows = _as_rows(arr)
    bits_of = rows.view(f"u{arr.dtype.itemsize}")  # bit patterns, so -0.0 and NaNs are kept
    packs, values = [], []
    for r in range(0, rows.shape[0], _block_rows(rows)):  # blocks of 8k rows: their bits concatenate
        block = slice(r, r + _block_rows(rows))
        bits = bits_of[block] != 0
        packs.append(np.packbits(bits))
        values.append(rows[block][bits].view(np.uint8))
    mask = zlib.compress(np.concatenate(packs) if packs else b"", 1)
    start = 16 + len(mask) + (-(16 + len(mask)) % 8)
    nnz = sum(v.size for v in values) // arr.dtype.itemsize
    out = np.empty(start + nnz * arr.dtype.itemsize, dtype=np.uint8)  # one buffer for the whole payload
    out[:16] = np.frombuffer(struct.pack("<QQ", len(mask), nnz), np.uint8)
    out[16:16 + len(mask)] = np.frombuffer(mask, np.uint8)
    out[16 + len(mask):start] = 0
    if values:
        np.concatenate(values, out=out[start:])
    return memoryview(out)


def decode_array(payload: bytes, dtype: str, shape: tuple[int, ...], encoding: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind not in _ALLOWED_KINDS:
        raise ValueError(f"unexpected dtype {dtype}")
    size = int(np.prod(shape, dtype=np.int64))
    if encoding == "raw":
        if len(payload) != size * dt.itemsize:
            raise ValueError(f"{len(payload)} bytes for an array of {size} {dt}")
        return np.frombuffer(payload, dtype=dt).reshape(shape).copy()
    if encoding != "nonzero":
        raise ValueError(f"unknown array encoding {encoding!r}")
    mask_len, nnz = struct.unpack_from("<QQ", payload)
    start = 16 + mask_len + (-(16 + mask_len) % 8)
    if start + nnz * dt.itemsize != len(payload):
        raise ValueError("non-zero payload has the wrong length")
    packed = np.frombuffer(zlib.decompress(payload[16:16 + mask_len]), np.uint8)
    if packed.size != (size + 7) // 8:
        raise ValueError("non-zero mask has the wrong length")
    values = np.frombuffer(payload, dtype=dt, count=nnz, offset=start)
    out = np.zeros(shape, dtype=dt)
    rows = _as_rows(out)
    step, width, done = _block_rows(rows), rows.shape[1], 0
    for r in range(0, rows.shape[0], step):
        k = min(step, rows.shape[0] - r)
        bits = np.unpackbits(packed[r * width // 8:], count=k * width).view(bool).reshape(k, width)
        n = int(np.count_nonzero(bits))
        rows[r:r + k][bits] = values[done:done + n]  # raises if the mask and the values disagree
        done += n
    if done != nnz:
        raise ValueError("non-zero mask and values disagree")
    return out


def _as_rows(arr: np.ndarray) -> np.ndarray:
    """A 2-D C-order view: the last axis as columns (a 1-D array is one row)."""
    return arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 and arr.shape[-1] > 0 else arr.reshape(1, -1)


def _block_rows(rows: np.ndarray) -> int:
    """Rows per block: a multiple of 8, so that every block's bits start on a byte."""
    per_row = max(rows.shape[1] * rows.itemsize, 1)
    return max(8, _BLOCK_BYTES // per_row // 8 * 8)


# =============================================================================================
# opening
# =============================================================================================

def load_session(path: str | Path) -> Session:
    """Open a session file (see the module docstring for the checks); raises SessionError."""
    path = Path(path)
    conn, version, _ = _open_checked(path)
    engine = None
    try:
        if version < SCHEMA_VERSION:  # migrate a copy in memory: the user's file is never written
            mem = sqlite3.connect(":memory:")
            conn.backup(mem)
            conn.close()
            conn = mem
        engine = sa.create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)
        with engine.connect() as c:
            if version < SCHEMA_VERSION:
                migrate(c, version)
                c.commit()
            return _read_session(c)
    except SessionError:
        raise
    except (sqlite3.Error, sa.exc.SQLAlchemyError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zlib.error, struct.error) as e:
        orig = getattr(e, "orig", None) or e
        if isinstance(orig, sqlite3.Error) and _is_locked(orig):
            raise _locked(path) from e
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {orig}"
        raise _damaged(path, why) from e
    finally:
        if engine is not None:
            engine.dispose()
        conn.close()


def read_session_info(path: str | Path) -> SessionInfo:
    """Versions and times of a session file, without reading its graphs (checks as `load_session`,
    except for the quick_check and digest)."""
    conn, version, meta = _open_checked(Path(path), verify=False)
    conn.close()
    try:
        return SessionInfo(version, meta.get("app_version", ""), datetime.fromisoformat(meta["created"]),
                           datetime.fromisoformat(meta["saved"]))
    except (KeyError, ValueError) as e:
        raise _damaged(Path(path), f"meta: {e}") from e


def _open_checked(path: Path, verify: bool = True) -> tuple[sqlite3.Connection, int, dict[str, str]]:
    """A read-only connection to a checked session file, its schema version and its meta table."""
    _check_header(path)
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=LOCK_TIMEOUT)
    except sqlite3.Error as e:
        raise SessionError(f"Cannot open {path}: {e}.", "Check that the file is readable.") from e
    try:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                raise _not_a_session(path, "it has no meta table") from e
            raise
        if meta.get("format") != FORMAT_NAME:
            raise _not_a_session(path, f"its format is {meta.get('format')!r}")
        try:
            version = int(meta["schema_version"])
        except (KeyError, ValueError) as e:
            raise _damaged(path, "no valid schema version") from e
        if version > SCHEMA_VERSION:
            raise SessionError(
                f"{path} was written by a newer Circuit Studio ({meta.get('app_version', '?')}, session schema "
                f"{version}); this version ({APP_VERSION}) reads schema {SCHEMA_VERSION} and older.",
                "Update Circuit Studio to open it; the file was not changed.")
        if version < 1:
            raise _damaged(path, f"schema version {version}")
        if verify:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise _damaged(path, "; ".join(problems))
            if _digest(conn) != meta.get("digest"):
                raise _damaged(path, "its contents do not match their checksum")
        return conn, version, meta
    except SessionError:
        conn.close()
        raise
    except sqlite3.Error as e:
        conn.close()
        raise (_locked(path) if _is_locked(e) else _damaged(path, str(e))) from e


def _check_header(path: Path) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError as e:
        raise SessionError(f"Session file {path} does not exist.") from e
    except IsADirectoryError as e:
        raise _not_a_session(path, "it is a folder") from e
    except OSError as e:
        raise SessionError(f"Cannot read {path}: {e.strerror or e}.", "Check that the file is readable.") from e
    if size == 0:
        raise _not_a_session(path, "it is empty")
    if not head.startswith(_SQLITE_MAGIC):
        raise _not_a_session(path, "it is not an SQLite database")
    if len(head) < 100:
        raise _damaged(path, f"it is truncated, {size} bytes")
    if int.from_bytes(head[68:72], "big") != APPLICATION_ID:
        raise _not_a_session(path, "it is an SQLite database of another program")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    n_pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and n_pages and size < page_size * n_pages:
        raise _damaged(path, f"it is truncated, {size:,} of {page_size * n_pages:,} bytes")


def _not_a_session(path: Path, why: str) -> SessionError:
    return SessionError(f"{path} is not a Circuit Studio session: {why}.",
                        "Open a .cs-session file saved by Circuit Studio.")


def _locked(path: Path) -> SessionLockedError:
    return SessionLockedError(f"{path} is open in another program (or another Circuit Studio window) that is "
                              "writing to it.",
                              "Close it there or let it finish, then retry; the file was not changed.")


def _damaged(path: Path, why: str) -> SessionError:
    return SessionError(f"{path} is damaged and cannot be opened: {why}.",
                        "Open its .bak copy or an earlier copy if you have one; the file was not changed.")


def _digest(dbapi_conn: sqlite3.Connection) -> str:
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
        for row in cur.execute(sql):
            h.update(repr(row).encode())
    return h.hexdigest()


def _read_session(c: sa.Connection) -> Session:
    T = SCHEMA.tables

    def rows(name: str, *order: str) -> Iterator[Any]:
        table = T[name]
        return c.execute(sa.select(table).order_by(*(table.c[o] for o in order))).mappings()

    refs = {r["role"]: r for r in rows("sources", "role")}
    model = transcoders = None
    if "model" in refs:
        r = refs["model"]
        model = ModelRef(r["path"], r["content_hash"], r["summary"])
    if "transcoders" in refs:
        r = refs["transcoders"]
        transcoders = TranscoderRef(r["path"], r["content_hash"], r["summary"])
    (doc,) = list(rows("session", "id"))
    labels = {(r["layer"], r["feature"]): r["label"]
              for r in c.execute(sa.select(T["labels"]).order_by(sa.text("rowid"))).mappings()}

    pins: dict[int, list[int]] = {}
    for r in rows("pins", "graph_id", "seq"):
        pins.setdefault(r["graph_id"], []).append(r["node"])
    supernodes: dict[int, list[Supernode]] = {}
    for r in rows("supernodes", "graph_id", "seq"):
        supernodes.setdefault(r["graph_id"], []).append(Supernode(r["id"], r["name"], tuple(r["members"])))
    interventions: dict[int, list[InterventionRecord]] = {}
    for r in rows("interventions", "graph_id", "seq"):
        interventions.setdefault(r["graph_id"], []).append(InterventionRecord(
            id=r["id"], interventions=tuple(_intervention_from_json(s) for s in r["specs"]), options=r["options"],
            top_before=tuple(TokenProb.from_dict(d) for d in r["top_before"]),
            top_after=tuple(TokenProb.from_dict(d) for d in r["top_after"]), extra=r["extra"],
            created=datetime.fromisoformat(r["created"])))

    graphs = []
    for r in rows("graphs", "seq"):
        gid = r["id"]
        arrays = {name: _read_array(c, gid, name) for name in _ARRAYS}
        graph = AttributionGraph(
            prompt=r["prompt"], token_strings=tuple(r["token_strings"]), logit_tokens=tuple(r["logit_tokens"]),
            n_layers=r["n_layers"], vocab_size=r["vocab_size"], params=AttributionParams(**r["params"]),
            model_name=r["model_name"], transcoder_name=r["transcoder_name"], provenance=r["provenance"], **arrays)
        view = None if r["view_x0"] is None else CanvasView(r["view_x0"], r["view_x1"], r["view_y0"], r["view_y1"])
        graphs.append(GraphRecord(
            id=gid, graph=graph, created=datetime.fromisoformat(r["created"]), node_threshold=r["node_threshold"],
            edge_threshold=r["edge_threshold"], selected=r["selected"], pinned=tuple(pins.get(gid, ())),
            supernodes=tuple(supernodes.get(gid, ())), view=view, interventions=tuple(interventions.get(gid, ())),
            title=r["title"], notes=r["notes"]))

    meta = dict(c.execute(sa.select(T["meta"].c.key, T["meta"].c.value)).all())
    return Session(model=model, transcoders=transcoders, graphs=tuple(graphs), labels=labels, notes=doc["notes"],
                   current_graph=doc["current_graph"], window_state=doc["window_state"], settings=doc["settings"],
                   created=datetime.fromisoformat(meta["created"]))


def _read_array(c: sa.Connection, graph_id: int, name: str) -> np.ndarray:
    A, C = SCHEMA.tables["graph_arrays"], SCHEMA.tables["array_chunks"]
    info = c.execute(sa.select(A).where(A.c.graph_id == graph_id, A.c.name == name)).mappings().one_or_none()
    if info is None:
        raise ValueError(f"graph {graph_id} has no {name}")
    chunks = c.execute(sa.select(C.c.seq, C.c.crc32, C.c.data).where(C.c.graph_id == graph_id, C.c.name == name)
                       .order_by(C.c.seq)).all()
    if [ch.seq for ch in chunks] != list(range(info["n_chunks"])):
        raise ValueError(f"graph {graph_id} {name}: chunks missing")
    for ch in chunks:
        if zlib.crc32(ch.data) != ch.crc32:
            raise ValueError(f"graph {graph_id} {name}: chunk {ch.seq} fails its checksum")
    payload = chunks[0].data if len(chunks) == 1 else b"".join(ch.data for ch in chunks)
    if len(payload) != info["nbytes"]:
        raise ValueError(f"graph {graph_id} {name}: {len(payload)} bytes, expected {info['nbytes']}")
    return decode_array(payload, info["dtype"], tuple(info["shape"]), info["encoding"])


def _intervention_from_json(d: dict):
    from .interventions import Intervention  # lazily: core.interventions imports torch

    p = d["position"]
    position = slice(p["start"], p["stop"], p["step"]) if isinstance(p, dict) else int(p)
    return Intervention(int(d["layer"]), position, int(d["feature"]), float(d["value"]))
