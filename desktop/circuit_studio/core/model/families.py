"""What Circuit Studio needs to know about each supported model family.

Attribution treats the model as the frozen linear map of spec §1.6. To run that map backwards
explicitly (see `frozen_backward`) it needs, per layer, the norms around attention and MLP, the
attention's value and output projections, and where the transcoders' read and write points sit.
This module finds those parts in a HuggingFace model and names the norm maths of each family.

Hook points (circuit-tracer / TransformerLens names, spec §1.1), per layer:

    hook_resid_mid        residual stream after attention (input of the pre-MLP norm)
    ln2.hook_normalized   that norm's normalised value, before its gain (GemmaScope's read point)
    mlp.hook_in           the pre-MLP norm's output, i.e. the MLP input
    mlp.hook_out          the MLP's raw output
    hook_mlp_out          the block's MLP contribution to the residual (after Gemma's post-MLP norm)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the window names these types before it loads a model
    import torch
    from torch import nn

READ_HOOKS = ("mlp.hook_in", "ln2.hook_normalized", "hook_resid_mid")
WRITE_HOOKS = ("mlp.hook_out", "hook_mlp_out")
# family -> the (read, write) points its transcoders usually use: GemmaScope's for Gemma, the MLP's input
# and output for the rest
DEFAULT_HOOKS = {"llama": ("mlp.hook_in", "mlp.hook_out"), "gpt2": ("mlp.hook_in", "mlp.hook_out"),
                 "gemma": ("ln2.hook_normalized", "hook_mlp_out")}

# model_type -> family. Families share layer structure and norm maths.
_FAMILY_OF_MODEL_TYPE = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gpt2": "gpt2",
}
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                           "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GPT2LMHeadModel")


@dataclass(frozen=True)
class Norm:
    """A norm module and its maths: "rms" (gain w), "rms1p" (gain 1 + w, Gemma) or "layer" (LayerNorm)."""

    module: nn.Module
    kind: str

    @property
    def eps(self) -> float:
        m = self.module
        return float(getattr(m, "variance_epsilon", getattr(m, "eps", 1e-6)))

    @property
    def gain(self) -> torch.Tensor:
        w = self.module.weight
        return (1.0 + w.float()) if self.kind == "rms1p" else w.float()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position inverse scale [.., 1] of input x [.., d] (float32): what freezing detaches."""
        import torch

        x = x.float()
        if self.kind == "layer":
            return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def normalized(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The value before the gain, with a given (frozen) scale; float32."""
        x = x.float()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return x * scale

    def apply(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm's output with the scale frozen at `scale`; equals the module's output when
        `scale == self.scale(x)` (same float32 / dtype order as the HF modules)."""
        n = self.normalized(x, scale)
        if self.kind == "rms":  # Llama casts back before the gain, Gemma after it
            return self.module.weight * n.to(x.dtype)
        if self.kind == "rms1p":
            return (n * self.gain).to(x.dtype)
        return (n * self.module.weight.float() + self.module.bias.float()).to(x.dtype)

    def backward(self, grad: torch.Tensor, scale: torch.Tensor, with_gain: bool = True) -> torch.Tensor:
        """Transpose of the frozen norm: grad w.r.t. the output [.., d] -> grad w.r.t. the input."""
        g = grad * scale.to(grad.dtype)
        if with_gain:
            g = g * self.gain.to(grad.dtype)
        if self.kind == "layer":  # centring is symmetric, so it is its own transpose
            g = g - g.mean(-1, keepdim=True)
        return g


@dataclass(frozen=True)
class Layer:
    """One transformer block's parts. Gemma has norms after attention and after the MLP."""

    attn_norm: Norm
    attn: nn.Module
    post_attn_norm: Norm | None
    mlp_norm: Norm
    mlp: nn.Module
    post_mlp_norm: Norm | None
    n_heads: int
    n_kv_heads: int
    head_dim: int
    w_v: torch.Tensor  # [n_kv_heads * head_dim, d], value = x @ w_v.T
    w_o: torch.Tensor  # [d, n_heads * head_dim], out = heads @ w_o.T


@dataclass(frozen=True)
class Architecture:
    """The parts of a loaded model that attribution and interventions use."""

    family: str  # "llama" | "gemma" | "gpt2"
    model_type: str
    layers: tuple[Layer, ...]
    embed: nn.Module  # token embedding; its output is what the residual stream receives per token
    final_norm: Norm
    unembed: torch.Tensor  # [V, d]
    logit_softcap: float | None
    decoder_layers: tuple[nn.Module, ...]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.unembed.shape[1])

    def write_module(self, layer: int, hook: str) -> nn.Module:
        """The module whose output is the write point `hook` of `layer`."""
        parts = self.layers[layer]
        if hook == "hook_mlp_out" and parts.post_mlp_norm is not None:
            return parts.post_mlp_norm.module
        return parts.mlp


def family_of(model_type: str) -> str | None:
    return _FAMILY_OF_MODEL_TYPE.get(model_type)


def describe_architecture(model: nn.Module) -> Architecture:
    """Find the parts of a loaded HF causal LM of a supported family."""
    cfg = model.config
    family = family_of(cfg.model_type)
    if family is None:
        raise ValueError(f"unsupported model_type {cfg.model_type!r}")
    if family == "gpt2":
        return _gpt2(model)
    norm_kind = "rms1p" if family == "gemma" else "rms"
    layers = []
    for block in model.model.layers:
        a = block.self_attn
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        head_dim = getattr(a, "head_dim", None) or cfg.hidden_size // n_heads
        gemma = family == "gemma"
        layers.append(Layer(
            attn_norm=Norm(block.input_layernorm, norm_kind),
            attn=a,
            post_attn_norm=Norm(block.post_attention_layernorm, norm_kind) if gemma else None,
            mlp_norm=Norm(block.pre_feedforward_layernorm if gemma else block.post_attention_layernorm, norm_kind),
            mlp=block.mlp,
            post_mlp_norm=Norm(block.post_feedforward_layernorm, norm_kind) if gemma else None,
            n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
            w_v=a.v_proj.weight, w_o=a.o_proj.weight,
        ))
    return Architecture(
        family=family, model_type=cfg.model_type, layers=tuple(layers), embed=model.model.embed_tokens,
        final_norm=Norm(model.model.norm, norm_kind), unembed=model.lm_head.weight,
        logit_softcap=getattr(cfg, "final_logit_softcapping", None), decoder_layers=tuple(model.model.layers),
    )


def _gpt2(model: nn.Module) -> Architecture:
    cfg = model.config
    d = cfg.hidden_size
    layers = []
    for block in model.transformer.h:
        a = block.attn
        # Conv1D stores [in, out] with y = x @ W; our convention is Linear's [out, in].
        w_v = a.c_attn.weight[:, 2 * d:].T
        layers.append(Layer(
            attn_norm=Norm(block.ln_1, "layer"), attn=a, post_attn_norm=None,
            mlp_norm=Norm(block.ln_2, "layer"), mlp=block.mlp, post_mlp_norm=None,
            n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_attention_heads,
            head_dim=d // cfg.num_attention_heads, w_v=w_v, w_o=a.c_proj.weight.T,
        ))
    return Architecture(
        family="gpt2", model_type="gpt2", layers=tuple(layers), embed=model.transformer.wte,
        final_norm=Norm(model.transformer.ln_f, "layer"), unembed=model.lm_head.weight, logit_softcap=None,
        decoder_layers=tuple(model.transformer.h),
    )
