"""Custom attribution targets: logit differences built as circuit-tracer's demo builds them, mixed
lists, and the mistakes a user can make. (The parity tests cover ids and given vectors.)"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from circuit_studio.commands.target_options import add_target_options, targets_from_args
from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.errors import CircuitStudioError, PromptError
from circuit_studio.core.graph.attribution_graph import AttributionParams
from circuit_studio.core.model.loading import load_model
from circuit_studio.core.attribution.targets import CustomTarget, LogitDiff
from parity_cases import case_dirs, expected_graph, load_case_transcoders

DIFF_CASES = [c for c in case_dirs() if c.name.startswith("targets_logitdiff_")]


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.name for c in DIFF_CASES])
def test_logit_difference_reproduces_circuit_tracers_custom_target(case):
    spec = json.loads((case / "case.json").read_text())
    built = spec["targets"]["custom"][0]
    bundle = load_model(case / "model", device="cpu")
    graph = attribute(spec["prompt"], bundle, load_case_transcoders(case), AttributionParams(batch_size=64),
                      targets=[LogitDiff(built["construction"]["token_a"], built["construction"]["token_b"])])
    assert graph.logit_tokens == (built["label"],)
    assert graph.logit_probabilities[0] == pytest.approx(built["probability"], rel=1e-5)
    np.testing.assert_allclose(graph.adjacency_matrix, expected_graph(case).adjacency_matrix, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def llama():
    case = next(c for c in case_dirs() if c.name == "llama_plt")
    return case, load_model(case / "model", device="cpu"), load_case_transcoders(case)


def test_mixed_targets_keep_their_order_and_rows_are_linear(llama):
    case, bundle, tc = llama
    prompt = json.loads((case / "case.json").read_text())["prompt"]
    a, b = bundle.tokenizer.encode("nine", add_special_tokens=False)[0], 16
    graph = attribute(prompt, bundle, tc, targets=[a, "are", LogitDiff(a, b)])
    V = bundle.arch.unembed.shape[0]
    assert graph.logit_token_ids.tolist() == [a, 16, V + 2]
    rows = graph.adjacency_matrix[graph.logit_offset:]
    np.testing.assert_allclose(rows[2], rows[0] - rows[1], atol=2e-5)  # a row is linear in its vector


@pytest.mark.parametrize("targets,needle", [
    ([], "empty"), ([10 ** 6], "outside the vocabulary"), (["nine are"], "not one"),
    ([CustomTarget("x", 0.5, torch.zeros(3))], "not [64]"),
    ([CustomTarget("x", 0.5, torch.full((64,), float("nan")))], "NaN"), ([1.5], "not a token id"),
])
def test_bad_targets_say_what_is_wrong(llama, targets, needle):
    case, bundle, tc = llama
    with pytest.raises(PromptError, match=needle.replace("[", r"\[")):
        attribute("the capital of", bundle, tc, targets=targets)


def parse(*argv: str):
    p = argparse.ArgumentParser()
    add_target_options(p)
    return p.parse_args(list(argv))


def test_flags_build_targets_in_order(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(64, dtype=np.float32))
    t = targets_from_args(parse("--target-ids", "4,5", "--target-tokens", " Austin", "--target-vector",
                                str(tmp_path / "v.npy"), "--target-label", "ones", "--target-weight", "0.5",
                                "--target-diff", " Austin, Sacramento", "--target-diff", "7,8"), d_model=64)
    assert t[:3] == [4, 5, " Austin"] and t[3].label == "ones" and t[3].probability == 0.5
    assert t[4:] == [LogitDiff(" Austin", " Sacramento"), LogitDiff(7, 8)]
    assert targets_from_args(parse()) is None


@pytest.mark.parametrize("argv,needle", [
    (["--target-ids", "4,x"], "not a list of whole numbers"),
    (["--target-ids", ","], "empty"),
    (["--target-diff", "A"], "not two tokens"),
    (["--target-vector", "v.npy"], "1 --target-vector, 0 --target-label"),
    (["--target-vector", "missing.npy", "--target-label", "a", "--target-weight", "1"], "Cannot read"),
    (["--target-vector", "v.npy", "--target-label", "a", "--target-weight", "1"], "size 3 but the model's d_model is 64"),
    (["--target-vector", "v.npy", "--target-label", "a", "--target-weight", "nan"], "not a finite number"),
])
def test_bad_flags_say_what_to_do(tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "v.npy", np.ones(3, dtype=np.float32))
    with pytest.raises(CircuitStudioError, match=needle) as info:
        targets_from_args(parse(*argv), d_model=64)
    assert info.value.hint


IDS_CASE = next((c for c in case_dirs() if c.name == "targets_ids_llama_plt"), None)


@pytest.mark.skipif(IDS_CASE is None, reason="parity fixtures not found")
def test_attribute_command_writes_circuit_tracers_logit_nodes(tmp_path):
    from circuit_studio.cli import main

    spec = json.loads((IDS_CASE / "case.json").read_text())
    out = tmp_path / "g.json"
    ids = ",".join(map(str, spec["targets"]["token_ids"]))
    assert main(["attribute", "--model", str(IDS_CASE / "model"), "--transcoders", str(IDS_CASE / "transcoders"),
                 "--prompt", spec["prompt"], "--out", str(out), "--max-feature-nodes", "0", "--batch-size", "64",
                 "--target-ids", ids, "--device", "cpu"]) == 0
    ours = {n["node_id"]: n for n in json.loads(out.read_text())["nodes"] if n["feature_type"] == "logit"}
    ref = {n["node_id"]: n for n in json.loads((IDS_CASE / "reference_graph.json").read_text())["nodes"]
           if n["feature_type"] == "logit"}
    assert list(ours) == list(ref)
    for nid, n in ref.items():
        for key in ("feature", "layer", "ctx_idx", "clerp", "is_target_logit", "jsNodeId"):
            assert ours[nid][key] == n[key], (nid, key)
        assert ours[nid]["token_prob"] == pytest.approx(n["token_prob"], rel=1e-5)
