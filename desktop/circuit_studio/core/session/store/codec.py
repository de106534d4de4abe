"""Array payloads of session files: "raw", the lossless "nonzero" encoding, and "blocks" for an adjacency
held in blocks (see `session.schema`)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ...graph.adjacency import FILE_KEYS, Adjacency

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


def payload_bound(arr: np.ndarray, encoding: str) -> int:
    """An upper bound on `len(encode_array(arr, encoding))`, without encoding (one pass to count non-zeros)."""
    arr = np.ascontiguousarray(arr)
    if encoding != "nonzero":
        return arr.nbytes
    mask = (arr.size + 7) // 8
    nnz = int(np.count_nonzero(arr.reshape(-1).view(f"u{arr.dtype.itemsize}"))) if arr.size else 0
    return 16 + mask + mask // 1000 + 64 + 8 + nnz * arr.dtype.itemsize  # zlib never grows data by more


# ---- the adjacency ----

def encode_adjacency(adj: Adjacency, *, allow_blocks: bool = True) -> tuple[str, list[memoryview]]:
    """(encoding, parts) of a graph's adjacency; the payload is the parts concatenated (they are views of
    the adjacency's own arrays, so a 2 GB graph is written without a copy of it). A graph held in blocks
    is stored as its blocks ("blocks"), never made an N x N matrix to be saved; a dense one (or any, for
    schemas before 4) as "nonzero"."""
    if adj.is_dense or not allow_blocks:
        return "nonzero", [encode_array(adj.dense(), "nonzero")]
    blocks = adj.blocks
    shapes = np.array([(b.rows.size, b.cols.size) for b in blocks], dtype="<i8").reshape(-1, 2)
    parts = [memoryview(struct.pack("<Q", len(blocks))), memoryview(shapes).cast("B")]
    for arrays, dt in (([b.rows for b in blocks], "<i8"), ([b.cols for b in blocks], "<i8"),
                       ([b.values for b in blocks], "<f4")):
        parts += [memoryview(np.ascontiguousarray(a, dtype=dt)).cast("B") for a in arrays if a.size]
    return "blocks", parts


def adjacency_payload_bound(adj: Adjacency, *, allow_blocks: bool = True) -> int:
    """An upper bound on the length of `encode_adjacency(adj)[1]` (exact for blocks), without encoding."""
    if adj.is_dense or not allow_blocks:
        return payload_bound(adj.dense(), "nonzero")
    n_rows = sum(b.rows.size for b in adj.blocks)
    n_cols = sum(b.cols.size for b in adj.blocks)
    return 8 + 16 * len(adj.blocks) + 8 * (n_rows + n_cols) + 4 * adj.n_stored


def decode_adjacency(payload, dtype: str, shape: tuple[int, ...], encoding: str) -> Adjacency:
    """The adjacency stored by `encode_adjacency` (or, in older files, as any array encoding). The blocks
    are views of `payload` when it is a writable buffer (no copy of a 2 GB graph), copies otherwise."""
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"adjacency of shape {shape}")
    if encoding != "blocks":
        return Adjacency.from_dense(decode_array(payload, dtype, shape, encoding))
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"block adjacency of dtype {dtype}")
    buf = np.frombuffer(payload, np.uint8)
    if buf.size < 8:
        raise ValueError("block payload too short")
    (n_blocks,) = struct.unpack_from("<Q", buf)
    at = 8

    def take(count: int, dt: str) -> np.ndarray:
        nonlocal at
        nbytes = count * np.dtype(dt).itemsize
        if at + nbytes > buf.size:
            raise ValueError("block payload too short")
        out = buf[at:at + nbytes].view(dt)
        at += nbytes
        return out if out.flags.writeable else out.copy()

    shapes = take(2 * n_blocks, "<i8").reshape(-1, 2)
    if shapes.size and shapes.min() < 0:
        raise ValueError("negative block size")
    rows = take(int(shapes[:, 0].sum()), "<i8")
    cols = take(int(shapes[:, 1].sum()), "<i8")
    values = take(int((shapes[:, 0] * shapes[:, 1]).sum()), "<f4")
    if at != buf.size:
        raise ValueError("block payload has the wrong length")
    return Adjacency.from_file_arrays(shape[0], dict(zip(FILE_KEYS, (shapes, rows, cols, values))))
