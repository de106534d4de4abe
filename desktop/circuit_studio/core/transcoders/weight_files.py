"""Weight files read from their headers and memory-mapped, never copied whole.

Released transcoder sets are larger than a workstation's RAM (Llama-3.2-1B's per-layer set with
skip is 17 GB in bfloat16). So a tensor is a zero-copy view of the file's pages in the dtype it is
stored in: the kernel reads a page when it is first touched, attribution touches every encoder
once (layer by layer) and the decoder rows of the active features only, and `drop_pages` hands a
file's pages back so resident memory stays near one layer. Mappings are private copy-on-write, so
an accidental in-place write can never reach the file.

Formats: safetensors (8-byte header length, JSON header, raw data) and numpy `.npz` archives whose
members are stored uncompressed (GemmaScope's `params.npz`). Compressed members are read into
memory instead (they cannot be mapped).
"""

from __future__ import annotations

import json
import mmap
import struct
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: headers are read before any weight is loaded
    import torch

_ST_NAMES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


@lru_cache(maxsize=1)
def _st_dtypes() -> dict:
    """safetensors dtype names -> torch dtypes."""
    import torch

    return dict(zip(_ST_NAMES, (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)))


class WeightFileError(Exception):
    """The file is not a readable safetensors / npz file (message says why)."""


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in a file. `offset` is in bytes from the start of the file."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    fortran_order: bool = False
    compressed: bool = False  # an npz member that has to be inflated into memory

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def read_index(path: Path) -> dict[str, StoredTensor]:
    """Key -> StoredTensor for every tensor of a safetensors or npz file (headers only)."""
    path = Path(path)
    try:
        return _npz_index(path) if path.suffix.lower() == ".npz" else _safetensors_index(path)
    except WeightFileError:
        raise
    except (OSError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as exc:
        kind = "npz" if path.suffix.lower() == ".npz" else "safetensors"
        raise WeightFileError(f"not a valid {kind} file ({' '.join(str(exc).split()) or type(exc).__name__})")


def _safetensors_index(path: Path) -> dict[str, StoredTensor]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError("the file is shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise WeightFileError(f"its header claims {n} bytes but the file has {size}")
        header = json.loads(f.read(n))
    data0 = 8 + n
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _ST_NAMES:
            raise WeightFileError(f"tensor {key!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        t = StoredTensor(path, key, tuple(int(s) for s in info["shape"]), _st_dtypes()[info["dtype"]], data0 + begin)
        if end - begin != t.nbytes or data0 + end > size:
            raise WeightFileError(f"tensor {key!r} runs past the end of the file (truncated?)")
        out[key] = t
    return out


def _npz_index(path: Path) -> dict[str, StoredTensor]:
    import torch

    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise WeightFileError(f"member {info.filename} has npy version {version}")
                shape, fortran, dt = read(member)
                header_len = member.tell()
            if dt.hasobject:
                raise WeightFileError(f"member {info.filename} holds Python objects, not numbers")
            dtype = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                     np.dtype("float64"): torch.float64, np.dtype("int64"): torch.int64,
                     np.dtype("int32"): torch.int32}.get(dt.newbyteorder("=") if dt.byteorder == ">" else dt)
            if dtype is None or dt.byteorder == ">":
                raise WeightFileError(f"member {info.filename} has unsupported dtype {dt}")
            # the member's data start: its local header (30 bytes + name + extra) then the npy header
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len + header_len
            out[key] = StoredTensor(path, key, tuple(int(s) for s in shape), dtype, start, bool(fortran),
                                    info.compress_type != zipfile.ZIP_STORED)
    return out


# One mapping per file, shared by the tensors viewing it; torch's views hold the mapping alive, so
# it closes (and a deleted file's space is freed) when the last tensor over it goes.
_MAPS: "weakref.WeakValueDictionary[Path, mmap.mmap]" = weakref.WeakValueDictionary()


def _mapping(path: Path) -> mmap.mmap:
    key = path.resolve()
    m = _MAPS.get(key)
    if m is None:
        with open(key, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        _MAPS[key] = m
    return m


def mapped(t: StoredTensor) -> torch.Tensor:
    """The tensor as a zero-copy view of the file (stored dtype); compressed npz members are read."""
    import torch

    if t.compressed:
        with np.load(t.path, allow_pickle=False) as z:
            return torch.from_numpy(np.ascontiguousarray(z[t.key]))
    count = int(np.prod(t.shape, dtype=np.int64))
    if count == 0:
        return torch.empty(t.shape, dtype=t.dtype)
    flat = torch.frombuffer(_mapping(t.path), dtype=t.dtype, count=count, offset=t.offset)
    if t.fortran_order:
        return flat.view(t.shape[::-1]).permute(*reversed(range(len(t.shape))))
    return flat.view(t.shape)


def drop_pages(paths) -> None:
    """Hand the pages of these files' mappings back to the kernel (they stay in the page cache and
    are read again on the next touch), so resident memory does not grow with every layer read."""
    for p in paths:
        m = _MAPS.get(Path(p).resolve())
        if m is not None and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED)


def first_non_finite(t: torch.Tensor, chunk_bytes: int = 16 << 20) -> tuple[int, ...] | None:
    """Index of the first NaN/Inf in `t`, or None. Reads `t` a block of rows at a time, so a
    memory-mapped tensor is never copied whole (views such as transposes are fine)."""
    import torch

    if not t.is_floating_point() or t.numel() == 0:
        return None
    if t.dim() == 0:
        return None if bool(torch.isfinite(t)) else ()
    row = max(1, t[0].numel() * t.element_size())
    step = max(1, chunk_bytes // row)
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    for start in range(0, t.shape[0], step):
        block = t[start: start + step]
        # a sum is NaN/Inf when any term is (5x faster than isfinite on bfloat16); a finite block whose
        # sum overflows just gets the exact look below
        if bool(torch.isfinite(block.sum(dtype=acc))):
            continue
        bad = ~torch.isfinite(block)
        if bad.any():
            first = torch.nonzero(bad)[0].tolist()
            return (start + first[0], *first[1:])
    return None
