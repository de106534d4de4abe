"""Feature index files: every feature's top contexts, bands, histogram, logit effects and label.

An index is built once per (model, transcoder set, corpus) by `build_feature_index` (in
`feature_index_build`, re-exported here) and then only read: user labels live in sessions, not here.

File format: ONE SQLite file (format version `INDEX_VERSION`), written to a temporary file and
renamed, so a half-written index never exists under the final name.

    meta(key TEXT PRIMARY KEY, value TEXT)
        format = "circuit-studio-feature-index", version, model, transcoder_scan,
        transcoder_kind, transcoder_source, transcoder_fingerprint, feature_input_hook,
        feature_output_hook, n_layers, n_features, corpus, n_windows, context, n_tokens
        (non-BOS tokens seen), created (ISO time, UTC), settings (JSON of the build options)
    features(id INTEGER PRIMARY KEY, layer, feature, n_active, density, max_act, mean_act, label)
        id = layer * n_features + feature; small rows, so bulk label/statistics reads are fast
    feature_data(id INTEGER PRIMARY KEY, data BLOB)
        everything a dashboard shows, packed (below)
    windows(id INTEGER PRIMARY KEY, tokens BLOB)
        token ids (int32, little-endian) of every corpus window an example comes from
    tokens(id INTEGER PRIMARY KEY, text TEXT)
        decoded string of every token id used by an example or a logit effect, so examples
        display without the tokenizer

`data` is a zlib-compressed pack of named numpy arrays (`pack_arrays`): a little-endian uint32
header length, a JSON header `[[name, dtype, shape], ...]`, then the raw arrays in that order:

    ex_info   int32 [E, 5]   band (-1 = top example), window, start, length, max_position
    ex_max    float32 [E]    the context's max activation (the value examples are ranked by)
    ex_rel    float16 [sum length]   the contexts' activations divided by their ex_max,
              concatenated (shading precision ~1e-3 of the max; the max itself is exact)
    band_edges float32 [n_bands + 1], band_counts int64 [n_bands]
    hist_edges float32 [bins + 1], hist_counts int64 [bins]
    top_ids int32 [n], top_vals float32 [n], bottom_ids int32 [n], bottom_vals float32 [n]

An example's tokens are `windows[window][start:start + length]`.

Reading one feature is a primary-key lookup (row + blob), one decompression, a lookup of its
few windows and of the token strings not yet cached: about 1-3 ms, p99 under 10 ms on a shared
2-core machine; see `benchmarks/feature_index.py`.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CircuitStudioError

INDEX_FORMAT = "circuit-studio-feature-index"
INDEX_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = {"meta", "features", "feature_data", "windows", "tokens"}


class FeatureIndexError(CircuitStudioError):
    """A feature index cannot be built, opened or read (not an index, too new, corrupt)."""


# ---- what a reader gets ----
@dataclass(frozen=True)
class Example:
    """One context: tokens around the position of the feature's maximum in a corpus window.

    `activations[i]` is the feature's activation on `tokens[i]` (BOS positions read 0);
    `max_position` indexes `tokens`. `window` is the corpus window's number and `start` the
    window position of `tokens[0]`."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    max_position: int
    max_activation: float
    token_ids: tuple[int, ...] = ()
    window: int = -1
    start: int = 0


@dataclass(frozen=True)
class Band:
    """Examples whose context max lies in (low, high], a band of the feature's max activation.

    `n_contexts` is how many corpus windows fall in the band (top examples not counted);
    `examples` is a uniform random sample of them, strongest first."""

    index: int
    low: float
    high: float
    n_contexts: int
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Histogram:
    """Counts of the feature's non-zero activations in linear bins `edges` (len(counts) + 1),
    from 0 to the feature's max; bin i is [edges[i], edges[i+1]), the last one closed."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class TokenEffect:
    token: str
    token_id: int
    value: float


@dataclass(frozen=True)
class FeatureDetails:
    layer: int
    feature: int
    label: str
    density: float  # fraction of non-BOS corpus tokens where the activation is > 0
    max_activation: float
    mean_activation: float  # mean over the tokens where it is active
    n_active: int  # number of such tokens
    top_examples: tuple[Example, ...]
    band_examples: tuple[Band, ...]
    histogram: Histogram
    top_logits: tuple[TokenEffect, ...]
    bottom_logits: tuple[TokenEffect, ...]


@dataclass(frozen=True)
class IndexInfo:
    path: Path
    version: int
    model: str
    transcoder_scan: str
    transcoder_kind: str
    transcoder_fingerprint: str
    n_layers: int
    n_features: int
    corpus: str
    n_windows: int
    context: int
    n_tokens: int
    created: str
    settings: dict


# ---- blob packing ----
def pack_arrays(arrays: dict[str, np.ndarray], level: int = 6) -> bytes:
    """Named arrays -> compressed bytes (see the module docstring)."""
    header, parts = [], []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header.append([name, a.dtype.str, list(a.shape)])
        parts.append(a.tobytes())
    h = json.dumps(header, separators=(",", ":")).encode()
    return zlib.compress(struct.pack("<I", len(h)) + h + b"".join(parts), level)


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    raw = zlib.decompress(blob)
    (n,) = struct.unpack_from("<I", raw)
    offset, out = 4 + n, {}
    for name, dtype, shape in json.loads(raw[4:offset]):
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        out[name] = np.frombuffer(raw, dt, count, offset).reshape(shape)
        offset += count * dt.itemsize
    if offset != len(raw):
        raise ValueError("trailing bytes in a feature record")
    return out


# ---- reading ----
def _check_sqlite_file(path: Path) -> None:
    """Cheap structural checks before SQLite sees the file: magic bytes and the page count the
    header promises (a truncated copy is shorter than that)."""
    not_index = FeatureIndexError(f"{path} is not a Circuit Studio feature index.",
                                  "Choose a file written by `circuit-studio index-features`.")
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        raise FeatureIndexError(f"Cannot read {path} ({e.strerror or e}).", "Check the file's permissions.") from e
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        raise not_index
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    n_pages = struct.unpack(">I", head[28:32])[0]
    change, valid_for = struct.unpack(">I", head[24:28])[0], struct.unpack(">I", head[92:96])[0]
    if change == valid_for and n_pages and path.stat().st_size < n_pages * page_size:
        raise FeatureIndexError(
            f"{path} is truncated ({path.stat().st_size} bytes, the index needs {n_pages * page_size}).",
            "The copy is incomplete: copy the file again or rebuild the index.")


def _corrupt(path: Path, e: Exception) -> FeatureIndexError:
    return FeatureIndexError(f"{path} is corrupt ({e}).", "Rebuild the index with `circuit-studio index-features`.")


class FeatureIndex:
    """A read-only feature index. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, info: IndexInfo) -> None:
        self.path = path
        self.info = info
        self._conn = conn
        self._lock = threading.Lock()
        self._tokens: dict[int, str] = {}

    # -- opening --
    @classmethod
    def open(cls, path: str | Path) -> "FeatureIndex":
        """Open an index; raises FeatureIndexError if the file is missing, not an index, written by
        a newer Circuit Studio, truncated or corrupt."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise FeatureIndexError(f"Feature index {path} does not exist." if not path.exists()
                                    else f"{path} is a folder, not a feature index.",
                                    "Build one with `circuit-studio index-features`.")
        _check_sqlite_file(path)
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            raise _corrupt(path, e) from e
        try:
            info = cls._read_meta(path, conn)
            try:
                conn.execute("SELECT f.label, d.data FROM features f JOIN feature_data d ON d.id = f.id "
                             "WHERE f.id = 0").fetchall()
            except sqlite3.DatabaseError as e:
                raise _corrupt(path, e) from e
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, info)

    @staticmethod
    def _read_meta(path: Path, conn: sqlite3.Connection) -> IndexInfo:
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "encrypted" in str(e):
                raise FeatureIndexError(f"{path} is not a Circuit Studio feature index.",
                                        "Choose a file written by `circuit-studio index-features`.") from e
            raise _corrupt(path, e) from e
        if meta.get("format") != INDEX_FORMAT or not _TABLES <= tables:
            raise FeatureIndexError(f"{path} is an SQLite database but not a Circuit Studio feature index.",
                                    "Choose a file written by `circuit-studio index-features`.")
        try:
            version = int(meta["version"])
        except (KeyError, ValueError) as e:
            raise _corrupt(path, ValueError(f"bad version {meta.get('version')!r}")) from e
        if version > INDEX_VERSION:
            raise FeatureIndexError(f"{path} is a feature index of format version {version}; this Circuit "
                                    f"Studio reads versions up to {INDEX_VERSION}.",
                                    "Update Circuit Studio, or rebuild the index with this version.")
        try:
            return IndexInfo(
                path=path, version=version, model=meta["model"], transcoder_scan=meta["transcoder_scan"],
                transcoder_kind=meta["transcoder_kind"], transcoder_fingerprint=meta["transcoder_fingerprint"],
                n_layers=int(meta["n_layers"]), n_features=int(meta["n_features"]), corpus=meta["corpus"],
                n_windows=int(meta["n_windows"]), context=int(meta["context"]), n_tokens=int(meta["n_tokens"]),
                created=meta["created"], settings=json.loads(meta["settings"]))
        except (KeyError, ValueError) as e:
            raise _corrupt(path, ValueError(f"meta entry missing or bad: {e}")) from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "FeatureIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries --
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.ProgrammingError as e:
                raise FeatureIndexError(f"Feature index {self.path} is closed.") from e
            except sqlite3.DatabaseError as e:
                raise _corrupt(self.path, e) from e

    def _check(self, layer: int, feature: int | None = None) -> None:
        if not 0 <= layer < self.info.n_layers:
            raise FeatureIndexError(f"Layer {layer} is not in the index ({self.info.n_layers} layers).")
        if feature is not None and not 0 <= feature < self.info.n_features:
            raise FeatureIndexError(f"Feature {feature} is not in the index ({self.info.n_features} per layer).")

    def _token_strings(self, ids: np.ndarray) -> dict[int, str]:
        missing = [int(i) for i in np.unique(ids) if int(i) not in self._tokens]
        for s in range(0, len(missing), 500):
            chunk = missing[s:s + 500]
            rows = self._query(f"SELECT id, text FROM tokens WHERE id IN ({','.join('?' * len(chunk))})",
                               tuple(chunk))
            self._tokens.update(rows)
        return self._tokens

    def _id(self, layer: int, feature: int) -> int:
        self._check(layer, feature)
        return int(layer) * self.info.n_features + int(feature)

    def feature(self, layer: int, feature: int) -> FeatureDetails:
        """Everything the dashboard of one feature shows (a few small reads; about a millisecond)."""
        layer, feature = int(layer), int(feature)
        rows = self._query("SELECT f.n_active, f.density, f.max_act, f.mean_act, f.label, d.data FROM features f "
                           "JOIN feature_data d ON d.id = f.id WHERE f.id = ?", (self._id(layer, feature),))
        if not rows:
            raise _corrupt(self.path, KeyError(f"no record for layer {layer} feature {feature}"))
        n_active, density, max_act, mean_act, label, blob = rows[0]
        try:
            a = unpack_arrays(blob)
            info, ex_max = a["ex_info"].tolist(), a["ex_max"].tolist()
            wins = sorted({row[1] for row in info})
            window_ids = {}
            for w, tok in self._query(f"SELECT id, tokens FROM windows WHERE id IN ({','.join('?' * len(wins))})",
                                      tuple(wins)) if wins else ():
                window_ids[w] = np.frombuffer(tok, "<i4").tolist()
            strings = self._token_strings(np.array([i for ids in window_ids.values() for i in ids]
                                                   + a["top_ids"].tolist() + a["bottom_ids"].tolist(), np.int64))
            rel = a["ex_rel"].astype(np.float32)
            examples: list[tuple[int, Example]] = []
            offset = 0
            for (band, window, start, length, maxpos), m in zip(info, ex_max):
                ids = tuple(window_ids[window][start:start + length])
                acts = (rel[offset:offset + length] * np.float32(m)).tolist()
                acts[maxpos] = m
                examples.append((band, Example(tuple(strings[i] for i in ids), tuple(acts), maxpos, m, ids,
                                               window, start)))
                offset += length
            edges, counts = a["band_edges"].tolist(), a["band_counts"].tolist()
            bands = tuple(Band(b, edges[b], edges[b + 1], counts[b], tuple(e for eb, e in examples if eb == b))
                          for b in range(len(counts)))

            def effects(ids: np.ndarray, vals: np.ndarray) -> tuple[TokenEffect, ...]:
                return tuple(TokenEffect(strings[i], i, v) for i, v in zip(ids.tolist(), vals.tolist()))

            return FeatureDetails(
                layer, feature, label, density, max_act, mean_act, n_active,
                top_examples=tuple(e for b, e in examples if b < 0), band_examples=bands,
                histogram=Histogram(tuple(a["hist_edges"].tolist()), tuple(a["hist_counts"].tolist())),
                top_logits=effects(a["top_ids"], a["top_vals"]),
                bottom_logits=effects(a["bottom_ids"], a["bottom_vals"]))
        except (KeyError, ValueError, IndexError, zlib.error) as e:
            raise _corrupt(self.path, e) from e

    def label(self, layer: int, feature: int) -> str:
        rows = self._query("SELECT label FROM features WHERE id = ?", (self._id(layer, feature),))
        if not rows:
            raise _corrupt(self.path, KeyError(f"no record for layer {layer} feature {feature}"))
        return rows[0][0]

    def _layer_rows(self, columns: str, layer: int) -> list[tuple]:
        self._check(layer)
        F = self.info.n_features
        rows = self._query(f"SELECT {columns} FROM features WHERE id >= ? AND id < ? ORDER BY id",
                           (int(layer) * F, (int(layer) + 1) * F))
        if len(rows) != F:
            raise _corrupt(self.path, ValueError(f"layer {layer} has {len(rows)} records, expected {F}"))
        return rows

    def labels(self, layer: int) -> list[str]:
        """The automatic labels of every feature of `layer`, by feature index."""
        return [r[0] for r in self._layer_rows("label", layer)]

    def layer_statistics(self, layer: int) -> dict[str, np.ndarray]:
        """Per-feature arrays of `layer` for filtering and colouring: density, max_act, mean_act
        (float64) and n_active (int64), each [n_features]."""
        cols = list(zip(*self._layer_rows("density, max_act, mean_act, n_active", layer)))
        return {"density": np.array(cols[0], np.float64), "max_act": np.array(cols[1], np.float64),
                "mean_act": np.array(cols[2], np.float64), "n_active": np.array(cols[3], np.int64)}


MAX_CANDIDATES = 32  # index files looked at by find_feature_index


def find_feature_index(tc, folder: str | Path | None = None) -> Path | None:
    """The feature index built for transcoder set `tc`, among the `.sqlite` / `.db` files in its folder
    (`folder`, default `tc.source`) and the folder above it: the first whose recorded transcoder
    fingerprint (`feature_index_build.transcoder_fingerprint`) is `tc`'s. Reads only each file's meta
    table; None when none matches."""
    from .index_shards import transcoder_fingerprint

    source = Path(folder) if folder is not None else (Path(tc.source) if getattr(tc, "source", None) else None)
    if tc is None or source is None:
        return None
    base = source if source.is_dir() else source.parent
    candidates = []
    for d in (base, base.parent):
        try:
            candidates += sorted(p for p in d.iterdir() if p.suffix.lower() in (".sqlite", ".db") and p.is_file())
        except OSError:
            continue
    fingerprint = None
    for path in candidates[:MAX_CANDIDATES]:
        try:
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=0.1)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
            finally:
                conn.close()
        except sqlite3.Error:
            continue
        if meta.get("format") != INDEX_FORMAT:
            continue
        if fingerprint is None:
            fingerprint = transcoder_fingerprint(tc)
        if meta.get("transcoder_fingerprint") == fingerprint:
            return path
    return None


def __getattr__(name: str):
    # build_feature_index lives in feature_index_build (which imports this module)
    if name in ("build_feature_index", "auto_label"):
        from . import index_build as feature_index_build

        return getattr(feature_index_build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
