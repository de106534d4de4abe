"""Helpers of the scale tests (imported by name: tests/scale is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_studio.core.synthetic import WORDS

N_FEATURES = 48
CONTEXT = 16
PROMPTS = ("the capital of Texas is", "Alice and Bob are in the", "Paris is in", "one plus two equals")


@dataclass(frozen=True)
class Tiny:
    model: Path
    transcoders: Path
    corpus: Path
    bundle: object  # loaded as every worker loads it: load_model(model) + load_transcoders(transcoders)
    tc: object
    windows: torch.Tensor


def corpus_lines(seed: int = 0, n: int = 80) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def index_tables(path: Path) -> dict[str, list[tuple]]:
    """Every table of a feature index, rows in primary-key order; meta without its creation time."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        conn.close()
    out["meta"] = [r for r in out["meta"] if r[0] != "created"]
    return out


def assert_same_index(a: Path, b: Path) -> None:
    """Table by table, row by row (meta without `created`)."""
    ta, tb = index_tables(a), index_tables(b)
    assert sorted(ta) == sorted(tb)
    for table in ta:
        assert len(ta[table]) == len(tb[table]), table
        for i, (ra, rb) in enumerate(zip(ta[table], tb[table])):
            assert ra == rb, f"{table} row {i} differs: {ra[:3]}... vs {rb[:3]}..."
