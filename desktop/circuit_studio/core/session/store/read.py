"""Opening session files: checks, migration of older schemas (in memory), and rows back to a `Session`."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from .... import __version__ as APP_VERSION
from ..analysis import Supernode
from ...graph.adjacency import Adjacency
from ...graph.attribution_graph import AttributionGraph, AttributionParams
from ..records import CanvasView, GraphRecord, InterventionRecord, Session, TokenProb
from ..schema import FORMAT_NAME, SCHEMA, SCHEMA_VERSION, migrate
from .codec import decode_adjacency, decode_array
from .files import (LOCK_TIMEOUT, SQLITE_READONLY_ROLLBACK, SessionError, check_header, damaged, digest, is_locked,
                    locked, not_a_session, settle_journal, unfinished_save)
from .registry import remember
from .rows import ARRAYS, bound_refs, resource_refs


@dataclass(frozen=True)
class SessionInfo:
    schema_version: int
    app_version: str
    created: datetime
    saved: datetime


def load_session(path: str | Path) -> Session:
    """Open a session file (see the package docstring for the checks); raises SessionError."""
    path = Path(path)
    settle_journal(path)
    conn, version, meta = _open_checked(path)
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
            session = _read_session(c)
    except SessionError:
        raise
    except (sqlite3.Error, sa.exc.SQLAlchemyError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zlib.error, struct.error) as e:
        orig = getattr(e, "orig", None) or e
        if isinstance(orig, sqlite3.Error) and is_locked(orig):
            raise locked(path) from e
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {orig}"
        raise damaged(path, why) from e
    finally:
        if engine is not None:
            engine.dispose()
        conn.close()
    if version == SCHEMA_VERSION:  # the next save to this path writes only what changes from here
        remember(path, (meta["saved"], meta["digest"]), session)
    return session


def read_session_info(path: str | Path) -> SessionInfo:
    """Versions and times of a session file, without reading its graphs (checks as `load_session`,
    except for the quick_check and digest)."""
    settle_journal(Path(path))
    conn, version, meta = _open_checked(Path(path), verify=False)
    conn.close()
    try:
        return SessionInfo(version, meta.get("app_version", ""), datetime.fromisoformat(meta["created"]),
                           datetime.fromisoformat(meta["saved"]))
    except (KeyError, ValueError) as e:
        raise damaged(Path(path), f"meta: {e}") from e


def _open_checked(path: Path, verify: bool = True) -> tuple[sqlite3.Connection, int, dict[str, str]]:
    """A read-only connection to a checked session file, its schema version and its meta table. The
    connection is inside a read transaction, so everything read through it is one saved state."""
    check_header(path)
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=LOCK_TIMEOUT,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise SessionError(f"Cannot open {path}: {e}.", "Check that the file is readable.") from e
    try:
        conn.execute("BEGIN")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                raise not_a_session(path, "it has no meta table") from e
            raise
        if meta.get("format") != FORMAT_NAME:
            raise not_a_session(path, f"its format is {meta.get('format')!r}")
        try:
            version = int(meta["schema_version"])
        except (KeyError, ValueError) as e:
            raise damaged(path, "no valid schema version") from e
        if version > SCHEMA_VERSION:
            raise SessionError(
                f"{path} was written by a newer Circuit Studio ({meta.get('app_version', '?')}, session schema "
                f"{version}); this version ({APP_VERSION}) reads schema {SCHEMA_VERSION} and older.",
                "Update Circuit Studio to open it; the file was not changed.")
        if version < 1:
            raise damaged(path, f"schema version {version}")
        if verify:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise damaged(path, "; ".join(problems))
            if digest(conn) != meta.get("digest"):
                raise damaged(path, "its contents do not match their checksum")
        return conn, version, meta
    except SessionError:
        conn.close()
        raise
    except sqlite3.Error as e:
        conn.close()
        if getattr(e, "sqlite_errorcode", None) == SQLITE_READONLY_ROLLBACK:
            raise unfinished_save(path) from e
        raise (locked(path) if is_locked(e) else damaged(path, str(e))) from e


def _read_session(c: sa.Connection) -> Session:
    T = SCHEMA.tables

    def rows(name: str, *order: str) -> Iterator[Any]:
        table = T[name]
        return c.execute(sa.select(table).order_by(*(table.c[o] for o in order))).mappings()

    refs = resource_refs(rows("resources", "id"))
    (doc,) = list(rows("session", "id"))
    labels = {(r["transcoders"], r["layer"], r["feature"]): r["label"] for r in rows("labels", "transcoders", "seq")}

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
        arrays = {name: _read_array(c, gid, name) for name in ARRAYS if name != "adjacency_matrix"}
        arrays["adjacency"] = _read_array(c, gid, "adjacency_matrix")
        graph = AttributionGraph(
            prompt=r["prompt"], token_strings=tuple(r["token_strings"]), logit_tokens=tuple(r["logit_tokens"]),
            n_layers=r["n_layers"], vocab_size=r["vocab_size"], params=AttributionParams(**r["params"]),
            model_name=r["model_name"], transcoder_name=r["transcoder_name"], provenance=r["provenance"], **arrays)
        view = None if r["view_x0"] is None else CanvasView(r["view_x0"], r["view_x1"], r["view_y0"], r["view_y1"])
        graphs.append(GraphRecord(
            id=gid, graph=graph, created=datetime.fromisoformat(r["created"]), node_threshold=r["node_threshold"],
            edge_threshold=r["edge_threshold"], selected=r["selected"], pinned=tuple(pins.get(gid, ())),
            supernodes=tuple(supernodes.get(gid, ())), view=view, interventions=tuple(interventions.get(gid, ())),
            title=r["title"], notes=r["notes"], **bound_refs(refs, r)))

    meta = dict(c.execute(sa.select(T["meta"].c.key, T["meta"].c.value)).all())
    return Session(graphs=tuple(graphs), labels=labels, notes=doc["notes"], current_graph=doc["current_graph"],
                   window_state=doc["window_state"], settings=doc["settings"],
                   created=datetime.fromisoformat(meta["created"]), **bound_refs(refs, doc))


def _read_array(c: sa.Connection, graph_id: int, name: str) -> np.ndarray | Adjacency:
    """The stored array `name` of a graph (the adjacency as an `Adjacency`, dense or in blocks)."""
    A, C = SCHEMA.tables["graph_arrays"], SCHEMA.tables["array_chunks"]
    info = c.execute(sa.select(A).where(A.c.graph_id == graph_id, A.c.name == name)).mappings().one_or_none()
    if info is None:
        raise ValueError(f"graph {graph_id} has no {name}")
    # chunk by chunk into one buffer: never the chunks and their join at once (a graph's adjacency can be 2 GB)
    payload = np.empty(int(info["nbytes"]), dtype=np.uint8)
    at, seqs = 0, []
    for ch in c.execute(sa.select(C.c.seq, C.c.crc32, C.c.data).where(C.c.graph_id == graph_id, C.c.name == name)
                        .order_by(C.c.seq)):
        if zlib.crc32(ch.data) != ch.crc32:
            raise ValueError(f"graph {graph_id} {name}: chunk {ch.seq} fails its checksum")
        if at + len(ch.data) > payload.size:
            raise ValueError(f"graph {graph_id} {name}: more than the {payload.size} bytes expected")
        payload[at:at + len(ch.data)] = np.frombuffer(ch.data, np.uint8)
        at += len(ch.data)
        seqs.append(ch.seq)
    if seqs != list(range(info["n_chunks"])):
        raise ValueError(f"graph {graph_id} {name}: chunks missing")
    if at != payload.size:
        raise ValueError(f"graph {graph_id} {name}: {at} bytes, expected {payload.size}")
    decode = decode_adjacency if name == "adjacency_matrix" else decode_array
    return decode(payload, info["dtype"], tuple(info["shape"]), info["encoding"])


def _intervention_from_json(d: dict):
    from ...interventions.intervene import Intervention  # lazily: core.interventions imports torch

    p = d["position"]
    position = slice(p["start"], p["stop"], p["step"]) if isinstance(p, dict) else int(p)
    return Intervention(int(d["layer"]), position, int(d["feature"]), float(d["value"]))
