"""The state of one analysis of one graph: thresholds, selection, pins, supernodes and labels.

This is the model the desktop window shows (napari-style: views follow the model, the model
never calls a view). It is plain Python so that it can be tested, scripted and saved without Qt.
Changes go through methods, which emit `changed(what)` with one of the names in `Aspect`.

Node identity: pins, the selection and supernode members are node indices of `graph` (see
`graph.AttributionGraph`). Feature labels are keyed by (layer, feature) so that a label given in
one graph names the same transcoder feature in every other graph of the session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

import numpy as np

from ..graph.display_text import feature_name, layer_name
from ..graph.attribution_graph import AttributionGraph, NodeKind
from ..graph.pruning import Pruner, PruneResult

MAX_PINNED = 200  # as the circuit-tracer and Neuronpedia frontends: a subgraph stays readable


class Aspect(str, Enum):
    PRUNING = "pruning"
    SELECTION = "selection"
    PINS = "pins"
    SUPERNODES = "supernodes"
    LABELS = "labels"


@dataclass(frozen=True)
class Supernode:
    """A named group of nodes that the subgraph shows as one."""

    id: int
    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class AnalysisState:
    """Everything undo can put back: thresholds, pins, supernodes and labels (not the selection)."""

    node_threshold: float
    edge_threshold: float
    pinned: tuple[int, ...]
    supernodes: tuple[Supernode, ...]
    labels: tuple[tuple[tuple[int, int], str], ...]


@dataclass(frozen=True)
class NodeInfo:
    """What a view shows about one node."""

    index: int
    kind: NodeKind
    layer: int  # -1 for tokens, n_layers for logits
    position: int
    token: str  # the prompt token at `position` (the target token for logits)
    feature: int | None  # transcoder feature index (features only)
    activation: float | None  # features only
    influence: float  # on the logits (pruning's node influence)
    label: str


class Analysis:
    """One graph under study. Cheap to create; pruning is cached by `Pruner`."""

    def __init__(self, graph: AttributionGraph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                 labels: dict[tuple[int, int], str] | None = None,
                 auto_label: Callable[[int, int], str] | None = None) -> None:
        self.graph = graph
        self.pruner = Pruner(graph)
        self._node_threshold = node_threshold
        self._edge_threshold = edge_threshold
        self.imported = bool(graph.provenance.get("imported"))  # read from a graph JSON: read-only
        if self.imported:  # only the file's nodes and links are known: its own pruning, thresholds fixed
            from ..graph.import_json import imported_pruning

            self._pruned: PruneResult = imported_pruning(graph)
            self._node_threshold, self._edge_threshold = self._pruned.node_threshold, self._pruned.edge_threshold
        else:
            self._pruned = self.pruner.prune(node_threshold, edge_threshold)
        self.selected: int | None = None
        self.pinned: list[int] = []
        self.supernodes: list[Supernode] = []
        self.labels: dict[tuple[int, int], str] = dict(labels or {})
        self.auto_label = auto_label
        self._listeners: list[Callable[[Aspect], None]] = []
        self._before_change: list[Callable[[str], None]] = []
        self.scores = self.pruner.graph_scores()  # (replacement, completeness) of the full graph
        self._kinds = graph.node_kinds()
        self._layers = graph.node_layers()
        self._positions = graph.node_positions()

    # ---- events ----
    def subscribe(self, listener: Callable[[Aspect], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, aspect: Aspect) -> None:
        for listener in list(self._listeners):
            listener(aspect)

    def subscribe_before_change(self, listener: Callable[[str], None]) -> None:
        """`listener(description)` runs just before an undoable change (e.g. to snapshot `state()`)."""
        self._before_change.append(listener)

    def _will_change(self, description: str) -> None:
        for listener in list(self._before_change):
            listener(description)

    # ---- snapshots (undo, sessions) ----
    def state(self) -> AnalysisState:
        return AnalysisState(self._node_threshold, self._edge_threshold, tuple(self.pinned),
                             tuple(self.supernodes), tuple(sorted(self.labels.items())))

    def restore(self, state: AnalysisState) -> None:
        """Put a snapshot back (no before-change notice: restoring is not itself a change to undo)."""
        if (state.node_threshold, state.edge_threshold) != (self._node_threshold, self._edge_threshold) \
                and not self.imported:
            self._pruned = self.pruner.prune(state.node_threshold, state.edge_threshold)
            self._node_threshold, self._edge_threshold = state.node_threshold, state.edge_threshold
            self._emit(Aspect.PRUNING)
        self.pinned[:] = list(state.pinned)
        self.supernodes[:] = list(state.supernodes)
        self.labels = dict(state.labels)
        for aspect in (Aspect.PINS, Aspect.SUPERNODES, Aspect.LABELS):
            self._emit(aspect)

    # ---- pruning ----
    @property
    def node_threshold(self) -> float:
        return self._node_threshold

    @property
    def edge_threshold(self) -> float:
        return self._edge_threshold

    @property
    def pruned(self) -> PruneResult:
        return self._pruned

    def set_thresholds(self, node_threshold: float, edge_threshold: float) -> None:
        if (node_threshold, edge_threshold) == (self._node_threshold, self._edge_threshold) or self.imported:
            return  # an imported graph keeps its file's pruning (the pruned-away part is unknown)
        self._will_change("Change thresholds")
        self._pruned = self.pruner.prune(node_threshold, edge_threshold)
        self._node_threshold, self._edge_threshold = node_threshold, edge_threshold
        self._emit(Aspect.PRUNING)

    def hidden_counts(self) -> dict[str, int]:
        """How many nodes of each kind the thresholds hide (features, errors), and how many are shown."""
        mask = self._pruned.node_mask
        return {
            "features": int((~mask[: self.graph.error_offset]).sum()),
            "errors": int((~mask[self.graph.error_offset: self.graph.token_offset]).sum()),
            "shown": int(mask.sum()),
        }

    # ---- selection and pins ----
    def select(self, node: int | None) -> None:
        if node is not None:
            self._check_node(node)
        if node != self.selected:
            self.selected = node
            self._emit(Aspect.SELECTION)

    def toggle_pin(self, node: int) -> None:
        self._check_node(node)
        self._will_change(f"{'Unpin' if node in self.pinned else 'Pin'} {self.label_of(node)}")
        if node in self.pinned:
            self.pinned.remove(node)
            self.supernodes = [replace(s, members=tuple(m for m in s.members if m != node))
                               for s in self.supernodes]
            self.supernodes = [s for s in self.supernodes if s.members]
            self._emit(Aspect.SUPERNODES)
        else:
            if len(self.pinned) >= MAX_PINNED:
                raise ValueError(f"At most {MAX_PINNED} nodes can be pinned; unpin some first.")
            self.pinned.append(node)
        self._emit(Aspect.PINS)

    def clear_pins(self) -> None:
        self._will_change("Clear pins")
        self.pinned.clear()
        self.supernodes.clear()
        self._emit(Aspect.SUPERNODES)
        self._emit(Aspect.PINS)

    # ---- supernodes ----
    def group(self, nodes: list[int], name: str | None = None) -> Supernode:
        """Group pinned nodes (and/or existing supernodes' members) into one new supernode."""
        members: list[int] = []
        for n in nodes:
            self._check_node(n)
            if n not in self.pinned:
                raise ValueError(f"Node {n} is not pinned; only pinned nodes can be grouped.")
            if n not in members:
                members.append(n)
        if len(members) < 2:
            raise ValueError("Select at least two nodes to group.")
        self._will_change("Group nodes")
        absorbed = [s for s in self.supernodes if set(s.members) & set(members)]
        for s in absorbed:
            members += [m for m in s.members if m not in members]
        self.supernodes = [s for s in self.supernodes if s not in absorbed]
        new_id = max((s.id for s in self.supernodes + absorbed), default=0) + 1
        sn = Supernode(new_id, name or self.label_of(members[0]), tuple(members))
        self.supernodes.append(sn)
        self._emit(Aspect.SUPERNODES)
        return sn

    def rename_supernode(self, supernode_id: int, name: str) -> None:
        self._will_change(f"Rename supernode to {name!r}")
        self.supernodes = [replace(s, name=name) if s.id == supernode_id else s for s in self.supernodes]
        self._emit(Aspect.SUPERNODES)

    def ungroup(self, supernode_id: int) -> None:
        self._will_change("Ungroup supernode")
        self.supernodes = [s for s in self.supernodes if s.id != supernode_id]
        self._emit(Aspect.SUPERNODES)

    def subgraph_groups(self) -> list[tuple[str, tuple[int, ...]]]:
        """The subgraph's vertices: each supernode, then each pinned node not in a supernode."""
        grouped = {m for s in self.supernodes for m in s.members}
        groups = [(s.name, s.members) for s in self.supernodes]
        groups += [(self.label_of(n), (n,)) for n in self.pinned if n not in grouped]
        return groups

    def subgraph_edges(self) -> np.ndarray:
        """float32 [G, G]: edge [target group, source group] = sum of the members' direct edges."""
        groups = [members for _, members in self.subgraph_groups()]
        if not groups:
            return np.zeros((0, 0), dtype=np.float32)
        members = np.concatenate([np.asarray(m, dtype=np.int64) for m in groups])
        starts = np.cumsum([0] + [len(m) for m in groups[:-1]])
        block = self.graph.adjacency.submatrix(members, members)
        out = np.add.reduceat(np.add.reduceat(block, starts, axis=0), starts, axis=1).astype(np.float32)
        np.fill_diagonal(out, 0.0)  # edges inside a supernode are not edges of the subgraph
        return out

    # ---- labels ----
    def feature_key(self, node: int) -> tuple[int, int] | None:
        if self._kinds[node] != NodeKind.FEATURE.code:
            return None
        layer, _, feat, _ = self.graph.feature_of(node)
        return layer, feat

    def set_label(self, node: int, label: str) -> None:
        key = self.feature_key(node)
        if key is None:
            raise ValueError("Only feature nodes carry labels.")
        if self.labels.get(key, "") == label.strip():
            return
        self._will_change(f"Label {label.strip()!r}" if label.strip() else "Clear label")
        if label.strip():
            self.labels[key] = label.strip()
        else:
            self.labels.pop(key, None)  # an empty label falls back to the automatic one
        self._emit(Aspect.LABELS)

    def label_of(self, node: int) -> str:
        g = self.graph
        kind = NodeKind(g.kind_of(node))
        if kind is NodeKind.FEATURE:
            layer, _, feat, _ = g.feature_of(node)
            return self.labels.get((layer, feat)) or (self.auto_label(layer, feat) if self.auto_label else "") \
                or feature_name(layer, feat)
        pos = int(self._positions[node])
        if kind is NodeKind.ERROR:
            return f"Error {layer_name(int(self._layers[node]), g.n_layers)} @ {g.token_strings[pos]!r}"
        if kind is NodeKind.TOKEN:
            return f"Emb: {g.token_strings[pos]!r}"
        k = node - g.logit_offset
        return f"Output {g.logit_tokens[k]!r} (p={float(g.logit_probabilities[k]):.3f})"

    def info(self, node: int) -> NodeInfo:
        self._check_node(node)
        g = self.graph
        kind = g.kind_of(node)
        feature = activation = None
        if kind is NodeKind.FEATURE:
            _, _, feature, activation = g.feature_of(node)
        pos = int(self._positions[node])
        token = g.logit_tokens[node - g.logit_offset] if kind is NodeKind.LOGIT else g.token_strings[pos]
        return NodeInfo(node, kind, int(self._layers[node]), pos, token, feature, activation,
                        float(self.pruner.node_influence[node]), self.label_of(node))

    def _check_node(self, node: int) -> None:
        if not 0 <= node < self.graph.n_nodes:
            raise IndexError(f"node {node} is not in the graph (0..{self.graph.n_nodes - 1})")
