"""The attribution graph: one frozen object holding everything attribution computed.

Node order (rows and columns of `adjacency_matrix`), the contract every other module relies on:

1. feature nodes: the selected active features, ascending index into `active_features`
   (`active_features` itself is lexicographic in (layer, position, feature));
2. error nodes: `n_layers * n_pos` of them, layer-major: node `n_features + layer * n_pos + pos`;
3. token nodes: `n_pos` of them, by position (BOS included);
4. logit nodes: `n_logits` of them, in target order (probability descending for automatic targets).

`adjacency_matrix[t, s]` is the direct effect of source s on target t (rows = targets, columns =
sources), as in circuit-tracer. Only feature and logit rows are non-zero; logit columns are zero.
The graph holds it as `adjacency` (`core.graph.adjacency.Adjacency`): attribution writes only the entries
that can be non-zero, in blocks; `adjacency_matrix` builds the dense [N, N] view on first use.

Files: `save_graph` writes one `.npz` holding the arrays and a JSON header (no pickle), so a graph
can be reopened without torch and without the model. Format 1 stores the dense `adjacency_matrix`
(graphs of up to `DENSE_FILE_MAX_NODES` nodes); format 2 stores the blocks (`write_graph_npz`).
`load_graph` reads both.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

import numpy as np

from .adjacency import FILE_KEYS, Adjacency
from ..atomic_write import output_error, replace_all_or_none
from ..errors import GraphFileError

GRAPH_FILE_VERSION = 2  # 1: dense adjacency matrix; 2: its blocks (see write_graph_npz)


class NodeKind(str, Enum):
    """A node's kind, declared in the node order (see the module docstring)."""

    FEATURE = "feature"
    ERROR = "error"
    TOKEN = "token"
    LOGIT = "logit"

    @property
    def code(self) -> int:
        """This kind in `AttributionGraph.node_kinds()`: its place in the node order (feature 0 .. logit 3)."""
        return list(NodeKind).index(self)


@dataclass(frozen=True)
class AttributionParams:
    """How a graph was computed (circuit-tracer's names and Python-API defaults)."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 256
    max_feature_nodes: int | None = None
    update_interval: int = 4


@dataclass(frozen=True, init=False)
class AttributionGraph:
    """A complete (unpruned) attribution graph; see the module docstring for the node order.

    Shapes: P = n_pos (BOS included), L = n_layers, K = n_logits, N = n_nodes.

    The matrix is held as `adjacency` (`core.graph.adjacency.Adjacency`: blocks whose size follows the
    non-zeros, as attribution writes them, or a dense array). `adjacency_matrix` is the dense
    [N, N] view, built on first use and kept: fine for small graphs, tests and the window, but the
    big path (attribute -> prune -> export / .npz) never asks for it. Construct with either
    `adjacency_matrix=` (a dense array, as before) or `adjacency=`.
    """

    prompt: str
    input_tokens: np.ndarray  # int64 [P]
    token_strings: tuple[str, ...]  # [P] decoded tokens, for labels
    active_features: np.ndarray  # int64 [n_active, 3] (layer, pos, feature), lexicographic
    activation_values: np.ndarray  # float32 [n_active]
    selected_features: np.ndarray  # int64 [n_features] indices into active_features, ascending
    logit_token_ids: np.ndarray  # int64 [K]
    logit_probabilities: np.ndarray  # float32 [K] softmax probabilities, not renormalised
    logit_tokens: tuple[str, ...]  # [K] decoded target tokens
    adjacency: Adjacency  # A [N, N], [target, source]; `adjacency_matrix` is its dense view
    n_layers: int
    vocab_size: int
    params: AttributionParams = field(default_factory=AttributionParams)
    model_name: str = ""
    transcoder_name: str = ""
    provenance: dict = field(default_factory=dict)  # versions, device, dtype, seconds, time

    def __init__(self, prompt: str, input_tokens: np.ndarray, token_strings: tuple[str, ...],
                 active_features: np.ndarray, activation_values: np.ndarray, selected_features: np.ndarray,
                 logit_token_ids: np.ndarray, logit_probabilities: np.ndarray, logit_tokens: tuple[str, ...],
                 adjacency_matrix: np.ndarray | None = None, n_layers: int | None = None,
                 vocab_size: int | None = None, params: AttributionParams | None = None, model_name: str = "",
                 transcoder_name: str = "", provenance: dict | None = None, *,
                 adjacency: Adjacency | None = None) -> None:
        if n_layers is None or vocab_size is None:
            raise TypeError("AttributionGraph needs n_layers and vocab_size")
        if adjacency_matrix is not None:  # given explicitly (also by dataclasses.replace): it wins
            adjacency = Adjacency.from_dense(adjacency_matrix)
        if adjacency is None:
            raise TypeError("AttributionGraph needs adjacency_matrix= or adjacency=")
        values = dict(prompt=prompt, input_tokens=input_tokens, token_strings=token_strings,
                      active_features=active_features, activation_values=activation_values,
                      selected_features=selected_features, logit_token_ids=logit_token_ids,
                      logit_probabilities=logit_probabilities, logit_tokens=logit_tokens, adjacency=adjacency,
                      n_layers=n_layers, vocab_size=vocab_size,
                      params=AttributionParams() if params is None else params, model_name=model_name,
                      transcoder_name=transcoder_name, provenance={} if provenance is None else provenance)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        n = self.n_nodes
        if adjacency.shape != (n, n):
            raise ValueError(f"adjacency_matrix has shape {adjacency.shape}, node order needs ({n}, {n})")

    @property
    def adjacency_matrix(self) -> np.ndarray:
        """float32 [N, N] dense A (built from the blocks on first use, then kept; read-only)."""
        cached = self.__dict__.get("_dense_adjacency")
        if cached is None:
            cached = self.adjacency.dense()
            if not self.adjacency.is_dense:
                cached.flags.writeable = False
                object.__setattr__(self, "_dense_adjacency", cached)
        return cached

    # ---- counts and offsets (the node order, stated once) ----
    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    def kind_of(self, node: int) -> NodeKind:
        if node < self.error_offset:
            return NodeKind.FEATURE
        if node < self.token_offset:
            return NodeKind.ERROR
        if node < self.logit_offset:
            return NodeKind.TOKEN
        return NodeKind.LOGIT

    def node_kinds(self) -> np.ndarray:
        """int8 [N]: each node's `NodeKind.code` (for array work; `kind_of` names one node's kind)."""
        k = np.empty(self.n_nodes, dtype=np.int8)
        k[: self.error_offset] = NodeKind.FEATURE.code
        k[self.error_offset : self.token_offset] = NodeKind.ERROR.code
        k[self.token_offset : self.logit_offset] = NodeKind.TOKEN.code
        k[self.logit_offset :] = NodeKind.LOGIT.code
        return k

    def node_layers(self) -> np.ndarray:
        """int64 [N]: feature/error layer; -1 for tokens (embedding row); n_layers for logits."""
        out = np.empty(self.n_nodes, dtype=np.int64)
        out[: self.n_features] = self.active_features[self.selected_features, 0]
        out[self.error_offset : self.token_offset] = np.repeat(np.arange(self.n_layers), self.n_pos)
        out[self.token_offset : self.logit_offset] = -1
        out[self.logit_offset :] = self.n_layers
        return out

    def node_positions(self) -> np.ndarray:
        """int64 [N]: prompt position of each node (logits sit at the last position)."""
        out = np.empty(self.n_nodes, dtype=np.int64)
        out[: self.n_features] = self.active_features[self.selected_features, 1]
        out[self.error_offset : self.token_offset] = np.tile(np.arange(self.n_pos), self.n_layers)
        out[self.token_offset : self.logit_offset] = np.arange(self.n_pos)
        out[self.logit_offset :] = self.n_pos - 1
        return out

    def logit_weights(self) -> np.ndarray:
        """float32 [N]: zero except the logit nodes, which hold their probabilities (pruning's w)."""
        w = np.zeros(self.n_nodes, dtype=np.float32)
        w[self.logit_offset :] = self.logit_probabilities
        return w

    def feature_of(self, node: int) -> tuple[int, int, int, float]:
        """(layer, pos, feature index, activation) of a feature node."""
        a = int(self.selected_features[node])
        layer, pos, feat = (int(v) for v in self.active_features[a])
        return layer, pos, feat, float(self.activation_values[a])


# the fields stored as arrays (in a graph file, a session); every other field is plain data for a header
GRAPH_ARRAYS = ("input_tokens", "active_features", "activation_values", "selected_features",
                "logit_token_ids", "logit_probabilities", "adjacency_matrix")
# graphs up to this many nodes keep the dense `adjacency_matrix` key in their file (format 1, the layout
# of circuit-tracer's reference files); bigger ones store the adjacency's blocks (format 2)
DENSE_FILE_MAX_NODES = 4096


def save_graph(graph: AttributionGraph, path: str | Path, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write `graph` to one `.npz` (arrays + a JSON header), whole or not at all (`atomic_write`).

    `extra` arrays (e.g. `node_mask`, `edge_mask` of a pruning) are stored beside the graph's own and
    ignored by `load_graph`. Raises GraphFileError (full disk, read-only folder, ...).
    """
    with replace_all_or_none([path], error=graph_write_error) as (tmp,):
        write_graph_npz(graph, tmp, extra)


def write_graph_npz(graph: AttributionGraph, path: Path, extra: dict[str, np.ndarray] | None = None) -> None:
    """The `.npz` of `graph` written straight into `path`; `save_graph` is the safe way to write one.

    Format 1 (graphs of up to `DENSE_FILE_MAX_NODES` nodes, and any graph held dense): the dense
    `adjacency_matrix` [N, N]. Format 2: the adjacency's blocks instead, as `adjacency_block_shapes`
    int64 [n_blocks, 2] (rows, columns of each block), `adjacency_block_rows` / `adjacency_block_cols`
    int64 (each block's target rows and source columns, concatenated) and `adjacency_block_values`
    float32 (each block's [columns, rows] values, C order, concatenated): entries outside the blocks are 0.
    """
    adj = graph.adjacency
    dense = adj.is_dense or graph.n_nodes <= DENSE_FILE_MAX_NODES
    header = {
        "format": "circuit-studio-graph",
        "version": 1 if dense else GRAPH_FILE_VERSION,
        **{f.name: getattr(graph, f.name) for f in fields(graph) if f.name not in GRAPH_ARRAYS + ("adjacency",)},
    }
    header["params"] = asdict(graph.params)
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **(extra or {}),
              **{name: getattr(graph, name) for name in GRAPH_ARRAYS if name != "adjacency_matrix"}}
    streamed = {}
    if dense:
        arrays["adjacency_matrix"] = graph.adjacency_matrix
    else:
        # the blocks' values go to the file block by block: no 2 GB concatenation of a big graph's blocks
        names = FILE_KEYS[:3]
        arrays.update({k: v for k, v in adj.file_arrays(values=False).items() if k in names})
        streamed[FILE_KEYS[3]] = (np.dtype("<f4"), adj.n_stored, [b.values for b in adj.blocks])
    _write_npz(path, arrays, streamed)


def _write_npz(path: Path, arrays: dict[str, np.ndarray],
               streamed: dict[str, tuple[np.dtype, int, list[np.ndarray]]]) -> None:
    """What `np.savez` writes (an uncompressed zip of `.npy` members, ZIP64 when big), plus members
    written piece by piece: `streamed[name]` = (dtype, length, pieces), a 1-D array that is the pieces
    concatenated in C order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
        for name, (dtype, length, pieces) in streamed.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_2_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                          "fortran_order": False, "shape": (int(length),)})
                written = 0
                for piece in pieces:
                    piece = np.ascontiguousarray(piece, dtype=dtype)
                    fh.write(memoryview(piece).cast("B"))
                    written += piece.size
                if written != length:
                    raise ValueError(f"{name}: {written} values written, {length} declared")


def graph_write_error(e: BaseException, path: Path | str) -> GraphFileError:
    """A failed write of a graph file, as the GraphFileError that says why."""
    return output_error(e, path, cls=GraphFileError)


def load_graph(path: str | Path) -> AttributionGraph:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {name: z[name] for name in GRAPH_ARRAYS if name != "adjacency_matrix"}
            if "adjacency_matrix" in z.files:  # format 1: dense
                arrays["adjacency_matrix"] = z["adjacency_matrix"]
            else:  # format 2: blocks
                n = (arrays["selected_features"].shape[0] + (int(header["n_layers"]) + 1) * arrays["input_tokens"].shape[0]
                     + arrays["logit_token_ids"].shape[0])
                arrays["adjacency"] = Adjacency.from_file_arrays(n, {k: z[k] for k in FILE_KEYS})
    except FileNotFoundError as e:
        raise GraphFileError(f"Graph file {path} does not exist.") from e
    except Exception as e:  # zip, json and key errors all mean the same thing to the user
        raise GraphFileError(f"{path} is not a Circuit Studio graph file ({type(e).__name__}: {e}).",
                             "Open a .npz written by `circuit-studio attribute --npz` or by the app.") from e
    if header.get("format") != "circuit-studio-graph":
        raise GraphFileError(f"{path} is not a Circuit Studio graph file.")
    if header["version"] > GRAPH_FILE_VERSION:
        raise GraphFileError(f"{path} was written by a newer Circuit Studio (graph format {header['version']}).",
                             "Update Circuit Studio to open it.")
    header.pop("format"), header.pop("version")
    header["params"] = AttributionParams(**header["params"])
    header["token_strings"] = tuple(header["token_strings"])
    header["logit_tokens"] = tuple(header["logit_tokens"])
    return AttributionGraph(**header, **arrays)
