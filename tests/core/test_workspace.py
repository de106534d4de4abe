"""The workspace and its steering model, without Qt: graphs bound to their own resources, labels keyed by
transcoder set, the session written from the model alone (and read back through the session store),
undo over analysis and steering, and which changes count as the user's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from parity_cases import EXTRA_CASES, case_dirs, reference_graph

from circuit_studio.core.session.analysis import Aspect
from circuit_studio.core.interventions.intervene import (SteeringRun, compute_continuation, compute_update, generate,
                                               intervene)
from circuit_studio.core.session.records import CanvasView, transcoder_identity
from circuit_studio.core.session.store import load_session, save_session
from circuit_studio.core.interventions.steering import NO_MODEL, ResultChanged, RowChanged, SteeringError
from circuit_studio.core.session.workspace import Binding, ResourceRef, Workspace, transcoders_not_loaded
from circuit_studio.core.session.workspace_events import (AnalysisChanged, CurrentGraphChanged, GraphAdded, ViewChanged,
                                                          WindowStateChanged)


@pytest.fixture(scope="module")
def graph():
    return reference_graph(case_dirs()[0])


def _stand_ins(graph, name: str):
    """Loaded-resource stand-ins: what the steering reads of a model, transcoder set and feature index."""
    n_features = int(graph.active_features[:, 2].max()) + 1
    model = ResourceRef("model", f"/m/{name}", f"fh1:model-{name}", f"model {name}")
    tc = ResourceRef("transcoders", f"/t/{name}", f"fh1:tc-{name}", f"tc-{name}", {"kind": name})
    index = ResourceRef("index", f"/i/{name}.sqlite", f"fh1:index-{name}", f"{name}.sqlite")
    objects = (SimpleNamespace(n_zeroed_positions=1),
               SimpleNamespace(n_layers=graph.n_layers, n_features=n_features),
               SimpleNamespace(label=lambda l, f, name=name: f"{name} label {l}/{f}",
                               layer_statistics=lambda l: {"max_act": np.full(n_features, 50.0)}))
    return Binding(model, tc, index), objects


def _workspace(graph, *names):
    ws = Workspace()
    bindings = []
    for name in names:
        binding, objects = _stand_ins(graph, name)
        for ref, obj in zip((binding.model, binding.transcoders, binding.index), objects):
            ws.add_resource(ref, obj)
        bindings.append(binding)
    return ws, bindings


def _feature(graph) -> int:
    return int(np.argmax(np.abs(graph.adjacency_matrix[graph.logit_offset, :graph.n_features])))


def test_each_graph_is_shown_with_its_own_resources_and_labels(graph):
    ws, (plt, clt) = _workspace(graph, "plt", "clt")
    events = []
    ws.events.connect(events.append)
    g1 = ws.add_graph(graph, plt)
    node = _feature(graph)
    layer, _, feature, _ = graph.feature_of(node)
    assert ws.analysis.label_of(node) == f"plt label {layer}/{feature}"
    ws.analysis.set_label(node, "Texas")
    g2 = ws.add_graph(graph, clt)  # the same prompt, other transcoders
    assert ws.analysis.label_of(node) == f"clt label {layer}/{feature}", "another set's labels never show"
    assert ws.live().transcoders is ws.resource(clt.transcoders)
    ws.set_current(g1)
    assert ws.analysis.label_of(node) == "Texas" and ws.live().index is ws.resource(plt.index)
    assert ws.labels == {plt.label_key: {(layer, feature): "Texas"}, clt.label_key: {}}
    assert [type(e) for e in events if isinstance(e, (GraphAdded, CurrentGraphChanged))] == \
        [GraphAdded, CurrentGraphChanged, GraphAdded, CurrentGraphChanged, CurrentGraphChanged]
    label_events = [e for e in events if isinstance(e, AnalysisChanged) and e.aspect is Aspect.LABELS]
    assert label_events and all(e.modifies_session for e in label_events)
    d1, d2 = ws.describe(g1), ws.describe(g2)
    assert "— tc-plt (per-layer) ·" in d1.menu_text and "— tc-clt (cross-layer) ·" in d2.menu_text
    assert d1.transcoders == "tc-plt (per-layer)" and d1.index == "plt.sqlite" and d2.missing == ()


def test_a_graph_whose_transcoders_are_not_loaded_is_shown_as_saved(graph):
    ws, (plt,) = _workspace(graph, "plt")
    other, _ = _stand_ins(graph, "gone")
    ws.add_graph(graph, Binding(plt.model, other.transcoders, other.index))
    live = ws.live()
    assert live.bundle is not None and live.transcoders is None and live.missing == ("transcoders", "index")
    assert ws.steering.context.unavailable == transcoders_not_loaded(other.transcoders.label)
    node = _feature(graph)
    layer, _, feature, _ = graph.feature_of(node)
    assert ws.analysis.label_of(node) == f"L{layer} #{feature}", "no one else's labels: the plain name"
    ws.steering.add_node(node)  # rows can still be edited
    with pytest.raises(SteeringError, match="not loaded"):
        ws.steering.add_feature(0, 1, 2)
    ws.add_resource(other.transcoders, SimpleNamespace(n_layers=graph.n_layers, n_features=10 ** 6))
    assert ws.steering.context.unavailable == "" and ws.live().missing == ("index",)
    ws2 = Workspace()
    ws2.add_graph(graph)
    assert ws2.steering.context.unavailable == NO_MODEL


def test_the_session_is_written_from_the_workspace_and_read_back(graph, tmp_path):
    ws, (plt, clt) = _workspace(graph, "plt", "clt")
    g1 = ws.add_graph(graph, plt)
    node = _feature(graph)
    ws.analysis.toggle_pin(node)
    ws.analysis.set_label(node, "capital")
    ws.steering.add_node(node)
    ws.steering.set_multiple(0, 0.5)
    ws.set_view(CanvasView(0, 10, -1, 5))
    g2 = ws.add_graph(graph, clt)
    ws.steering.add_node(node)
    ws.set_window_state(b"layout")
    ws.set_prompt(graph.prompt)
    session = ws.to_session()
    r1, r2 = session.graph(g1), session.graph(g2)
    assert r1.transcoders.content_hash == "fh1:tc-plt" and r2.transcoders.content_hash == "fh1:tc-clt"
    assert r1.feature_index.content_hash == "fh1:index-plt" and r1.model.path == "/m/plt"
    assert session.graph_labels(g1) == {graph.feature_of(node)[::2]: "capital"} and session.graph_labels(g2) == {}
    assert r1.pinned == (node,) and r1.view == CanvasView(0, 10, -1, 5)
    assert r1.interventions[-1].options["pane"]["rows"][0]["multiple"] == 0.5
    assert session.current_graph == g2 and session.window_state == b"layout"

    save_session(session, tmp_path / "s.cs-session")
    again = Workspace()
    again.load_session(load_session(tmp_path / "s.cs-session"))
    assert again.current_id == g2 and [r.key for r in again.steering.rows] == [("n", node)]
    assert again.entry(g1).binding.transcoders.identity == "fh1:tc-plt"
    assert again.live().missing == ("model", "transcoders", "index"), "nothing loaded yet: shown as saved"
    again.set_current(g1)
    assert again.analysis.pinned == [node] and again.analysis.labels == {graph.feature_of(node)[::2]: "capital"}
    assert [(r.key, r.multiple) for r in again.steering.rows] == [(("n", node), 0.5)]
    assert again.view == CanvasView(0, 10, -1, 5) and again.window_state == b"layout"


def test_undo_covers_the_analysis_and_the_steering(graph):
    ws, (plt,) = _workspace(graph, "plt")
    ws.add_graph(graph, plt)
    node = _feature(graph)
    ws.analysis.toggle_pin(node)
    ws.steering.add_node(node)
    ws.steering.set_multiple(0, 0.0)
    assert ws.history.undo_description.startswith("Steer ")
    assert ws.undo() and ws.steering.rows[0].multiple == 1.0
    assert ws.history.undo_description.startswith("Add ")
    assert ws.undo() and ws.steering.rows == ()
    assert ws.undo() and ws.analysis.pinned == []
    assert ws.redo() and ws.analysis.pinned == [node]


def test_only_the_users_changes_modify_the_session(graph):
    ws, (plt,) = _workspace(graph, "plt")
    ws.add_graph(graph, plt)
    seen = []
    ws.events.connect(seen.append)
    ws.set_view(CanvasView(0, 1, 0, 1))
    ws.set_window_state(b"x")
    ws.set_prompt("typed")
    ws.steering.set_result(None)
    assert [type(e) for e in seen] == [ViewChanged, WindowStateChanged, type(seen[2]), ResultChanged]
    assert not any(e.modifies_session for e in seen)
    seen.clear()
    ws.steering.add_node(_feature(graph))
    ws.steering.set_multiple(0, 2.0)
    assert any(isinstance(e, RowChanged) and e.modifies_session for e in seen)


def test_a_steering_update_is_core_intervene_exactly():
    from circuit_studio.core.model.loading import load_model
    from circuit_studio.core.transcoders.loading import load_transcoders

    case = EXTRA_CASES / "llama_relu_skip"
    bundle, tc, graph = load_model(case / "model", device="cpu"), load_transcoders(case / "transcoders"), \
        reference_graph(case)
    ws = Workspace()
    binding = Binding(ws.register("model", bundle), ws.register("transcoders", tc))
    ws.add_graph(graph, binding)
    s = ws.steering
    s.add_node(_feature(graph))
    s.set_multiple(0, 0.0)
    s.set_n_tokens(4)
    run = SteeringRun(bundle, tc, graph)
    update = compute_update(run, tuple(s.interventions()), s.freeze_attention, s.n_tokens, s.version)
    ids = torch.tensor(np.asarray(graph.input_tokens, dtype=np.int64))
    assert torch.equal(update.after, intervene(bundle, tc, ids, s.interventions()).logits)
    assert update.top[0].after == pytest.approx(float(update.probabilities()[1].max()))
    full = compute_continuation(run, update)
    assert full.steered.token_ids == generate(bundle, tc, ids, s.interventions(), 4).token_ids
    assert "".join(full.steered_text.pieces).strip() == full.steered.text.strip()
    s.set_result(full)
    record = s.record()
    assert record.extra["outputs"]["bars"][0][1:] == [update.top[0].before, update.top[0].after]
    assert record.top_after[0].id == update.top_after[0].id
    assert transcoder_identity(None) == ""
