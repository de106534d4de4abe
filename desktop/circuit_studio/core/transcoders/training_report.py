"""What transcoder training reports: `TrainingError` when it cannot start, and the held-out quality
of the result, per layer (`LayerReport`) and overall (`TrainingReport`, also as Markdown)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CircuitStudioError


class TrainingError(CircuitStudioError):
    """Transcoder training cannot start: bad settings, or data/transcoders that do not fit the model."""



@dataclass(frozen=True)
class LayerReport:
    """Held-out quality of one layer's transcoder (for a CLT: of the reconstruction of layer
    `layer`'s output; L0 and dead features are those of the features read at `layer`)."""

    layer: int
    fvu: float  # fraction of variance unexplained of the write tensor
    l0: float  # active features per token
    dead_fraction: float
    dead_count: int
    loss_recovered: float | None  # (loss zero-ablated - loss substituted) / (loss zero-ablated - loss clean)
    loss_clean: float | None = None
    loss_zero_ablated: float | None = None
    loss_substituted: float | None = None
    curve: tuple[tuple[int, float, float], ...] = ()  # (step, training-batch FVU, L0) during training
    resampled: int = 0  # dead features re-initialised during training


@dataclass(frozen=True)
class TrainingReport:
    """What `train_transcoders` did and how good the result is, per layer."""

    model: str
    kind: str
    width: int
    feature_input_hook: str
    feature_output_hook: str
    steps: int
    batch_tokens: int
    buffer_tokens: int  # distinct training tokens held in the activation buffer
    heldout_tokens: int
    seconds: float
    layers: tuple[LayerReport, ...]
    settings: dict = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [f"# Transcoder training report: {self.model}", "",
                 f"{self.kind.upper()}, {self.width} features per layer, "
                 f"`{self.feature_input_hook}` -> `{self.feature_output_hook}`; {self.steps} steps of "
                 f"{self.batch_tokens} tokens from a buffer of {self.buffer_tokens} tokens; "
                 f"measured on {self.heldout_tokens} held-out tokens; {self.seconds:.0f} s.", "",
                 "| layer | FVU | L0 | dead | loss recovered | loss clean / zero-ablated / substituted |",
                 "|---|---|---|---|---|---|"]

        def num(v: float | None, fmt: str) -> str:
            return "n/a" if v is None else format(v, fmt)

        for r in self.layers:
            losses = "n/a" if r.loss_clean is None else \
                f"{r.loss_clean:.4f} / {r.loss_zero_ablated:.4f} / {r.loss_substituted:.4f}"
            lines.append(f"| {r.layer} | {r.fvu:.4f} | {r.l0:.1f} | {r.dead_count} ({100 * r.dead_fraction:.1f}%; "
                         f"{r.resampled} resampled) "
                         f"| {num(r.loss_recovered, '.3f')} | {losses} |")
        if self.settings:
            lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        return "\n".join(lines) + "\n"

    def summary_lines(self) -> list[str]:
        return [f"layer {r.layer}: FVU {r.fvu:.4f}, L0 {r.l0:.1f}, dead {r.dead_count}/{self.width}, "
                f"loss recovered {'n/a' if r.loss_recovered is None else format(r.loss_recovered, '.3f')}"
                for r in self.layers]
