"""The on-disk tensor layouts of released transcoders, mapped onto TranscoderSet's canonical names.

Canonical tensors per layer: `W_enc [F, d]`, `W_dec [F, d]` (CLT: `[F, L - l, d]`), `b_enc [F]`,
`b_dec [d]`, `threshold [F]` (JumpReLU only), `W_skip [d, d]` applied as `x @ W_skip.T`.

| format | file | stored keys | to canonical |
|---|---|---|---|
| circuit-tracer PLT | `layer_{i}.safetensors` | W_enc, W_dec, b_enc, b_dec, activation_function.threshold, W_skip | as is |
| circuit-tracer CLT | `W_enc_{i}` + `W_dec_{i}.safetensors` | W_enc_i, b_enc_i, b_dec_i, threshold_i; W_dec_i | as is |
| GemmaScope | `params.npz` / `layer_{i}.npz` | W_enc [d, F], W_dec, b_enc, b_dec, threshold | W_enc transposed |
| GemmaScope 2 PLT | `params.safetensors` | w_enc [d, F], w_dec [F, d], b_enc, b_dec, threshold, affine_skip_connection | w_enc, skip transposed |
| GemmaScope 2 CLT | `params_layer_{i}.safetensors` | same, w_dec [F, L, d] by absolute target layer | slots i.. kept |
| sparsify | `<hookpoint>/sae.safetensors` | encoder.weight [F, d], encoder.bias, W_dec, b_dec, W_skip | as is |

(`../shared/parity/README.md` documents each; transposes are views, nothing is copied.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .weight_files import StoredTensor

REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")
OPTIONAL = ("threshold", "W_skip")


@dataclass(frozen=True)
class Source:
    """Where a canonical tensor comes from: a stored tensor, maybe transposed, maybe decoder slots
    from `slot_from` on (GemmaScope 2 CLT files hold every target layer, also the earlier ones)."""

    stored: StoredTensor
    transpose: bool = False
    slot_from: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.stored.shape
        if self.transpose:
            s = s[::-1]
        if self.slot_from is not None:
            s = (s[0], s[1] - self.slot_from, *s[2:])
        return s


@dataclass(frozen=True)
class Layout:
    """A file layout: canonical name -> stored key, and which canonical tensors are transposed."""

    name: str
    keys: dict[str, str]
    transposed: frozenset[str] = frozenset()

    def sources(self, index: dict[str, StoredTensor], layer: int | None = None) -> dict[str, Source]:
        """The canonical tensors present in a file's index (keys may contain `{i}` = layer)."""
        out = {}
        for name, key in self.keys.items():
            key = key.format(i=layer)
            if key in index:
                out[name] = Source(index[key], name in self.transposed)
        return out

    def missing(self, index: dict[str, StoredTensor], layer: int | None = None,
                names: tuple[str, ...] = REQUIRED) -> list[str]:
        return [self.keys[n].format(i=layer) for n in names
                if n in self.keys and self.keys[n].format(i=layer) not in index]


CT_PLT = Layout("circuit-tracer", {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
                                   "threshold": "activation_function.threshold", "W_skip": "W_skip"})
CT_CLT_ENC = Layout("circuit-tracer CLT", {"W_enc": "W_enc_{i}", "b_enc": "b_enc_{i}", "b_dec": "b_dec_{i}",
                                          "threshold": "threshold_{i}"})
CT_CLT_DEC = Layout("circuit-tracer CLT", {"W_dec": "W_dec_{i}"})
GEMMASCOPE_NPZ = Layout("GemmaScope", {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
                                       "threshold": "threshold"}, frozenset({"W_enc"}))
GEMMASCOPE_2 = Layout("GemmaScope 2", {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec",
                                       "threshold": "threshold", "W_skip": "affine_skip_connection"},
                      frozenset({"W_enc", "W_skip"}))
SPARSIFY = Layout("sparsify", {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec",
                               "b_dec": "b_dec", "W_skip": "W_skip"})


def per_layer_layout(index: dict[str, StoredTensor], npz: bool) -> Layout | None:
    """Which per-layer layout a file's keys are in (None: none we know)."""
    if npz and "W_enc" in index:
        return GEMMASCOPE_NPZ
    if "W_enc" in index:
        return CT_PLT
    if "w_enc" in index:
        return GEMMASCOPE_2
    if "encoder.weight" in index:
        return SPARSIFY
    return None
