"""A `Session` as table rows and back, and how rows are written: `diff_table` finds what makes a table
hold exactly the given rows, touching only those that differ (for a new file: inserting them all)."""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa

from ...graph.attribution_graph import AttributionGraph
from ..records import (FeatureIndexRef, FolderRef, GraphRecord, ModelRef, Session, TranscoderRef,
                       transcoder_identity)
from ..schema import BINDING_COLUMNS, BLOCKS_SINCE, CHUNK_BYTES, RESOURCE_KINDS, SCHEMA_VERSION
from .codec import adjacency_payload_bound, encode_adjacency, encode_array, payload_bound

ARRAYS = ("input_tokens", "active_features", "activation_values", "selected_features",
          "logit_token_ids", "logit_probabilities", "adjacency_matrix")
REF_CLASSES: dict[str, type[FolderRef]] = dict(zip(RESOURCE_KINDS, (ModelRef, TranscoderRef, FeatureIndexRef)))
_BINDINGS = tuple(zip(("model", "transcoders", "feature_index"), RESOURCE_KINDS, BINDING_COLUMNS))
ResourceKey = tuple[str, str, str, str]  # a resources row without its id: kind, path, content_hash, summary JSON

Row = dict[str, Any]  # column -> Python value (JSON columns as Python objects)


# ---------------------------------------------------------------------------------------------
# Session -> rows
# ---------------------------------------------------------------------------------------------

def session_rows(session: Session, resource_ids: Mapping[ResourceKey, int] | None = None) -> dict[str, list[Row]]:
    """Rows of every table of the current schema except meta and the array tables.

    Resources keep the ids of `resource_ids` (those already in the file, so that unchanged graph rows
    stay unchanged); new ones get the next free ids. Each distinct ref is one row, however many use it."""
    ids = dict(resource_ids or {})
    used: dict[int, Row] = {}

    def resource_id(kind: str, ref: FolderRef | None) -> int | None:
        if ref is None:
            return None
        key = (kind, ref.path, ref.content_hash, json.dumps(ref.summary))
        if key not in ids:
            ids[key] = max(ids.values(), default=0) + 1
        rid = ids[key]
        used[rid] = {"id": rid, "kind": kind, "path": ref.path, "content_hash": ref.content_hash,
                     "summary": ref.summary}
        return rid

    def bindings(obj: Session | GraphRecord) -> Row:
        return {column: resource_id(kind, getattr(obj, field)) for field, kind, column in _BINDINGS}

    t: dict[str, list[Row]] = {name: [] for name in
                               ("resources", "session", "graphs", "pins", "supernodes", "labels", "interventions")}
    t["session"].append({"id": 1, "notes": session.notes, "current_graph": session.current_graph,
                         "settings": session.settings, "window_state": session.window_state, **bindings(session)})
    seqs: dict[str, int] = {}
    for (scope, layer, feature), label in session.labels.items():
        seqs[scope] = seqs.get(scope, -1) + 1
        t["labels"].append({"transcoders": scope, "layer": layer, "feature": feature, "seq": seqs[scope],
                            "label": label})
    for seq, rec in enumerate(session.graphs):
        g, v = rec.graph, rec.view
        t["graphs"].append({
            "id": rec.id, "seq": seq, "created": rec.created.isoformat(), "prompt": g.prompt,
            "model_name": g.model_name, "transcoder_name": g.transcoder_name, "n_layers": g.n_layers,
            "vocab_size": g.vocab_size, "token_strings": list(g.token_strings), "logit_tokens": list(g.logit_tokens),
            "params": asdict(g.params), "provenance": g.provenance,
            "node_threshold": rec.node_threshold, "edge_threshold": rec.edge_threshold, "selected": rec.selected,
            "view_x0": v and v.x0, "view_x1": v and v.x1, "view_y0": v and v.y0, "view_y1": v and v.y1,
            "title": rec.title, "notes": rec.notes, **bindings(rec)})
        t["pins"] += [{"graph_id": rec.id, "seq": i, "node": n} for i, n in enumerate(rec.pinned)]
        t["supernodes"] += [{"graph_id": rec.id, "id": s.id, "seq": i, "name": s.name, "members": list(s.members)}
                            for i, s in enumerate(rec.supernodes)]
        t["interventions"] += [{
            "graph_id": rec.id, "id": r.id, "seq": i, "created": r.created.isoformat(),
            "specs": [_intervention_to_json(iv) for iv in r.interventions], "options": r.options,
            "top_before": [tp.to_dict() for tp in r.top_before], "top_after": [tp.to_dict() for tp in r.top_after],
            "extra": r.extra} for i, r in enumerate(rec.interventions)]
    t["resources"] = [used[rid] for rid in sorted(used)]
    return t


def old_schema_rows(t: dict[str, list[Row]], session: Session) -> dict[str, list[Row]]:
    """The same rows as schemas 1 and 2 store them (only to write test fixtures of those versions).

    Those versions hold the session's model and transcoders in `sources`, bind every graph to them
    implicitly and keep only that transcoder set's labels, in rowid order: exactly what `migrate_2_to_3`
    undoes. Anything else is left in its row, for the writer to refuse."""
    out = {name: rows for name, rows in t.items() if name not in ("resources", "session", "graphs", "labels")}
    out["sources"] = [{"role": role, "path": ref.path, "content_hash": ref.content_hash, "summary": ref.summary}
                      for role, ref in (("model", session.model), ("transcoders", session.transcoders)) if ref]
    own = {"model_id": t["session"][0]["model_id"], "transcoders_id": t["session"][0]["transcoders_id"]}
    implicit = {k: None for k in own}
    out["session"] = [{**r, **implicit} for r in t["session"]]
    out["graphs"] = [{**r, **(implicit if all(r[k] == v for k, v in own.items()) else {})} for r in t["graphs"]]
    scope = transcoder_identity(session.transcoders)
    out["labels"] = [{**r, "seq": None, "transcoders": None if r["transcoders"] == scope else r["transcoders"]}
                     for r in t["labels"]]
    return out


def array_rows(rec: GraphRecord, schema_version: int = SCHEMA_VERSION) -> Iterator[tuple[Row, Iterator[Row]]]:
    """Each array of the record's graph: its graph_arrays row and its array_chunks rows, made one chunk
    at a time as they are consumed (so that a save holds at most one chunk's copy of an array). The
    adjacency is stored as the graph holds it: its blocks ("blocks", from schema 4) or its non-zeros."""
    g = rec.graph
    for name in ARRAYS:
        if name == "adjacency_matrix":
            encoding, parts = encode_adjacency(g.adjacency, allow_blocks=schema_version >= BLOCKS_SINCE)
            dtype, shape = "<f4", [g.n_nodes, g.n_nodes]
        else:
            arr = getattr(g, name)
            encoding, parts, dtype, shape = "raw", [encode_array(arr, "raw")], arr.dtype.str, list(arr.shape)
        nbytes = sum(part.nbytes for part in parts)
        n_chunks = max(1, -(-nbytes // CHUNK_BYTES))
        chunks = ({"graph_id": rec.id, "name": name, "seq": i, "crc32": zlib.crc32(c), "data": c}
                  for i, c in enumerate(_chunked(parts, CHUNK_BYTES)))
        yield ({"graph_id": rec.id, "name": name, "dtype": dtype, "shape": shape, "encoding": encoding,
                "nbytes": nbytes, "n_chunks": n_chunks}, chunks)


def _chunked(parts: list[memoryview], size: int) -> Iterator[bytes | memoryview]:
    """The concatenation of `parts` cut into pieces of `size` bytes (the last may be shorter; one empty
    piece for an empty payload). A piece inside one part is a view of it, others are joined."""
    piece: list[memoryview] = []
    filled = 0
    for part in parts:
        at = 0
        while at < part.nbytes:
            take = min(size - filled, part.nbytes - at)
            piece.append(part[at:at + take])
            filled += take
            at += take
            if filled == size:
                yield piece[0] if len(piece) == 1 else b"".join(piece)
                piece, filled = [], 0
    if piece or not any(part.nbytes for part in parts):
        yield piece[0] if len(piece) == 1 else b"".join(piece)


def graph_payload_bound(graph: AttributionGraph, schema_version: int = SCHEMA_VERSION) -> int:
    """An upper bound on the bytes `array_rows` stores for `graph` (the adjacency is never densified for it)."""
    return (adjacency_payload_bound(graph.adjacency, allow_blocks=schema_version >= BLOCKS_SINCE)
            + sum(payload_bound(getattr(graph, name), "raw") for name in ARRAYS if name != "adjacency_matrix"))


def _value_bytes(v: Any) -> int:
    """Bytes of one DB value as stored (JSON columns are already their text)."""
    if v is None:
        return 0
    if isinstance(v, (bytes, bytearray, memoryview)):
        return memoryview(v).nbytes
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))
    return 8


def _intervention_to_json(iv) -> dict:
    p = iv.position
    position = ({"start": p.start, "stop": p.stop, "step": p.step} if isinstance(p, slice) else int(p))
    return {"layer": int(iv.layer), "position": position, "feature": int(iv.feature), "value": float(iv.value)}


# ---------------------------------------------------------------------------------------------
# writing rows
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableChanges:
    """What makes a table hold exactly the wanted rows (DB values in column order), by primary key."""

    table: sa.Table
    gone: list[tuple]  # primary keys of rows to delete
    edited: list[tuple]  # rows to update
    new: list[tuple]  # rows to insert

    def __bool__(self) -> bool:
        return bool(self.gone or self.edited or self.new)

    @property
    def written(self) -> tuple[int, int]:
        """(bytes of the values to write, number of rows), for the free-space estimate."""
        rows = self.edited + self.new
        return sum(_value_bytes(v) for row in rows for v in row), len(rows) + len(self.gone)

    def apply(self, cur: sqlite3.Cursor) -> None:
        columns = list(self.table.columns)
        quoted = [f'"{c.name}"' for c in columns]
        pk = [i for i, c in enumerate(columns) if c.primary_key]
        rest = [i for i in range(len(columns)) if i not in pk]
        name, where = self.table.name, " AND ".join(f"{quoted[i]} = ?" for i in pk)
        if self.gone:
            cur.executemany(f'DELETE FROM "{name}" WHERE {where}', self.gone)
        if self.edited and rest:
            sets = ", ".join(f"{quoted[i]} = ?" for i in rest)
            cur.executemany(f'UPDATE "{name}" SET {sets} WHERE {where}',
                            [tuple(v[i] for i in rest) + tuple(v[i] for i in pk) for v in self.edited])
        if self.new:
            cur.executemany(f'INSERT INTO "{name}" ({", ".join(quoted)}) VALUES ({", ".join("?" * len(quoted))})',
                            self.new)


def diff_table(cur: sqlite3.Cursor, table: sa.Table, rows: list[Row], *, schema_version: int) -> TableChanges:
    """Compare `rows` with what `table` holds: only the rows that differ are to be written. Raises
    ValueError for a value the table has no column for (an older schema's writer must not drop data)."""
    columns = list(table.columns)
    names = [c.name for c in columns]
    extra = {k for row in rows[:1] for k in row} - set(names)  # a table's rows all have the same keys
    dropped = sorted(k for k in extra if any(row[k] not in ("", None) for row in rows))
    if dropped:
        raise ValueError(f"schema {schema_version} cannot store {table.name}.{dropped}")
    json_at = [i for i, c in enumerate(columns) if isinstance(c.type, sa.JSON)]
    pk = [i for i, c in enumerate(columns) if c.primary_key]
    key = itemgetter(*pk) if len(pk) > 1 else lambda values: (values[pk[0]],)
    want = {}
    for row in rows:
        values = [row[n] for n in names]
        for i in json_at:
            values[i] = json.dumps(values[i])
        values = tuple(values)
        want[key(values)] = values
    have = {key(r): r for r in cur.execute(f'SELECT {", ".join(chr(34) + n + chr(34) for n in names)} '
                                           f'FROM "{table.name}"')}
    return TableChanges(table, gone=[k for k in have if k not in want],
                        edited=[v for k, v in want.items() if k in have and not _same_row(have[k], v)],
                        new=[v for k, v in want.items() if k not in have])


def insert_rows(cur: sqlite3.Cursor, table: sa.Table, rows: list[Row]) -> None:
    """Append rows (array rows: their tables are written per graph, never compared)."""
    names = [c.name for c in table.columns]
    cur.executemany(f'INSERT INTO "{table.name}" ({", ".join(names)}) VALUES ({", ".join("?" * len(names))})',
                    [tuple(json.dumps(r[c.name]) if isinstance(c.type, sa.JSON) else r[c.name]
                           for c in table.columns) for r in rows])


def _same_row(a: tuple, b: tuple) -> bool:
    """Equal and of the same types (1 and 1.0 differ: the file must read back what was saved)."""
    return a == b and list(map(type, a)) == list(map(type, b))


# ---------------------------------------------------------------------------------------------
# rows -> parts of a Session
# ---------------------------------------------------------------------------------------------

def resource_refs(rows: Iterable[Mapping[str, Any]]) -> dict[int, FolderRef]:
    """resources rows (decoded) as refs by id."""
    return {r["id"]: REF_CLASSES[r["kind"]](r["path"], r["content_hash"], r["summary"]) for r in rows}


def bound_refs(refs: Mapping[int, FolderRef], row: Mapping[str, Any]) -> dict[str, FolderRef | None]:
    """The model / transcoders / feature_index fields of a session or graphs row; ValueError if an id
    names no resource or one of the wrong kind."""
    out = {}
    for field, kind, column in _BINDINGS:
        rid = row[column]
        if rid is not None and (rid not in refs or not isinstance(refs[rid], REF_CLASSES[kind])):
            raise ValueError(f"{column} {rid} is not a {kind} resource")
        out[field] = None if rid is None else refs[rid]
    return out
