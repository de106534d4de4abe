"""Importing circuit-tracer / Neuronpedia graph JSON (core.graph_import) and exports that carry the analysis."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.core.errors import GraphFileError
from circuit_studio.core.graph.export import INDEX_FILE, analysis_options, dump_frontend_json, frontend_json
from circuit_studio.core.graph.import_json import graph_from_json, is_imported, load_graph_json

from parity_cases import parity_root

ROOT = parity_root()
REFERENCES = sorted((ROOT / "cases").glob("*/reference_graph.json")) if ROOT else []
needs_refs = pytest.mark.skipif(not REFERENCES, reason="shared parity cases not present")


def _export(imported_or_analysis, slug):
    a = imported_or_analysis if isinstance(imported_or_analysis, Analysis) else imported_or_analysis.analysis()
    return frontend_json(a.graph, a.pruned, slug=slug, **analysis_options(a))


def _neuronpedia_style(doc: dict) -> dict:
    """DERIVED test input (not a real Neuronpedia download): a circuit-tracer 0.5.0 reference file with its
    error nodes renamed to Neuronpedia's newer convention, node_id "{layer}_-1_{pos}" and jsNodeId
    "{layer}_-1-{pos}", in the nodes, the links and qParams."""
    doc = copy.deepcopy(doc)
    rename = {}
    for n in doc["nodes"]:
        if n["feature_type"] == "mlp reconstruction error":
            new = f"{n['layer']}_-1_{n['ctx_idx']}"
            rename[n["node_id"]] = new
            n["node_id"], n["jsNodeId"] = new, f"{n['layer']}_-1-{n['ctx_idx']}"
    for link in doc["links"]:
        link["source"] = rename.get(link["source"], link["source"])
        link["target"] = rename.get(link["target"], link["target"])
    q = doc["qParams"]
    q["pinnedIds"] = [rename.get(i, i) for i in q["pinnedIds"]]
    q["supernodes"] = [[s[0], *(rename.get(i, i) for i in s[1:])] for s in q["supernodes"]]
    return doc


@needs_refs
@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.parent.name)
def test_every_reference_imports_and_exports_back_identically(path):
    ref = json.loads(path.read_text())
    imported = load_graph_json(path)
    g = imported.graph
    assert is_imported(g) and imported.id_style == "circuit-tracer"
    kinds = {}
    for n in ref["nodes"]:
        kinds[n["feature_type"]] = kinds.get(n["feature_type"], 0) + 1
    assert g.n_features == kinds.get("cross layer transcoder", 0)
    assert g.n_pos == len(ref["metadata"]["prompt_tokens"]) and g.n_logits == kinds["logit"]
    # node order contract: features lexicographic, then all L x P errors, P tokens, K logits
    assert (np.diff(g.active_features[:, 0] * 10**6 + g.active_features[:, 1] * 10**3 + g.active_features[:, 2]) > 0).all()
    assert g.n_nodes == g.n_features + (g.n_layers + 1) * g.n_pos + g.n_logits
    # the export of the import is the reference, node for node, link for link (floats exact)
    assert _export(imported, ref["metadata"]["slug"]) == ref
    assert dump_frontend_json(_export(imported, ref["metadata"]["slug"])) == dump_frontend_json(ref)


@needs_refs
def test_neuronpedia_error_ids_import_to_the_same_graph():
    path = next(p for p in REFERENCES if p.parent.name == "gemma3_plt")
    ref = json.loads(path.read_text())
    ct = load_graph_json(path)
    npd = graph_from_json(_neuronpedia_style(ref))
    assert npd.id_style == "neuronpedia"
    assert np.array_equal(npd.graph.adjacency_matrix, ct.graph.adjacency_matrix)
    assert _export(npd, ref["metadata"]["slug"]) == ref  # written back in circuit-tracer's convention


@needs_refs
def test_pins_supernodes_and_clerps_are_restored_and_round_trip(tmp_path):
    path = next(p for p in REFERENCES if p.parent.name == "gemma3_plt")
    ref = json.loads(path.read_text())
    feats = [n for n in ref["nodes"] if n["feature_type"] == "cross layer transcoder"]
    err = next(n for n in ref["nodes"] if n["feature_type"] == "mlp reconstruction error")
    doc = _neuronpedia_style(ref)
    err_np = f"{err['layer']}_-1_{err['ctx_idx']}"
    doc["qParams"]["pinnedIds"] = [feats[0]["node_id"], err_np, feats[1]["node_id"], feats[2]["node_id"]]
    doc["qParams"]["supernodes"] = [["capital cities", feats[1]["node_id"], feats[2]["node_id"]]]
    for n in doc["nodes"]:
        if n["node_id"] == feats[0]["node_id"]:
            n["clerp"] = "Texas things"
    imported = graph_from_json(doc)
    a = imported.analysis()
    ids = [a.info(n) for n in a.pinned]
    assert [i.kind.value for i in ids] == ["feature", "error", "feature", "feature"]
    assert [(s.name, len(s.members)) for s in a.supernodes] == [("capital cities", 2)]
    assert a.label_of(a.pinned[0]) == "Texas things"
    first = _export(a, "x")
    assert first["qParams"]["pinnedIds"] == [feats[0]["node_id"], err["node_id"], feats[1]["node_id"],
                                             feats[2]["node_id"]]
    assert first["qParams"]["supernodes"] == [["capital cities", feats[1]["node_id"], feats[2]["node_id"]]]
    assert [n["clerp"] for n in first["nodes"] if n["node_id"] == feats[0]["node_id"]] == ["Texas things"]
    p = tmp_path / "x.json"
    p.write_text(dump_frontend_json(first))
    assert _export(load_graph_json(p), "x") == first  # export -> import -> export is lossless


@needs_refs
def test_imported_analysis_is_read_only_pruning():
    path = next(p for p in REFERENCES if p.parent.name == "llama_clt")
    a = load_graph_json(path).analysis()
    before = a.pruned
    a.set_thresholds(0.3, 0.5)  # the pruned-away part is unknown: the file's pruning stays
    assert a.pruned is before and a.imported


def test_malformed_files_raise_graph_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GraphFileError):
        load_graph_json(bad)
    with pytest.raises(GraphFileError):
        graph_from_json({"nodes": "x"})
    with pytest.raises(GraphFileError, match="not among the nodes"):
        graph_from_json({"metadata": {}, "qParams": {}, "nodes": [], "links": [{"source": "a", "target": "b",
                                                                                "weight": 1.0}]})
    with pytest.raises(GraphFileError):
        load_graph_json(tmp_path / "missing.json")


def test_cli_attribute_writes_the_graph_index(tmp_path):
    from circuit_studio.cli import main

    case = Path(__file__).resolve().parents[1] / "fixtures" / "parity_extra" / "llama_relu_skip"
    prompt = json.loads((case / "case.json").read_text())["prompt"]
    out = tmp_path / "g.json"
    (tmp_path / INDEX_FILE).write_text(json.dumps({"graphs": [{"slug": "other"}, {"slug": "mine", "old": 1}]}))
    assert main(["attribute", "--model", str(case / "model"), "--transcoders", str(case / "transcoders"),
                 "--prompt", prompt, "--out", str(out), "--slug", "mine", "--batch-size", "64"]) == 0
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    doc = json.loads(out.read_text())
    assert index["graphs"] == [{"slug": "other"}, doc["metadata"]]
    assert is_imported(load_graph_json(out).graph)


@needs_refs
def test_an_imported_graph_survives_a_session_file(tmp_path):
    from circuit_studio.core.session.records import Session
    from circuit_studio.core.session.store import load_session, save_session

    path = next(p for p in REFERENCES if p.parent.name == "gemma3_plt")
    ref = json.loads(path.read_text())
    a = load_graph_json(path).analysis()
    feats = [n for n in range(a.graph.n_nodes) if a.pruned.node_mask[n] and a.graph.kind_of(n).value == "feature"]
    a.toggle_pin(feats[0])
    a.set_label(feats[0], "kept")
    save_session(Session.from_analysis(a), tmp_path / "s.cs-session")
    b = load_session(tmp_path / "s.cs-session").analysis()
    assert b.imported and b.pinned == a.pinned and b.labels == a.labels
    assert _export(b, ref["metadata"]["slug"]) == _export(a, ref["metadata"]["slug"])
