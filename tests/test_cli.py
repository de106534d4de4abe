"""`circuit-studio attribute` end to end: the files it writes, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuit_studio.cli import main
from circuit_studio.core.graph.attribution_graph import load_graph

CASE = Path(__file__).resolve().parent / "fixtures" / "parity_extra" / "llama_relu_skip"
PROMPT = json.loads((CASE / "case.json").read_text())["prompt"]


def _run(tmp_path, *extra, prompt=PROMPT, model=CASE / "model", transcoders=CASE / "transcoders"):
    out = tmp_path / "graph.json"
    argv = ["attribute", "--model", str(model), "--transcoders", str(transcoders), "--prompt", prompt,
            "--out", str(out), "--batch-size", "64", *extra]
    return main(argv), out


def test_writes_the_frontend_json_and_the_reference_npz_layout(tmp_path, capsys):
    code, out = _run(tmp_path, "--npz", str(tmp_path / "graph.npz"))
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    ref = np.load(CASE / "reference.npz")
    with np.load(tmp_path / "graph.npz") as z:
        for key in ("adjacency_matrix", "active_features", "activation_values", "selected_features",
                    "input_tokens", "logit_token_ids", "logit_probabilities", "node_mask", "edge_mask"):
            assert z[key].shape == ref[key].shape, key
        np.testing.assert_array_equal(z["edge_mask"], ref["edge_mask"])
        np.testing.assert_allclose(z["adjacency_matrix"], ref["adjacency_matrix"], atol=1e-5)
    assert load_graph(tmp_path / "graph.npz").n_nodes == ref["adjacency_matrix"].shape[0]
    assert len(doc["links"]) == int(ref["edge_mask"].sum())
    assert "replacement" in capsys.readouterr().out


def test_feature_budget_flag(tmp_path):
    code, _ = _run(tmp_path, "--npz", str(tmp_path / "g.npz"), "--max-feature-nodes", "100")
    assert code == 0
    assert load_graph(tmp_path / "g.npz").n_features == 100


@pytest.mark.parametrize("args, kwargs, message", [
    ((), dict(model=Path("/nonexistent/model")), "does not exist"),
    ((), dict(transcoders=CASE / "model"), "config.yaml"),
    ((), dict(prompt="  "), "prompt is empty"),
    ((), dict(prompt="the " * 200), "at most 128"),
    (("--node-threshold", "1.5"), {}, "between 0 and 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, kwargs, message):
    code, out = _run(tmp_path, *args, **kwargs)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("circuit-studio: error:") and message in err[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_folder_missing(tmp_path, capsys):
    code = main(["attribute", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
                 "--prompt", PROMPT, "--out", str(tmp_path / "no" / "g.json")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_console_entry_point_runs_as_a_module(tmp_path):
    res = subprocess.run([sys.executable, "-m", "circuit_studio.cli", "attribute", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "--max-feature-nodes" in res.stdout


def test_intervene_writes_before_and_after(tmp_path):
    ref = json.loads((CASE / "reference_interventions.json").read_text())
    run = next(r for r in ref["runs"] if r["name"] == "zero_all_three")
    sets = [f"{layer}:{pos}:{feat}={value}" for layer, pos, feat, value in run["interventions"]]
    out = tmp_path / "iv.json"
    argv = ["intervene", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
            "--prompt", PROMPT, "--json", str(out), "--generate", "3"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["after"][0]["id"] == run["top5"][0][0]
    assert doc["before"][0]["id"] == ref["clean"]["top5"][0][0]
    assert len(doc["interventions"]) == 3 and doc["generated_steered"]


@pytest.mark.parametrize("spec, message", [("1:2:3", "LAYER:POS:FEATURE=VALUE"), ("1:2:3=x", "not a number"),
                                           ("1:99:3=0", "outside the prompt"), ("1:2:9999=0", "out of range")])
def test_intervene_bad_input(tmp_path, capsys, spec, message):
    argv = ["intervene", "--model", str(CASE / "model"), "--transcoders", str(CASE / "transcoders"),
            "--prompt", PROMPT, "--json", str(tmp_path / "iv.json"), "--set", spec]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "iv.json").exists()
