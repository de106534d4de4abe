"""Search a feature index by label and by the text of its top examples (no Qt).

`FeatureSearch(index)` builds, on first use, a full-text index of every feature of a
`core.features.index.FeatureIndex`: per feature its label, the tokens its top examples peak on, and
the text of those examples. It is SQLite FTS5 when this Python's SQLite has it (ranked by BM25, the
label weighted most), else a plain table searched with one prepared LIKE query per word (ranked by
where the words match). Words match as prefixes, so it answers as the user types ("sacr" finds
"Sacramento"); a query like `L2#345`, `2:345` or `#345` finds that feature by number.

The search index is built lazily (the first `search`) and cached: in memory for small indexes, and
for those with more than `DISK_CACHE_FEATURES` features next to the index file (`<index>.search`,
written whole or not at all, rebuilt when the index file changes), so that a big index is scanned
once, not per session. `benchmarks/feature_search.py` times it.

`graphs_with_feature(workspace, layer, feature)` lists the session's graphs where a feature is
active (from each graph's `active_features`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


SEARCH_VERSION = 1
DISK_CACHE_FEATURES = 20_000  # larger indexes keep their search index in a file next to them
DEFAULT_LIMIT = 50
RANK_CAP = 3000  # a query matching more features than this is ranked on a narrower set (see `_fts`)
WEIGHTS = (10.0, 4.0, 1.0)  # label, peak tokens, example text
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"^\s*(?:L\s*(\d+)\s*[#:/ ]\s*#?\s*(\d+)|(\d+)\s*[:/]\s*#?\s*(\d+)|#\s*(\d+))\s*$", re.I)


def has_fts5() -> bool:
    try:
        c = sqlite3.connect(":memory:")
        try:
            c.execute("CREATE VIRTUAL TABLE t USING fts5(a)")
        finally:
            c.close()
        return True
    except sqlite3.Error:
        return False


@dataclass(frozen=True)
class FeatureHit:
    """One search result: the feature, its label, how well it matched (higher is better) and the part of
    its examples that matched (an excerpt; '' when the label did)."""

    layer: int
    feature: int
    label: str
    score: float
    excerpt: str = ""


class FeatureSearch:
    """Ranked search over one feature index; see the module docstring. Thread-safe."""

    def __init__(self, index, cache: str | Path | None | bool = "auto", use_fts: bool | None = None) -> None:
        """`cache`: "auto" (in memory, or next to the index file for a big index), a file path, or
        None/False (always in memory). `use_fts`: force FTS5 on or off (None: use it when available)."""
        self.index = index
        self.path = Path(index.path)
        n = index.info.n_layers * index.info.n_features
        if cache == "auto":
            cache = self.path.with_name(self.path.name + ".search") if n > DISK_CACHE_FEATURES else None
        self.cache_path = Path(cache) if cache else None
        self.fts = has_fts5() if use_fts is None else bool(use_fts)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.build_seconds: float | None = None  # how long the last build took (None: read from the cache)

    # ---- building ----
    def _stamp(self) -> str:
        st = self.path.stat()
        return f"v{SEARCH_VERSION} {'fts5' if self.fts else 'like'} {st.st_size} {st.st_mtime_ns} " \
               f"{self.index.info.transcoder_fingerprint} {self.index.info.created}"

    def _documents(self):
        """(id, label, peak tokens, example text) of every feature, read straight from the index file."""
        src = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)
        try:
            tokens = dict(src.execute("SELECT id, text FROM tokens"))
            windows = {w: [tokens.get(i, "") for i in np.frombuffer(b, "<i4").tolist()]
                       for w, b in src.execute("SELECT id, tokens FROM windows")}
            for (fid, label, blob) in src.execute(
                    "SELECT f.id, f.label, d.data FROM features f JOIN feature_data d ON d.id = f.id ORDER BY f.id"):
                peaks, texts = [], []
                for band, window, start, length, maxpos in _example_info(blob).tolist():
                    if band >= 0:
                        continue
                    strs = windows[window][start:start + length]
                    peaks.append(strs[maxpos] if 0 <= maxpos < len(strs) else "")
                    texts.append("".join(strs))
                yield fid, label or "", " ".join(peaks), " \u2016 ".join(texts)
        finally:
            src.close()

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        if self.fts:
            conn.execute("CREATE VIRTUAL TABLE docs USING fts5(label, peaks, text, prefix='2 3', "
                         "tokenize='unicode61 remove_diacritics 2')")
        else:
            conn.execute("CREATE TABLE docs (rowid INTEGER PRIMARY KEY, label TEXT, peaks TEXT, text TEXT, "
                         "low_label TEXT, low_peaks TEXT, low_text TEXT)")
            conn.execute("CREATE INDEX docs_label ON docs (low_label)")
        batch = []
        ins = ("INSERT INTO docs (rowid, label, peaks, text) VALUES (?, ?, ?, ?)" if self.fts else
               "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?, ?)")
        for fid, label, peaks, text in self._documents():
            batch.append((fid, label, peaks, text) if self.fts else
                         (fid, label, peaks, text, label.lower(), peaks.lower(), text.lower()))
            if len(batch) >= 5000:
                conn.executemany(ins, batch)
                batch = []
        if batch:
            conn.executemany(ins, batch)
        if self.fts:
            conn.execute("INSERT INTO docs(docs) VALUES ('optimize')")
        conn.execute("INSERT INTO meta VALUES ('stamp', ?)", (self._stamp(),))
        conn.commit()

    def _open_cache(self) -> sqlite3.Connection | None:
        p = self.cache_path
        if p is None or not p.is_file():
            return None
        try:
            conn = sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            stamp = conn.execute("SELECT value FROM meta WHERE key = 'stamp'").fetchone()
            if stamp and stamp[0] == self._stamp():
                return conn
            conn.close()
        except sqlite3.Error:
            pass
        return None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        conn = self._open_cache()
        if conn is None:
            t0 = time.perf_counter()
            conn = None
            if self.cache_path is not None:
                tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
                try:
                    tmp.unlink(missing_ok=True)
                    w = sqlite3.connect(tmp)
                    try:
                        self._create(w)
                    finally:
                        w.close()
                    os.replace(tmp, self.cache_path)
                    conn = sqlite3.connect(f"{self.cache_path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
                except (OSError, sqlite3.Error):  # a read-only folder: keep it in memory
                    try:
                        tmp.unlink(missing_ok=True)
                    except OSError:
                        pass
                    conn = None
            if conn is None:
                conn = sqlite3.connect(":memory:", check_same_thread=False)
                self._create(conn)
            self.build_seconds = time.perf_counter() - t0
        self._conn = conn
        return conn

    @property
    def ready(self) -> bool:
        """The search index is built or open: `search` answers at once."""
        return self._conn is not None

    def prepare(self) -> None:
        """Build (or open the cached) search index now, e.g. on a background thread."""
        with self._lock:
            self._connection()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- searching ----
    def _by_number(self, query: str) -> list[FeatureHit]:
        m = _NUMBER.match(query)
        if not m:
            return []
        info = self.index.info
        if m.group(5) is not None:
            pairs = [(layer, int(m.group(5))) for layer in range(info.n_layers)]
        else:
            layer, feat = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            pairs = [(int(layer), int(feat))]
        out = []
        for layer, feat in pairs:
            if 0 <= layer < info.n_layers and 0 <= feat < info.n_features:
                out.append(FeatureHit(layer, feat, self.index.label(layer, feat), float("inf")))
        return out

    def search(self, query: str, limit: int = DEFAULT_LIMIT) -> list[FeatureHit]:
        """The features best matching `query`, best first (at most `limit`); [] for an empty query."""
        query = str(query or "")
        exact = self._by_number(query)
        words = [w.lower() for w in _WORD.findall(query)]
        if exact or not words:
            return exact[:limit]
        F = self.index.info.n_features
        with self._lock:
            conn = self._connection()
            if self.fts:
                rows = self._fts(conn, words, int(limit))
            else:
                rows = self._like(conn, words, int(limit))
        return [FeatureHit(int(r[0]) // F, int(r[0]) % F, r[1], float(r[2]), _excerpt(r[3], r[1], words))
                for r in rows]

    @staticmethod
    def _fts(conn: sqlite3.Connection, words: list[str], limit: int) -> list[tuple]:
        """Ranked by BM25 (label, peak tokens, examples weighted `WEIGHTS`) when at most `RANK_CAP` features
        match; a query that common (one or two letters typed) is ranked among the label and peak-token
        matches, and if those are too many as well, the first `RANK_CAP` of them are ranked by how their
        label matches (whole word, word start), so that no keystroke waits on scoring half the index."""
        match = " ".join(f'"{w}"*' if len(w) >= 2 else f'"{w}"' for w in words)

        def count(m: str) -> int:
            return conn.execute("SELECT count(*) FROM (SELECT rowid FROM docs WHERE docs MATCH ? LIMIT ?)",
                                (m, RANK_CAP + 1)).fetchone()[0]

        def ranked(m: str) -> list[tuple]:
            return conn.execute(
                "SELECT rowid, label, -bm25(docs, ?, ?, ?), snippet(docs, 2, '[', ']', '…', 8) FROM docs "
                "WHERE docs MATCH ? ORDER BY bm25(docs, ?, ?, ?) LIMIT ?", (*WEIGHTS, m, *WEIGHTS, limit)).fetchall()

        if count(match) <= RANK_CAP:
            return ranked(match)
        narrow = f"{{label peaks}} : ({match})"
        if count(narrow) <= RANK_CAP:
            return ranked(narrow)
        rows = conn.execute("SELECT rowid, label FROM docs WHERE docs MATCH ? LIMIT ?",
                            (f"{{label}} : ({match})", RANK_CAP)).fetchall()

        def score(label: str) -> float:
            parts = [p.lower() for p in _WORD.findall(label)]
            return float(sum(10 if w in parts else 6 if any(p.startswith(w) for p in parts) else 1 for w in words))
        scored = sorted(((r[0], r[1], score(r[1]), "") for r in rows), key=lambda r: (-r[2], r[0]))
        return scored[:limit]

    @staticmethod
    def _like(conn: sqlite3.Connection, words: list[str], limit: int) -> list[tuple]:
        """Without FTS5: every word must occur in the label, peaks or text; a word in the label scores most."""
        score = " + ".join(["(instr(low_label, ?) > 0) * 10 + (instr(low_peaks, ?) > 0) * 4 + "
                            "(instr(low_text, ?) > 0)"] * len(words))
        where = " AND ".join(["(low_label LIKE ? ESCAPE '\\' OR low_peaks LIKE ? ESCAPE '\\' OR low_text LIKE ? "
                              "ESCAPE '\\')"] * len(words))
        params: list = []
        for w in words:
            params += [w, w, w]
        for w in words:
            pat = "%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params += [pat, pat, pat]
        return conn.execute(f"SELECT rowid, label, {score} AS s, text FROM docs WHERE {where} "
                            f"ORDER BY s DESC, rowid LIMIT ?", (*params, limit)).fetchall()


def _example_info(blob: bytes) -> np.ndarray:
    """The `ex_info` array of a feature record (`core.features.index.pack_arrays`), decompressing only as far
    as it goes (it is the record's first array)."""
    d = zlib.decompressobj()
    raw = d.decompress(blob, 4096)
    (n,) = struct.unpack_from("<I", raw)
    while len(raw) < 4 + n and not d.eof:
        raw += d.decompress(d.unconsumed_tail, 4096)
    name, dtype, shape = json.loads(raw[4:4 + n])[0]
    if name != "ex_info":
        raise ValueError("a feature record that does not start with its examples")
    dt = np.dtype(dtype)
    size = int(np.prod(shape)) * dt.itemsize
    while len(raw) < 4 + n + size and not d.eof:
        raw += d.decompress(d.unconsumed_tail, max(4096, 4 + n + size - len(raw)))
    return np.frombuffer(raw, dt, int(np.prod(shape)), 4 + n).reshape(shape)


def _excerpt(text: str, label: str, words: list[str], width: int = 60) -> str:
    """Where the words occur in the example text ('' when the label holds them all)."""
    low = label.lower()
    if all(w in low for w in words):
        return ""
    if "[" in text and "]" in text:  # FTS5's snippet, already cut
        return text.replace("\u2016", "|")
    t = text.lower()
    i = min((t.find(w) for w in words if t.find(w) >= 0), default=-1)
    if i < 0:
        return ""
    s = max(0, i - width // 2)
    return ("…" if s else "") + text[s:s + width].replace("\u2016", "|") + ("…" if s + width < len(text) else "")


# ---- where a feature is active ----
@dataclass(frozen=True)
class GraphActivity:
    """One graph of the session in which the feature is active: at which prompt positions, how strongly."""

    graph_id: int
    title: str
    positions: tuple[int, ...]
    tokens: tuple[str, ...]
    max_activation: float
    is_node: bool  # one of its activations is a node of the graph (selected for attribution)


def feature_activity(graph, layer: int, feature: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(positions, activations, is a node) of the feature in one `AttributionGraph`."""
    af = graph.active_features
    hit = np.flatnonzero((af[:, 0] == int(layer)) & (af[:, 2] == int(feature)))
    is_node = bool(np.isin(hit, graph.selected_features).any()) if hit.size else False
    return af[hit, 1], np.asarray(graph.activation_values)[hit], is_node


def graphs_with_feature(workspace, layer: int, feature: int) -> list[GraphActivity]:
    """The session's graphs (`core.session.workspace.Workspace`) in which the feature is active, strongest first."""
    out = []
    for gid, entry in sorted(workspace.graphs.items()):
        g = entry.graph
        pos, acts, is_node = feature_activity(g, layer, feature)
        if pos.size:
            out.append(GraphActivity(gid, entry.display_title, tuple(int(p) for p in pos),
                                     tuple(g.token_strings[int(p)] for p in pos), float(acts.max()), is_node))
    return sorted(out, key=lambda a: -a.max_activation)
