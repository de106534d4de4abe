"""The `.cs-session` file format: SQLite tables (SQLAlchemy Core), their versions and migrations.

A session file is one SQLite database (`PRAGMA application_id` = 0x43537353, "CSsS";
`PRAGMA user_version` = the schema version) in rollback-journal mode: `session_store` writes it in
place, one transaction per save, so a kill or power cut leaves the last saved state or the new one
(a `<name>-journal` file left beside it is SQLite's undo log, applied by the next open). The `meta`
table is a key/value table whose shape never changes, so any version of the app can read it before
anything else:

    meta(key TEXT PRIMARY KEY, value TEXT)
        format          "circuit-studio-session"
        schema_version  "4" (this module's SCHEMA_VERSION)
        app_version     circuit_studio.__version__ of the writer
        created, saved  ISO 8601 times (the session's creation; the last save that changed something)
        digest          sha256 over every other row of every table (see `session_store`), so a
                        damaged cell is reported instead of loaded

Schema version 4 (current; its tables are version 3's):

    resources(id PK, kind: "model" | "transcoders" | "feature_index", path, content_hash,
           summary JSON)                                  <- new in v3 (replaces v2's `sources`)
    session(id PK = 1, notes, current_graph NULL, settings JSON, window_state BLOB NULL,
           model_id, transcoders_id, feature_index_id)    <- the *_id: new in v3, resources.id or NULL
    graphs(id PK, seq, created, prompt, model_name, transcoder_name, n_layers, vocab_size,
           token_strings JSON, logit_tokens JSON, params JSON, provenance JSON,
           node_threshold, edge_threshold, selected NULL, view_x0/x1/y0/y1 NULL,
           title, notes,                                  <- new in v2
           model_id, transcoders_id, feature_index_id)    <- new in v3: what the graph was traced with
    graph_arrays(graph_id, name) PK: dtype (numpy dtype.str, e.g. "<f4"), shape JSON,
           encoding ("raw" | "nonzero" | "blocks"), nbytes (payload bytes), n_chunks
    array_chunks(graph_id, name, seq) PK: crc32, data BLOB    (payload split in <= 512 MiB chunks)
    pins(graph_id, seq) PK: node                              (pinning order = seq)
    supernodes(graph_id, id) PK: seq, name, members JSON      (node indices, in order)
    labels(transcoders, layer, feature) PK: seq, label        <- new in v3: keyed by transcoder set
    interventions(graph_id, id) PK: seq, created, specs JSON, options JSON, top_before JSON,
           top_after JSON, extra JSON

A resource row is stored once however many graphs use it (ten graphs of one transcoder set share one
row). `labels.transcoders` is the set's identity (`session.transcoder_identity`: its content hash,
"" for graphs of an unknown set), so a label names one feature of one transcoder set and is never
shown on a graph traced with another; `seq` is the order within a set.

Array payloads: "raw" is the C-order bytes. "nonzero" (the adjacency matrix of a graph held dense) is
lossless and compact: a 16-byte header (two little-endian uint64: length of the compressed mask,
number of stored values), the zlib-compressed bit mask (`np.packbits`, C order) of the entries whose
*bits* are not all zero (so -0.0 and NaN payloads survive), zero padding to 8 bytes, then those
entries' raw values in C order. "blocks" (the adjacency of a graph held in blocks, as attribution
writes big graphs; `graph.adjacency`): a little-endian uint64 n_blocks, then the four arrays of the
graph file's format 2, concatenated without padding: block shapes int64 [n_blocks, 2] (rows,
columns), every block's target rows int64, source columns int64, and values float32 ([columns,
rows] per block, C order); entries outside the blocks are 0. The graph_arrays row still says dtype
"<f4" and shape [N, N]. Each chunk carries its zlib.crc32. A graph's arrays are written once, when
the graph is first saved into the file; later saves leave those rows alone.

Changes from version 1: `graphs.title` and `graphs.notes` (a per-graph title and notes).
Changes from version 2: `resources` and the *_id columns (per-graph model, transcoders, feature index;
v2's `sources` held one model and one transcoder set per session), labels keyed by transcoder set.
Changes from version 3: the "blocks" encoding of the adjacency (tables unchanged), so that a graph of
tens of thousands of nodes is saved and reopened without an N x N matrix; a v3 reader cannot decode
it, hence the new version.

Migrations: `MIGRATIONS[v]` turns a version-v database into version v+1 in place; the store applies
them to an in-memory copy, never to the user's file (saving onto an old file rewrites it whole and
keeps the old one as "<name>.bak"). When changing the schema: freeze the current tables as
`_tables_vN` (keep them unchanged forever), bump SCHEMA_VERSION, add `migrate_N_to_N+1` and a fixture
written by the old version (see tests/fixtures/sessions/make_v1.py and make_v2.py).
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa

FORMAT_NAME = "circuit-studio-session"
APPLICATION_ID = 0x43537353  # "CSsS", in the SQLite header at offset 68
SCHEMA_VERSION = 4
BLOCKS_SINCE = 4  # the first version whose adjacency may be stored as "blocks"
CHUNK_BYTES = 64 << 20  # a save holds one chunk (and SQLite its copy) at a time; readers take any size <= 512 MiB
RESOURCE_KINDS = ("model", "transcoders", "feature_index")
BINDING_COLUMNS = ("model_id", "transcoders_id", "feature_index_id")  # session and graphs -> resources.id


def _meta_table(md: sa.MetaData) -> None:
    """The same in every version (see the module docstring)."""
    sa.Table("meta", md,
             sa.Column("key", sa.Text, primary_key=True),
             sa.Column("value", sa.Text, nullable=False))


def _graph_state_tables(md: sa.MetaData) -> None:
    """Tables identical in versions 1 to 3: a graph's arrays, pins, supernodes and interventions."""
    sa.Table("graph_arrays", md,
             sa.Column("graph_id", sa.Integer, sa.ForeignKey("graphs.id", ondelete="CASCADE"), primary_key=True),
             sa.Column("name", sa.Text, primary_key=True),
             sa.Column("dtype", sa.Text, nullable=False),
             sa.Column("shape", sa.JSON, nullable=False),
             sa.Column("encoding", sa.Text, nullable=False),
             sa.Column("nbytes", sa.Integer, nullable=False),
             sa.Column("n_chunks", sa.Integer, nullable=False))
    sa.Table("array_chunks", md,
             sa.Column("graph_id", sa.Integer, primary_key=True),
             sa.Column("name", sa.Text, primary_key=True),
             sa.Column("seq", sa.Integer, primary_key=True),
             sa.Column("crc32", sa.Integer, nullable=False),
             sa.Column("data", sa.LargeBinary, nullable=False),
             sa.ForeignKeyConstraint(["graph_id", "name"], ["graph_arrays.graph_id", "graph_arrays.name"],
                                     ondelete="CASCADE"))
    sa.Table("pins", md,
             sa.Column("graph_id", sa.Integer, sa.ForeignKey("graphs.id", ondelete="CASCADE"), primary_key=True),
             sa.Column("seq", sa.Integer, primary_key=True),
             sa.Column("node", sa.Integer, nullable=False))
    sa.Table("supernodes", md,
             sa.Column("graph_id", sa.Integer, sa.ForeignKey("graphs.id", ondelete="CASCADE"), primary_key=True),
             sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("seq", sa.Integer, nullable=False),
             sa.Column("name", sa.Text, nullable=False),
             sa.Column("members", sa.JSON, nullable=False))
    sa.Table("interventions", md,
             sa.Column("graph_id", sa.Integer, sa.ForeignKey("graphs.id", ondelete="CASCADE"), primary_key=True),
             sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("seq", sa.Integer, nullable=False),
             sa.Column("created", sa.Text, nullable=False),
             sa.Column("specs", sa.JSON, nullable=False),
             sa.Column("options", sa.JSON, nullable=False),
             sa.Column("top_before", sa.JSON, nullable=False),
             sa.Column("top_after", sa.JSON, nullable=False),
             sa.Column("extra", sa.JSON, nullable=False))


def _session_columns() -> list[sa.Column]:
    return [sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True),
            sa.Column("notes", sa.Text, nullable=False),
            sa.Column("current_graph", sa.Integer, nullable=True),
            sa.Column("settings", sa.JSON, nullable=False),
            sa.Column("window_state", sa.LargeBinary, nullable=True)]


def _tables_v1_v2_session(md: sa.MetaData) -> None:
    """`sources`, `session` and `labels` as versions 1 and 2 had them."""
    sa.Table("sources", md,
             sa.Column("role", sa.Text, sa.CheckConstraint("role IN ('model', 'transcoders')"), primary_key=True),
             sa.Column("path", sa.Text, nullable=False),
             sa.Column("content_hash", sa.Text, nullable=False),
             sa.Column("summary", sa.JSON, nullable=False))
    sa.Table("session", md, *_session_columns())
    sa.Table("labels", md,
             sa.Column("layer", sa.Integer, primary_key=True),
             sa.Column("feature", sa.Integer, primary_key=True),
             sa.Column("label", sa.Text, nullable=False))


def _graph_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("transcoder_name", sa.Text, nullable=False),
        sa.Column("n_layers", sa.Integer, nullable=False),
        sa.Column("vocab_size", sa.Integer, nullable=False),
        sa.Column("token_strings", sa.JSON, nullable=False),
        sa.Column("logit_tokens", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("provenance", sa.JSON, nullable=False),
        sa.Column("node_threshold", sa.Float, nullable=False),
        sa.Column("edge_threshold", sa.Float, nullable=False),
        sa.Column("selected", sa.Integer, nullable=True),
        sa.Column("view_x0", sa.Float, nullable=True),
        sa.Column("view_x1", sa.Float, nullable=True),
        sa.Column("view_y0", sa.Float, nullable=True),
        sa.Column("view_y1", sa.Float, nullable=True),
    ]


def _v2_graph_columns() -> list[sa.Column]:
    return [*_graph_columns(),
            sa.Column("title", sa.Text, nullable=False, server_default=""),
            sa.Column("notes", sa.Text, nullable=False, server_default="")]


def _binding_columns() -> list[sa.Column]:
    return [sa.Column(name, sa.Integer, sa.ForeignKey("resources.id"), nullable=True) for name in BINDING_COLUMNS]


def _tables_v1() -> sa.MetaData:
    """Schema version 1, frozen: never edit (old files and the v1 fixture were written with it)."""
    md = sa.MetaData()
    _meta_table(md)
    _tables_v1_v2_session(md)
    _graph_state_tables(md)
    sa.Table("graphs", md, *_graph_columns())
    return md


def _tables_v2() -> sa.MetaData:
    """Schema version 2, frozen: never edit (old files and the v2 fixture were written with it)."""
    md = sa.MetaData()
    _meta_table(md)
    _tables_v1_v2_session(md)
    _graph_state_tables(md)
    sa.Table("graphs", md, *_v2_graph_columns())
    return md


def _tables_v3() -> sa.MetaData:
    md = sa.MetaData()
    _meta_table(md)
    _graph_state_tables(md)
    sa.Table("resources", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("kind", sa.Text, sa.CheckConstraint(f"kind IN {RESOURCE_KINDS}"), nullable=False),
             sa.Column("path", sa.Text, nullable=False),
             sa.Column("content_hash", sa.Text, nullable=False),
             sa.Column("summary", sa.JSON, nullable=False))
    sa.Table("session", md, *_session_columns(), *_binding_columns())
    sa.Table("graphs", md, *_v2_graph_columns(), *_binding_columns())
    sa.Table("labels", md,
             sa.Column("transcoders", sa.Text, primary_key=True),
             sa.Column("layer", sa.Integer, primary_key=True),
             sa.Column("feature", sa.Integer, primary_key=True),
             sa.Column("seq", sa.Integer, nullable=False),
             sa.Column("label", sa.Text, nullable=False))
    return md


SCHEMA_V1 = _tables_v1()
SCHEMA_V2 = _tables_v2()
SCHEMA = _tables_v3()  # the current schema (version SCHEMA_VERSION: v4 has v3's tables)
SCHEMAS = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA, 4: SCHEMA}

# Tables and columns left out of the meta digest: the chunk data is covered by its crc32 column.
DIGEST_SKIP_COLUMNS = {"array_chunks": {"data"}}


def migrate_1_to_2(conn: sa.Connection) -> None:
    """v2 adds a title and notes to each graph (both empty for old graphs)."""
    conn.exec_driver_sql("ALTER TABLE graphs ADD COLUMN title TEXT NOT NULL DEFAULT ''")
    conn.exec_driver_sql("ALTER TABLE graphs ADD COLUMN notes TEXT NOT NULL DEFAULT ''")


def migrate_2_to_3(conn: sa.Connection) -> None:
    """v3 binds each graph to the resources it was traced with and keys labels by transcoder set.

    An old session had one model and one transcoder set, so every graph is bound to them and every
    label belongs to that set (labels of a session without transcoders get the unknown set, "")."""
    SCHEMA.tables["resources"].create(conn)
    conn.exec_driver_sql("INSERT INTO resources (id, kind, path, content_hash, summary) "
                         "SELECT CASE role WHEN 'model' THEN 1 ELSE 2 END, role, path, content_hash, summary "
                         "FROM sources")
    for table in ("session", "graphs"):
        for column in BINDING_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER REFERENCES resources (id)")
    conn.exec_driver_sql("UPDATE session SET model_id = (SELECT id FROM resources WHERE kind = 'model'), "
                         "transcoders_id = (SELECT id FROM resources WHERE kind = 'transcoders')")
    conn.exec_driver_sql("UPDATE graphs SET model_id = (SELECT model_id FROM session), "
                         "transcoders_id = (SELECT transcoders_id FROM session)")
    conn.exec_driver_sql("ALTER TABLE labels RENAME TO labels_v2")
    SCHEMA.tables["labels"].create(conn)
    conn.exec_driver_sql(
        "INSERT INTO labels (transcoders, layer, feature, seq, label) "
        "SELECT COALESCE((SELECT content_hash FROM resources WHERE kind = 'transcoders'), ''), layer, feature, "
        "ROW_NUMBER() OVER (ORDER BY rowid) - 1, label FROM labels_v2 ORDER BY rowid")
    conn.exec_driver_sql("DROP TABLE labels_v2")
    conn.exec_driver_sql("DROP TABLE sources")


def migrate_3_to_4(conn: sa.Connection) -> None:
    """v4 only adds an array encoding ("blocks"); a v3 file's rows are already valid v4 rows."""


MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: migrate_1_to_2, 2: migrate_2_to_3, 3: migrate_3_to_4}


def migrate(conn: sa.Connection, from_version: int) -> None:
    """Bring a database of `from_version` up to SCHEMA_VERSION (in place: pass a copy)."""
    for v in range(from_version, SCHEMA_VERSION):
        MIGRATIONS[v](conn)
        conn.execute(sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(v + 1)})
        conn.exec_driver_sql(f"PRAGMA user_version = {v + 1}")
