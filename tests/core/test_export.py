"""Frontend JSON export: format details on a hand-made graph and parity with the
reference_graph.json that circuit-tracer 0.5.0's create_graph_files wrote."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from circuit_studio.core.graph.export import (cantor_pairing, frontend_json, node_ids, write_frontend_json,
                                        write_graph_files)
from circuit_studio.core.graph.pruning import prune_graph

try:
    from .parity_cases import case_json, case_params, reference_frontend, reference_graph
    from .test_pruning import BASIC, INDEX, hand_graph
except ImportError:  # tests/core is not a package: pytest put this folder on sys.path
    from parity_cases import case_json, case_params, reference_frontend, reference_graph
    from test_pruning import BASIC, INDEX, hand_graph

NODE_KEYS = ["node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
             "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"]


def test_cantor_pairing():
    assert [cantor_pairing(0, 7), cantor_pairing(1, 1), cantor_pairing(0, 40)] == [35, 4, 860]


def test_node_records_on_hand_graph():
    g = hand_graph(BASIC)
    result = prune_graph(g, 0.8, 0.98)
    doc = frontend_json(g, result, slug="hand")
    assert list(doc) == ["metadata", "qParams", "nodes", "links"]
    assert doc["metadata"] == {"slug": "hand", "scan": "", "transcoder_list": [], "prompt_tokens": ["<bos>", "cat"],
                               "prompt": "<bos> cat", "node_threshold": 0.8, "schema_version": 1}
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert [n["node_id"] for n in doc["nodes"]] == ["0_5_1", "1_2_1", "E_1_0", "E_7_1", "3_3_1", "3_4_1"]
    assert all(list(n) == NODE_KEYS for n in doc["nodes"])
    f0 = nodes["0_5_1"]
    assert (f0["feature"], f0["layer"], f0["ctx_idx"], f0["feature_type"], f0["jsNodeId"]) == (
        cantor_pairing(0, 5), "0", 1, "cross layer transcoder", "0_5-0")
    assert f0["activation"] == 1.5 and f0["influence"] == pytest.approx(float(result.cumulative_scores[0]))
    f2 = nodes["1_2_1"]
    assert (f2["feature"], f2["layer"]) == (cantor_pairing(1, 2), "1")
    tok = nodes["E_7_1"]
    assert (tok["feature"], tok["layer"], tok["feature_type"], tok["jsNodeId"], tok["activation"]) == (
        1, "E", "embedding", "E_7-1", None)
    l0, l1 = nodes["3_3_1"], nodes["3_4_1"]
    assert (l0["layer"], l0["feature"], l0["jsNodeId"], l0["is_target_logit"], l1["is_target_logit"]) == (
        "3", 3, "L_3-1", True, False)
    assert l0["clerp"] == 'Output "dog" (p=0.700)' and l1["clerp"] == 'Output "sat" (p=0.200)'
    assert l0["influence"] is None and l0["token_prob"] == pytest.approx(0.7)
    links = [(lk["source"], lk["target"]) for lk in doc["links"]]
    # ordered by target node index, then source node index
    assert links == [("E_1_0", "0_5_1"), ("E_7_1", "0_5_1"), ("0_5_1", "1_2_1"), ("E_7_1", "1_2_1"),
                     ("1_2_1", "3_3_1"), ("E_7_1", "3_3_1"), ("1_2_1", "3_4_1"), ("E_7_1", "3_4_1")]
    assert doc["links"][4]["weight"] == 4.0 and doc["links"][6]["weight"] == -1.0  # raw, signed


def test_error_ids_and_decoder():
    g = hand_graph(BASIC)
    ids = node_ids(g)
    assert ids[INDEX["e00"]:INDEX["t0"]] == ["0_0_0", "0_0_1", "0_1_0", "0_1_1"]
    result = prune_graph(g, 1.0, 1.0)
    doc = frontend_json(g, result, slug="s", scan="my-scan", node_threshold=0.5,
                        tokenizer_decode=lambda ids: " ".join(f"<{i}>" for i in ids))
    assert doc["metadata"]["prompt"] == "<1> <7>" and doc["metadata"]["prompt_tokens"] == ["<1>", "<7>"]
    assert doc["metadata"]["scan"] == "my-scan" and doc["metadata"]["node_threshold"] == 0.5
    err = next(n for n in doc["nodes"] if n["feature_type"] == "mlp reconstruction error")
    assert (err["node_id"], err["layer"], err["jsNodeId"], err["feature"]) == ("0_0_1", "0", "0_1-0", -1)


def test_only_kept_nodes_touched_by_links_are_listed():
    g = hand_graph(BASIC)
    result = prune_graph(g)
    node_mask = result.node_mask.copy()
    node_mask[INDEX["f3"]] = True  # kept, but no kept edge touches it
    doc = frontend_json(g, replace(result, node_mask=node_mask), slug="z")
    assert "1_7_1" not in {n["node_id"] for n in doc["nodes"]}
    assert len(doc["nodes"]) == int(result.node_mask.sum())


def test_degenerate_graph_lists_every_entry_like_the_reference():
    g = hand_graph(BASIC, probs=(0.0, 0.0))  # no influence anywhere: the cuts are 0, everything is kept
    doc = frontend_json(g, prune_graph(g), slug="z")
    assert len(doc["nodes"]) == 12
    assert len(doc["links"]) == 12 * 12  # zero-weight entries included, as circuit-tracer 0.5.0 would


def test_write_graph_files(tmp_path):
    g = hand_graph(BASIC)
    result = prune_graph(g)
    path = write_graph_files(tmp_path, g, result, slug="one", scan="s1")
    write_graph_files(tmp_path, g, result, slug="two", scan="s2")
    write_graph_files(tmp_path, g, result, slug="one", scan="s3")  # replaces its index entry
    assert path == tmp_path / "one.json"
    assert json.loads(path.read_text())["metadata"]["scan"] == "s3"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [(m["slug"], m["scan"]) for m in index["graphs"]] == [("two", "s2"), ("one", "s3")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph-metadata.json", "one.json", "two.json"]
    with pytest.raises(ValueError, match="file name"):
        write_graph_files(tmp_path, g, result, slug="../escape")


def _tokenizer_decode(case):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(case / "model" / "tokenizer.json"))
    return lambda ids: tok.decode(list(ids), skip_special_tokens=False)


@pytest.mark.parametrize("case", case_params())
def test_frontend_json_parity(case, tmp_path):
    g, params, ref = reference_graph(case), case_json(case), reference_frontend(case)
    result = prune_graph(g, params["node_threshold"], params["edge_threshold"])
    doc = write_frontend_json(tmp_path / "g.json", g, result, slug=case.name, node_threshold=params["node_threshold"],
                              tokenizer_decode=_tokenizer_decode(case))
    assert json.loads((tmp_path / "g.json").read_text()) == json.loads(json.dumps(doc))
    assert doc["metadata"] == ref["metadata"]
    assert doc["qParams"] == ref["qParams"]

    def key(n):  # ids collide between error and layer-0 feature nodes
        return n["node_id"], n["layer"], n["feature_type"]

    assert [key(n) for n in doc["nodes"]] == [key(n) for n in ref["nodes"]]
    for ours, theirs in zip(doc["nodes"], ref["nodes"]):
        assert list(ours) == list(theirs)
        for field, value in theirs.items():
            if isinstance(value, float):
                assert ours[field] == pytest.approx(value, abs=1e-5, rel=1e-4), (key(theirs), field)
            else:
                assert ours[field] == value, (key(theirs), field)
    assert [(lk["source"], lk["target"]) for lk in doc["links"]] == [(lk["source"], lk["target"]) for lk in ref["links"]]
    np.testing.assert_allclose([lk["weight"] for lk in doc["links"]], [lk["weight"] for lk in ref["links"]],
                               atol=1e-4, rtol=0)
