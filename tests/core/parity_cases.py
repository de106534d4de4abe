"""Loading the circuit-tracer parity fixtures (shared/parity/cases/*) for tests.

The fixtures live beside the repository (`<repo>/../shared/parity`); set CIRCUIT_STUDIO_PARITY_DIR
to use another copy. Extra cases made with the same harness (a feature budget, Qwen3, skip
transcoders, ReLU) live in `tests/fixtures/parity_extra`. Tests parametrise over `case_params()`, which yields one skipped parameter
with the reason when the fixtures are absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from circuit_studio.core.graph.attribution_graph import AttributionGraph, AttributionParams
from circuit_studio.core.transcoders.loading import load_transcoders

VOCAB_SIZE = 65  # every case uses the same tiny WordLevel vocabulary
_DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "parity"


def parity_root() -> Path | None:
    root = Path(os.environ.get("CIRCUIT_STUDIO_PARITY_DIR", _DEFAULT_ROOT))
    return root if (root / "cases").is_dir() else None


EXTRA_CASES = Path(__file__).resolve().parents[1] / "fixtures" / "parity_extra"  # made by us, see its README


def case_dirs() -> list[Path]:
    """The shared reference cases (when present) and the extra ones kept in this repo."""
    root = parity_root()
    shared = sorted(p for p in (root / "cases").iterdir() if (p / "reference.npz").is_file()) if root else []
    return shared + sorted(p for p in EXTRA_CASES.iterdir() if (p / "reference.npz").is_file())


def case_params() -> list:
    """`pytest.mark.parametrize` values: one per case, or one skipped entry saying why there are none."""
    cases = case_dirs()
    if cases:
        return [pytest.param(c, id=c.name) for c in cases]
    reason = f"parity fixtures not found (looked in {Path(os.environ.get('CIRCUIT_STUDIO_PARITY_DIR', _DEFAULT_ROOT))})"
    return [pytest.param(None, id="no-parity-cases", marks=pytest.mark.skip(reason=reason))]


@lru_cache(maxsize=None)
def _arrays(case_dir: Path) -> dict[str, np.ndarray]:
    with np.load(case_dir / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for a in arrays.values():
        a.flags.writeable = False  # shared between tests
    return arrays


def reference_arrays(case_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of reference.npz (read-only)."""
    return _arrays(Path(case_dir))


@lru_cache(maxsize=None)
def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def case_json(case_dir: Path) -> dict:
    return _json(Path(case_dir) / "case.json")


def reference_json(case_dir: Path) -> dict:
    return _json(Path(case_dir) / "reference.json")


def reference_frontend(case_dir: Path) -> dict:
    """reference_graph.json: what circuit-tracer's create_graph_files wrote."""
    return _json(Path(case_dir) / "reference_graph.json")


def reference_graph(case_dir: Path) -> AttributionGraph:
    """The reference's unpruned graph as an AttributionGraph, straight from reference.npz."""
    case_dir = Path(case_dir)
    z, case, ref = reference_arrays(case_dir), case_json(case_dir), reference_json(case_dir)
    front = reference_frontend(case_dir)["metadata"]
    params = AttributionParams(**{k: case[k] for k in ("max_n_logits", "desired_logit_prob", "batch_size",
                                                        "max_feature_nodes", "update_interval")})
    return AttributionGraph(
        prompt=case["prompt"],
        input_tokens=z["input_tokens"],
        token_strings=tuple(front["prompt_tokens"]),
        active_features=z["active_features"],
        activation_values=z["activation_values"],
        selected_features=z["selected_features"],
        logit_token_ids=z["logit_token_ids"],
        logit_probabilities=z["logit_probabilities"],
        logit_tokens=tuple(tok for tok, _ in ref["logit_targets"]),
        adjacency_matrix=z["adjacency_matrix"],
        n_layers=int(case["dims"]["n_layers"]),
        vocab_size=VOCAB_SIZE,
        params=params,
        model_name=case.get("arch", ""),
        transcoder_name=front["scan"],
    )


@contextmanager
def hf_home(folder: Path):
    """Point the Hugging Face cache at `folder` (HF_HOME) for the duration."""
    saved = {k: os.environ.pop(k, None) for k in ("HF_HOME", "HF_HUB_CACHE")}
    os.environ["HF_HOME"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("HF_HOME")
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


def load_case_transcoders(case_dir: Path, **kw):
    """The case's transcoders, referenced as case.json's `transcoder_source` says: a local
    config.yaml, or a Hugging Face reference resolved from the case's own hub cache."""
    case_dir = Path(case_dir)
    source = case_json(case_dir).get("transcoder_source") or {"type": "local_config",
                                                               "config": "transcoders/config.yaml"}
    if source["type"] == "hf_cache":
        with hf_home(case_dir / source["hf_home"]):
            return load_transcoders(source["hf_ref"], **kw)
    return load_transcoders(case_dir / source["config"], **kw)


def token_edges_rescaled(case_dir: Path) -> bool:
    """Gemma-3 cases: circuit-tracer 0.5.0 reports token edges as 1/sqrt(d) of the token's effect
    (parity README, "Gemma-3 models"); Circuit Studio reports the effect itself."""
    return case_json(case_dir).get("arch") == "gemma3"


def expected_graph(case_dir: Path) -> AttributionGraph:
    """The reference graph as Circuit Studio must reproduce it: for Gemma-3, with the token-source
    columns multiplied by sqrt(d_model); otherwise exactly circuit-tracer's."""
    graph = reference_graph(case_dir)
    if not token_edges_rescaled(case_dir):
        return graph
    adj = graph.adjacency_matrix.copy()
    tok = slice(graph.token_offset, graph.token_offset + graph.n_pos)
    adj[:, tok] *= math.sqrt(case_json(case_dir)["dims"]["d_model"])
    return dataclasses.replace(graph, adjacency_matrix=adj)
