"""The steering model's plain values (no Qt, no torch): what a row is, how undo and session files keep the
rows (`SteeringState.to_json`), what a file kept of the last result (`SavedOutputs`), how a
continuation reads as HTML, and what the steering of a graph works with (`SteeringContext`) and keeps
while another graph is current (`SteeringSnapshot`). `core.interventions.steering` holds the model that changes them."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..graph.display_text import show_token as running_token, token_label

if TYPE_CHECKING:
    from ..session.analysis import Analysis

MULTIPLE_MIN = 0.0  # the slider's left end: 0 ablates (negative multiples are typed, down to -top)
DEFAULT_TOP = 10.0  # the top without a feature index
INDEX_HEADROOM = 2.0  # with an index, the top reaches this times the feature's largest activation there
MAX_MULTIPLE = 1000.0
SLIDER_STEPS = 1200  # a row's step is the smallest of STEPS giving at most this many positions
STEPS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_TOKENS = 8
MAX_TOKENS = 64
SWEEP_POINTS = 21
BAR_COUNT = 8  # next-token bars a session keeps
AFTER_COLOUR = "#e8590c"
NO_GRAPH = "No graph is loaded: trace a prompt (or open a graph) first, then add its features here."
NO_MODEL = ("The model and transcoders of this graph are not loaded: open them (File ▸ Open demo, or the model and "
            "transcoder folders) to run interventions.")


def show_token(tok: str) -> str:
    """A token standing alone (a bar, a row name): `core.graph.display_text.token_label`."""
    return token_label(tok)


def fmt(x: float) -> str:
    return f"{x:.3g}"


def fmt_multiple(m: float) -> str:
    return f"{m:.4g}"


# ---------------------------------------------------------------- plain data

@dataclass(frozen=True)
class Target:
    """One transcoder feature a row sets: to `multiple × base`."""

    node: int | None  # the graph's feature node; None for a feature typed in that is not a node
    layer: int
    position: int
    feature: int
    base: float  # the activation the multiple scales
    base_kind: str = "prompt"  # "prompt" (its activation here), "prompt max" (its largest on this prompt),
    # "index max" (its largest in the feature index) or "value" (no scale known: the multiple is the value)


@dataclass(frozen=True)
class SteeringRow:
    """One intervened item: its targets, the multiple and the position mode."""

    key: tuple  # ("n", node) | ("s", supernode id, members) | ("f", layer, position, feature)
    name: str
    targets: tuple[Target, ...]
    detail: str  # HTML, for a tooltip
    multiple: float = 1.0
    mode: str = "token"  # "token" | "all"
    top: float | None = None  # the range's top; None until known (rows of old session files)
    entry: str = "multiple"  # how the row is typed and shown: "multiple" (× its base) or "value" (the activation)

    @property
    def low(self) -> float:
        """The slider's left end: 0, ablation."""
        return MULTIPLE_MIN

    @property
    def typed_low(self) -> float:
        """The lowest multiple that can be typed: the top, negated."""
        return -self.high

    @property
    def value_base(self) -> float | None:
        """The activation one multiple stands for, when the row can be set by value (one target, a non-zero
        base); None otherwise (a supernode: its features have different activations)."""
        if len(self.targets) != 1 or not self.targets[0].base:
            return None
        return self.targets[0].base

    @property
    def value(self) -> float | None:
        """The activation the row sets (its multiple × its base), when it has one target."""
        b = self.value_base
        return None if b is None else self.multiple * b

    @property
    def high(self) -> float:
        return DEFAULT_TOP if self.top is None else self.top

    @property
    def step(self) -> float:
        return next((s for s in STEPS if (self.high - self.low) / s <= SLIDER_STEPS), STEPS[-1])

    @property
    def is_relative(self) -> bool:
        """Every target is scaled by its own activation here (so m = 1 changes nothing)."""
        return all(t.base_kind == "prompt" for t in self.targets)

    def changes_nothing(self, multiple: float | None = None) -> bool:
        m = self.multiple if multiple is None else float(multiple)
        return m == 1 and self.mode == "token" and self.is_relative

    def interventions(self, first_position: int, multiple: float | None = None):
        """What this row sets at `multiple` (its own by default); nothing when it changes nothing."""
        from .intervene import Intervention

        m = self.multiple if multiple is None else float(multiple)
        if self.changes_nothing(m):
            return []
        if self.mode == "token":
            return [Intervention(t.layer, t.position, t.feature, m * t.base) for t in self.targets]
        base: dict[tuple[int, int], float] = {}  # one open-ended intervention per feature, at its largest base
        for t in self.targets:
            key = (t.layer, t.feature)
            base[key] = max(base.get(key, t.base), t.base)
        return [Intervention(layer, slice(first_position, None), feat, m * b) for (layer, feat), b in base.items()]

    def value_text(self) -> str:
        """What the row does, in a word or a value ("ablate", "unchanged", "= 3.2", "4 features")."""
        if self.multiple == 0:
            return "ablate"
        if self.changes_nothing():
            return "unchanged"
        if len(self.targets) == 1:
            return f"= {fmt(self.multiple * self.targets[0].base)}"
        return f"{len(self.targets)} features"


@dataclass(frozen=True)
class SteeringState:
    """What undo and sessions keep of the steering: the rows and the two options."""

    rows: tuple[SteeringRow, ...] = ()
    freeze_attention: bool = True
    n_tokens: int = DEFAULT_TOKENS

    def to_json(self) -> dict:
        return {"rows": [{"key": _jsonable(r.key), "name": r.name, "detail": r.detail, "multiple": r.multiple,
                          "mode": r.mode, "targets": [vars(t) for t in r.targets],
                          **({} if r.top is None else {"top": r.top}),
                          **({} if r.entry == "multiple" else {"entry": r.entry})} for r in self.rows],
                "freeze_attention": self.freeze_attention, "n_tokens": self.n_tokens}

    @classmethod
    def from_json(cls, data: dict) -> SteeringState:
        rows = tuple(SteeringRow(_tupled(r["key"]), r["name"], tuple(Target(**t) for t in r["targets"]), r["detail"],
                                 float(r["multiple"]), r["mode"], None if r.get("top") is None else float(r["top"]),
                                 "value" if r.get("entry") == "value" else "multiple")
                     for r in data.get("rows", []))
        return cls(rows, bool(data.get("freeze_attention", True)), int(data.get("n_tokens", 0)))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def _same_rows(a: dict, b: dict) -> bool:
    """Two `SteeringState.to_json` values describe the same interventions (the ranges' tops aside)."""
    strip = lambda d: {**d, "rows": [{k: v for k, v in r.items() if k != "top"} for r in d.get("rows", [])]}  # noqa
    return strip(a) == strip(b)


@dataclass(frozen=True)
class SavedOutputs:
    """What a session file kept of the last result: bars (token label, p before, p after), the two
    continuations as HTML, and the activation changes. Shown until the model recomputes them."""

    bars: tuple[tuple[str, float, float], ...] = ()
    default_html: str = ""
    steered_html: str = ""
    changes: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_extra(cls, extra: dict) -> SavedOutputs:
        out = extra.get("outputs") or {}
        return cls(tuple((str(l), float(b), float(a)) for l, b, a in out.get("bars") or []),
                   out.get("default", ""), out.get("steered", ""),
                   {int(n): float(v) for n, v in extra.get("changes") or []})


@dataclass(frozen=True)
class SweepResult:
    row_key: tuple
    row_name: str
    token_id: int
    token: str
    values: tuple[float, ...]
    probabilities: tuple[float, ...]
    seconds: float
    context: tuple = ()  # the other rows' state the sweep was run with


def continuation_html(text, other, highlight: bool) -> str:
    """A continuation (`core.interventions.ContinuationText`) as HTML: the prompt's tail in grey, then the
    generated tokens in bold, those that differ from `other`'s underlined in the steered colour."""
    if text is None:
        return "<span style='color:#888'>(continue 0 tokens: no text)</span>"
    parts = [f"<span style='color:#999'>{'…' if text.ellipsis else ''}{html.escape(text.tail)}</span>"]
    for i, (t, piece) in enumerate(zip(text.token_ids, text.pieces)):
        differs = highlight and (other is None or i >= len(other.token_ids) or other.token_ids[i] != t)
        style = f" style='color:{AFTER_COLOUR}; text-decoration: underline'" if differs else ""
        word = piece.lstrip(" ")
        shown = running_token(word)
        parts.append(f"{' ' * (len(piece) - len(word))}<b{style}>{html.escape(shown)}</b>")
    return "".join(parts)


@dataclass(frozen=True)
class SteeringContext:
    """What the steering of the current graph works with: the graph's analysis and the model, transcoders
    and feature index it was traced with, when they are loaded. `unavailable` says why interventions
    cannot run now ('' when they can); the rows can still be edited and saved results shown."""

    graph_id: int | None = None
    analysis: Analysis | None = None
    bundle: Any = None
    transcoders: Any = None
    index: Any = None
    unavailable: str = NO_GRAPH

    @property
    def first_position(self) -> int:
        return int(self.bundle.n_zeroed_positions) if self.bundle is not None else 1


@dataclass
class SteeringSnapshot:
    """Everything the steering of one graph holds, while another graph is current."""

    state: SteeringState
    result: Any = None
    saved: SavedOutputs | None = None
    saved_record: Any = None  # the InterventionRecord read from the file
    record_id: int = 1
    record_created: datetime | None = None
