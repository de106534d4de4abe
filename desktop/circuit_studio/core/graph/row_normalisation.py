"""Row normalisation of an adjacency matrix, as circuit-tracer's `normalize_matrix`: |A| divided by
its row sums (rows are targets), floored at 1e-10. The dense and the block-held pruning paths
(`pruning`, `blocked_pruning`) both divide by these sums."""

from __future__ import annotations

import numpy as np

ROW_SUM_FLOOR = np.float32(1e-10)


def normalize_matrix(matrix: np.ndarray) -> np.ndarray:
    """float32 [R, C]: |A| / max(Σ_row |A|, 1e-10) (rows are targets)."""
    out = np.abs(np.asarray(matrix, dtype=np.float32))
    normalize_rows_in_place(out)
    return out


def normalize_rows_in_place(abs_matrix: np.ndarray) -> None:
    sums = abs_matrix.sum(axis=1, dtype=np.float32)
    np.maximum(sums, ROW_SUM_FLOOR, out=sums)
    abs_matrix /= sums[:, None]  # a division, not a reciprocal product: same rounding as torch
