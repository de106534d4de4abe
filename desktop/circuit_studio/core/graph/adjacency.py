"""An attribution graph's adjacency matrix A [N, N] (A[target, source]), held so that its size
follows its non-zeros.

Most of the N x N entries of an attribution graph are zero by construction: only feature and
logit rows have entries, and a feature at (layer l, position p) receives only from features and
errors of lower layers at positions <= p and from tokens at positions <= p. Attribution therefore
writes its rows as **blocks**: a block is a list of target rows, a list of source columns and the
dense values between them, stored source-major (`values[j, i] = A[rows[i], cols[j]]`, the order in
which the backward pass produces them). Blocks do not overlap; every entry outside them is zero.

A matrix made by hand (tests, older files, sessions) can be held dense instead. `dense()` gives
the [N, N] matrix either way; pruning, export and graph files work on the blocks directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

# the names of `Adjacency.file_arrays`' four arrays, in the order files store them
FILE_KEYS = ("adjacency_block_shapes", "adjacency_block_rows", "adjacency_block_cols", "adjacency_block_values")


class Block:
    """Target rows x source columns of A, dense: `values` float32 [len(cols), len(rows)]."""

    __slots__ = ("rows", "cols", "values")

    def __init__(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.values = values
        if values.dtype != np.float32 or values.shape != (self.cols.size, self.rows.size):
            raise ValueError(f"block values must be float32 [{self.cols.size}, {self.rows.size}], "
                             f"got {values.dtype} {values.shape}")

    def __repr__(self) -> str:
        return f"Block({self.rows.size} rows x {self.cols.size} cols)"


class Adjacency:
    """A [N, N] float32, dense or as disjoint `Block`s (see the module docstring)."""

    def __init__(self, n_nodes: int, blocks: Sequence[Block] = (), *, dense: np.ndarray | None = None) -> None:
        self.n_nodes = int(n_nodes)
        if dense is not None:
            if blocks:
                raise ValueError("give blocks or a dense matrix, not both")
            dense = np.asarray(dense)
            if dense.shape != (self.n_nodes, self.n_nodes):
                raise ValueError(f"dense adjacency has shape {dense.shape}, expected {(self.n_nodes,) * 2}")
        self._dense = dense
        self._blocks = tuple(blocks)

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> "Adjacency":
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"adjacency matrix must be square, got shape {matrix.shape}")
        return cls(matrix.shape[0], dense=matrix)

    # ---- what it is ----
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_nodes, self.n_nodes)

    @property
    def is_dense(self) -> bool:
        return self._dense is not None

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The blocks (empty for a dense matrix)."""
        return self._blocks

    @property
    def n_stored(self) -> int:
        """Entries held: N² when dense, the blocks' sizes otherwise."""
        if self._dense is not None:
            return int(self._dense.size)
        return sum(int(b.values.size) for b in self._blocks)

    @property
    def nbytes(self) -> int:
        if self._dense is not None:
            return int(self._dense.nbytes)
        return sum(int(b.values.nbytes + b.rows.nbytes + b.cols.nbytes) for b in self._blocks)

    def __repr__(self) -> str:
        how = "dense" if self.is_dense else f"{len(self._blocks)} blocks, {self.n_stored:,} entries"
        return f"Adjacency({self.n_nodes} x {self.n_nodes}, {how})"

    # ---- reading ----
    def dense(self) -> np.ndarray:
        """float32 [N, N]. The held array itself when dense (do not modify it), else a new one."""
        if self._dense is not None:
            return self._dense
        out = np.zeros(self.shape, dtype=np.float32)
        for b in self._blocks:
            out[np.ix_(b.rows, b.cols)] = b.values.T
        return out

    def values_at(self, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """float32 [E]: A[targets[e], sources[e]] without building the matrix."""
        targets = np.asarray(targets, dtype=np.int64)
        sources = np.asarray(sources, dtype=np.int64)
        if self._dense is not None:
            return np.asarray(self._dense[targets, sources], dtype=np.float32)
        out = np.zeros(targets.shape, dtype=np.float32)
        if targets.size == 0 or not self._blocks:
            return out
        lk = self._lookup
        # candidate blocks of each target row: its slots in the row index, one pass per slot
        start, count = lk.row_ptr[targets], lk.row_ptr[targets + 1] - lk.row_ptr[targets]
        found = []
        for k in range(int(count.max(initial=0))):
            todo = np.flatnonzero(count > k)
            slot = start[todo] + k
            blk, rpos = lk.row_block[slot], lk.row_pos[slot]
            key = blk * self.n_nodes + sources[todo]
            i = np.minimum(np.searchsorted(lk.col_keys, key), lk.col_keys.size - 1)
            hit = lk.col_keys[i] == key
            found.append((todo[hit], blk[hit], rpos[hit], lk.col_pos[i[hit]]))
        e, blk, r, c = (np.concatenate(parts) for parts in zip(*found))
        order = np.argsort(blk, kind="stable")
        e, blk, r, c = e[order], blk[order], r[order], c[order]
        bounds = np.flatnonzero(np.diff(blk)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [blk.size]]).tolist()):
            if hi > lo:
                out[e[lo:hi]] = self._blocks[int(blk[lo])].values[c[lo:hi], r[lo:hi]]
        return out

    def submatrix(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """float32 [len(rows), len(cols)]: A[rows][:, cols] (all columns when `cols` is None), without
        building the matrix. Indices must be distinct."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.arange(self.n_nodes, dtype=np.int64) if cols is None else np.asarray(cols, dtype=np.int64)
        if self._dense is not None:
            return np.asarray(self._dense[np.ix_(rows, cols)], dtype=np.float32)
        out = np.zeros((rows.size, cols.size), dtype=np.float32)
        rpos = np.full(self.n_nodes, -1, dtype=np.int64)
        rpos[rows] = np.arange(rows.size)
        cpos = np.full(self.n_nodes, -1, dtype=np.int64)
        cpos[cols] = np.arange(cols.size)
        for b in self._blocks:
            ri, ci = rpos[b.rows], cpos[b.cols]
            r_in, c_in = np.flatnonzero(ri >= 0), np.flatnonzero(ci >= 0)
            if r_in.size and c_in.size:
                out[np.ix_(ri[r_in], ci[c_in])] = b.values[np.ix_(c_in, r_in)].T
        return out

    def row(self, node: int) -> np.ndarray:
        """float32 [N]: A[node, :] (the node's inputs)."""
        if self._dense is not None:
            return np.asarray(self._dense[node], dtype=np.float32)
        out = np.zeros(self.n_nodes, dtype=np.float32)
        for b in self._blocks:
            i = np.flatnonzero(b.rows == node)
            if i.size:
                out[b.cols] = b.values[:, i[0]]
        return out

    def column(self, node: int) -> np.ndarray:
        """float32 [N]: A[:, node] (the node's outputs)."""
        if self._dense is not None:
            return np.asarray(self._dense[:, node], dtype=np.float32)
        out = np.zeros(self.n_nodes, dtype=np.float32)
        for b in self._blocks:
            j = np.flatnonzero(b.cols == node)
            if j.size:
                out[b.rows] = b.values[j[0]]
        return out

    def abs_row_sums(self, dtype=np.float32) -> np.ndarray:
        """[N] in `dtype`: Σ_s |A[t, s]| per row (read-only when float64). Pruning and Node connections
        both need them; they are summed once (in float64), in row chunks when dense so that no N x N
        temporary is made."""
        return self._abs_row_sums.astype(dtype, copy=False)

    @cached_property
    def _abs_row_sums(self) -> np.ndarray:
        sums = np.zeros(self.n_nodes, dtype=np.float64)
        if self._dense is not None:
            for r in range(0, self.n_nodes, 512):
                sums[r:r + 512] = np.abs(self._dense[r:r + 512]).sum(axis=1, dtype=np.float64)
        for b in self._blocks:
            sums[b.rows] += np.abs(b.values).sum(axis=0, dtype=np.float64)
        sums.flags.writeable = False
        return sums

    def identical(self, other: "Adjacency") -> bool:
        """Same size and the same bits in every entry (-0.0 and NaN payloads count)."""
        if not isinstance(other, Adjacency) or other.n_nodes != self.n_nodes:
            return False
        if self._same_layout(other):
            return all(np.array_equal(a.values.view(np.uint32), b.values.view(np.uint32))
                       for a, b in zip(self._blocks, other._blocks))
        a, b = np.ascontiguousarray(self.dense(), np.float32), np.ascontiguousarray(other.dense(), np.float32)
        return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Adjacency) and self.identical(other)

    __hash__ = None  # type: ignore[assignment]

    def _same_layout(self, other: "Adjacency") -> bool:
        if self.is_dense or other.is_dense or len(self._blocks) != len(other._blocks):
            return False
        return all(np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
                   for a, b in zip(self._blocks, other._blocks))

    @cached_property
    def _lookup(self) -> "_Lookup":
        return _Lookup(self)

    # ---- files ----
    def file_arrays(self, values: bool = True) -> dict[str, np.ndarray]:
        """The blocks as four flat arrays (see `from_file_arrays`); for the graph file. `values=False`
        leaves out the values (a writer that streams them block by block)."""
        if self._dense is not None:
            raise ValueError("a dense adjacency is stored as the matrix itself")
        bl = self._blocks
        shapes = np.array([(b.rows.size, b.cols.size) for b in bl], dtype=np.int64).reshape(-1, 2)
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt))
        out = dict(zip(FILE_KEYS[:3], (shapes, cat([b.rows for b in bl], np.int64), cat([b.cols for b in bl], np.int64))))
        if values:
            out[FILE_KEYS[3]] = cat([b.values.ravel() for b in bl], np.float32)
        return out

    @classmethod
    def from_file_arrays(cls, n_nodes: int, arrays: dict[str, np.ndarray]) -> "Adjacency":
        """Inverse of `file_arrays`; the blocks are views of the given arrays (no copy)."""
        shapes = np.asarray(arrays["adjacency_block_shapes"], dtype=np.int64).reshape(-1, 2)
        rows, cols = arrays["adjacency_block_rows"], arrays["adjacency_block_cols"]
        values = np.asarray(arrays["adjacency_block_values"], dtype=np.float32)
        r_end, c_end = np.cumsum(shapes[:, 0]), np.cumsum(shapes[:, 1])
        v_end = np.cumsum(shapes[:, 0] * shapes[:, 1])
        if shapes.size and (r_end[-1] != rows.size or c_end[-1] != cols.size or v_end[-1] != values.size):
            raise ValueError("adjacency blocks do not add up to the stored arrays")
        blocks, r0, c0, v0 = [], 0, 0, 0
        for (nr, nc), r1, c1, v1 in zip(shapes.tolist(), r_end.tolist(), c_end.tolist(), v_end.tolist()):
            blocks.append(Block(rows[r0:r1], cols[c0:c1], values[v0:v1].reshape(nc, nr)))
            r0, c0, v0 = r1, c1, v1
        for b in blocks:
            if b.rows.size and (b.rows.min() < 0 or b.rows.max() >= n_nodes or b.cols.min(initial=0) < 0
                                or b.cols.max(initial=0) >= n_nodes):
                raise ValueError("an adjacency block points outside the graph")
        return cls(n_nodes, blocks)


class _Lookup:
    """Index of the blocks for entry look-ups: which blocks hold a row, where a column sits in a block."""

    def __init__(self, adj: Adjacency) -> None:
        bl = adj.blocks
        n = adj.n_nodes
        n_rows = np.array([b.rows.size for b in bl], dtype=np.int64)
        n_cols = np.array([b.cols.size for b in bl], dtype=np.int64)
        all_rows = np.concatenate([b.rows for b in bl])
        blk_of_row = np.repeat(np.arange(len(bl), dtype=np.int64), n_rows)
        pos_in_blk = np.concatenate([np.arange(k, dtype=np.int64) for k in n_rows.tolist()])
        order = np.argsort(all_rows, kind="stable")
        self.row_block, self.row_pos = blk_of_row[order], pos_in_blk[order]
        self.row_ptr = np.concatenate([[0], np.cumsum(np.bincount(all_rows, minlength=n))]).astype(np.int64)
        keys = np.concatenate([i * n + b.cols for i, b in enumerate(bl)])
        col_pos = np.concatenate([np.arange(k, dtype=np.int64) for k in n_cols.tolist()])
        order = np.argsort(keys, kind="stable")
        self.col_keys, self.col_pos = keys[order], col_pos[order]
