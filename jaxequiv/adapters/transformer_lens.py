"""TransformerLens ``HookedTransformer`` checkpoints -> jaxequiv :class:`~jaxequiv.models.transformer.Transformer`.

A ``HookedTransformer`` state dict stores per-head matrices (``W_Q`` [H, D, dh], ``W_O`` [H, dh, D], ``W_in`` [D, M],
``W_U`` [D, V], ...) and no configuration. :func:`config_from_transformer_lens` reads its
``HookedTransformerConfig`` (``model.cfg.to_dict()`` or a dict of the same fields) and
:func:`convert_transformer_lens` also rewrites the tensors in the Hugging Face layout of the matching family
(GPT-2 for learned positions, GPT-NeoX for rotary), which :func:`jaxequiv.adapters.torch.load` then loads with the
same strict accounting as any other checkpoint. Users call ``load(state_dict, "transformer_lens", config=cfg)``.

Both unprocessed (``HookedTransformer(cfg).state_dict()``, what ``from_pretrained_no_processing`` gives) and
processed weights (``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``) load: the
model then computes what that TransformerLens model computes. Processing changes the activations themselves
(folded LayerNorms become ``LNPre``, a normalisation without weights, loaded here as unit scale and zero bias;
centring removes each residual write's mean; ``center_unembed`` shifts every logit of a position by the same
amount; folding moves ``b_V`` into ``b_O``), so compare activations between models processed the same way.

The loaded model's sites answer to the TransformerLens hook names
(:func:`jaxequiv.models.transformer.transformer_lens_aliases`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxequiv.models.transformer import TransformerConfig

__all__ = ["convert_transformer_lens", "config_from_transformer_lens", "looks_like_transformer_lens", "IGNORED_KEYS"]

# Buffers of a HookedTransformer state dict that hold no weights.
IGNORED_KEYS = ("blocks.*.attn.mask", "blocks.*.attn.IGNORE", "blocks.*.attn.rotary_sin", "blocks.*.attn.rotary_cos")

_ACT = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
        "relu": "relu"}

# Fields that change the computation: each must hold the value a GPT-2 / NeoX model has (an absent field counts
# as holding it).
_MUST_BE = {
    "use_attn_scale": True, "scale_attn_by_inverse_layer_idx": False, "use_qk_norm": False, "clip_qkv": None,
    "use_logn_attn": False, "use_dynamic_ntk_rope": False, "use_local_attn": False, "final_rms": False,
    "gated_mlp": False, "post_embedding_ln": False, "rotary_adjacent_pairs": False, "num_experts": None,
    "use_normalization_before_and_after": False, "use_NTK_by_parts_rope": False, "use_yarn_rope": False,
    "use_attention_sinks": False, "quantization_method": None, "rotary_scaling_factor": 1.0,
    "uses_rms_norm": False,
}


def _field(cfg: Mapping, name: str, default: Any = None) -> Any:
    value = cfg.get(name, default)
    return default if value is None else value


def _as_dict(cfg: Any) -> Mapping[str, Any]:
    if isinstance(cfg, Mapping):
        return cfg
    if not hasattr(cfg, "to_dict"):
        raise TypeError(f"expected a HookedTransformerConfig or a dict of its fields, got {type(cfg).__name__}")
    return cfg.to_dict()


def config_from_transformer_lens(cfg: Any) -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``HookedTransformerConfig`` (the object or its ``to_dict()``).

    Raises:
      ValueError: a required field is missing, or a setting this converter does not implement (RMSNorm, gated
        MLP, grouped-query attention, GPT-J-style rotary, ...) is on; the message names it.
    """
    cfg = _as_dict(cfg)
    missing = [f for f in ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab") if f not in cfg]
    if missing:
        raise ValueError(f"TransformerLens config lacks {missing}; pass model.cfg.to_dict() of the HookedTransformer")
    for name, expected in _MUST_BE.items():
        if cfg.get(name, expected) != expected:
            raise ValueError(f"TransformerLens config {name}={cfg[name]!r} is not supported (only {expected!r})")
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if _field(cfg, cap, -1.0) > 0:
            raise ValueError(f"TransformerLens config {cap}={cfg[cap]!r} is not supported (soft caps are off only)")
    n_heads, d_head = int(cfg["n_heads"]), int(cfg["d_head"])
    if _field(cfg, "n_key_value_heads", n_heads) != n_heads:
        raise ValueError(f"grouped-query attention (n_key_value_heads={cfg['n_key_value_heads']}) is not supported")
    if not math.isclose(float(_field(cfg, "attn_scale", math.sqrt(d_head))), math.sqrt(d_head), rel_tol=1e-6):
        raise ValueError(f"attn_scale={cfg['attn_scale']} is not supported (only sqrt(d_head) = {math.sqrt(d_head)})")
    norm = cfg.get("normalization_type", "LN")
    if norm not in ("LN", "LNPre", None):
        raise ValueError(f"normalization_type={norm!r} is not supported (LN, LNPre or None)")
    positional = _field(cfg, "positional_embedding_type", "standard")
    if positional not in ("standard", "rotary"):
        raise ValueError(f"positional_embedding_type={positional!r} is not supported ('standard' or 'rotary')")
    direction = _field(cfg, "attention_dir", "causal")
    if direction not in ("causal", "bidirectional"):
        raise ValueError(f"attention_dir={direction!r} is not supported ('causal' or 'bidirectional')")
    attn_only = bool(cfg.get("attn_only", False))
    act = cfg.get("act_fn")
    if not attn_only and act not in _ACT:
        raise ValueError(f"act_fn={act!r} is not supported; supported: {sorted(_ACT)}")
    rotary_pct = 1.0
    if positional == "rotary":
        rotary_dim = int(_field(cfg, "rotary_dim", d_head))
        rotary_pct = rotary_dim / d_head
        if int(d_head * rotary_pct) != rotary_dim:
            raise ValueError(f"rotary_dim={rotary_dim} of d_head={d_head} is not representable as a rotary fraction")
    d_vocab = int(cfg["d_vocab"])
    d_vocab_out = int(_field(cfg, "d_vocab_out", -1))
    return TransformerConfig(
        vocab_size=d_vocab, n_layer=int(cfg["n_layers"]), n_head=n_heads, d_model=int(cfg["d_model"]),
        n_ctx=int(cfg["n_ctx"]), d_head=d_head, d_mlp=None if attn_only else int(cfg["d_mlp"]),
        attn_only=attn_only, positional="learned" if positional == "standard" else "rotary", rotary_pct=rotary_pct,
        rotary_base=float(_field(cfg, "rotary_base", 10000.0)),
        parallel_residual=bool(cfg.get("parallel_attn_mlp", False)), norm="none" if norm is None else "layernorm",
        ln_eps=float(_field(cfg, "eps", 1e-5)), activation=_ACT.get(act, "gelu_tanh"), bias=True,
        tie_embeddings=False, unembed_bias=True, d_vocab_out=d_vocab_out if d_vocab_out > 0 else d_vocab,
        causal=direction == "causal", naming="neox" if positional == "rotary" else "gpt2",
    )


def looks_like_transformer_lens(state: Mapping[str, Any]) -> bool:
    """Whether a state dict uses HookedTransformer names (``embed.W_E``, ``blocks.0.attn.W_Q``)."""
    return "embed.W_E" in state and "blocks.0.attn.W_Q" in state


def _expected_shapes(cfg: TransformerConfig, folded_ln: bool) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of every HookedTransformer tensor a model of ``cfg`` needs."""
    d, h, dh, m = cfg.d_model, cfg.n_head, cfg.d_head, cfg.d_mlp
    norms = cfg.norm != "none" and not folded_ln
    shapes = {"embed.W_E": (cfg.vocab_size, d)}
    if cfg.positional == "learned":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, d)
    for i in range(cfg.n_layer):
        tl = f"blocks.{i}"
        lns = ["ln1"] + ([] if cfg.attn_only else ["ln2"])
        shapes.update({f"{tl}.{ln}.{p}": (d,) for ln in lns for p in "wb" if norms})
        shapes.update({f"{tl}.attn.W_{s}": (h, d, dh) for s in "QKV"})
        shapes.update({f"{tl}.attn.b_{s}": (h, dh) for s in "QKV"})
        shapes.update({f"{tl}.attn.W_O": (h, dh, d), f"{tl}.attn.b_O": (d,)})
        if not cfg.attn_only:
            shapes.update({f"{tl}.mlp.W_in": (d, m), f"{tl}.mlp.b_in": (m,), f"{tl}.mlp.W_out": (m, d),
                           f"{tl}.mlp.b_out": (d,)})
    if norms and cfg.final_norm:
        shapes.update({f"ln_final.{p}": (d,) for p in "wb"})
    shapes.update({"unembed.W_U": (d, cfg.d_vocab_out), "unembed.b_U": (cfg.d_vocab_out,)})
    return shapes


def convert_transformer_lens(state: Mapping[str, np.ndarray], tl_config: Any
                             ) -> tuple[TransformerConfig, dict[str, np.ndarray]]:
    """``(config, state dict in the Hugging Face layout of the config's family)`` of a HookedTransformer.

    GPT-2 (learned positions): ``h.{i}.attn.c_attn.weight`` [D, 3 H dh] (Conv1D, ``[q | k | v]``), ...;
    GPT-NeoX (rotary): ``layers.{i}.attention.query_key_value.weight`` [3 H dh, D] (q, k, v interleaved per
    head), .... With ``normalization_type="LNPre"`` (``fold_ln``) the LayerNorm weights, which such a state dict
    lacks, are unit scales and zero biases. Keys not used here are passed through unchanged, so that the loader
    reports them as unexpected.

    Args:
      state: ``{name: array}`` of ``HookedTransformer.state_dict()``.
      tl_config: its ``HookedTransformerConfig`` or ``cfg.to_dict()``.

    Raises:
      ValueError: an unsupported setting, or keys the config needs are missing or have other shapes (all
        listed, in TransformerLens names).
    """
    cfg = config_from_transformer_lens(tl_config)
    folded_ln = _as_dict(tl_config).get("normalization_type", "LN") == "LNPre"
    required = _expected_shapes(cfg, folded_ln)
    missing = [k for k in required if k not in state]
    mismatched = [f"{k}: {tuple(state[k].shape)}, expected {s}" for k, s in required.items()
                  if k in state and tuple(state[k].shape) != s]
    if missing or mismatched:
        hint = ("; a processed state dict (fold_ln) has no LayerNorm weights: its config says "
                "normalization_type='LNPre'" if any(re.search(r"\.(ln\d|ln_final)\.[wb]$", k) for k in missing)
                else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} keys missing: {missing[:12]}{' ...' if len(missing) > 12 else ''}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {mismatched[:12]}")
        raise ValueError(f"the TransformerLens state dict does not fit its config: {'; '.join(problems)}{hint}")
    n, gpt2 = cfg.names, cfg.naming == "gpt2"
    h, dh, d = cfg.n_head, cfg.d_head, cfg.d_model

    def linear(w: np.ndarray) -> np.ndarray:  # TransformerLens (in, out) -> the family's stored layout
        return w if gpt2 else w.T

    def norm(tl: str, hf: str) -> dict[str, np.ndarray]:
        if cfg.norm == "none":
            return {}
        if folded_ln:
            return {f"{hf}.weight": np.ones(d, np.float32), f"{hf}.bias": np.zeros(d, np.float32)}
        return {f"{hf}.weight": state[f"{tl}.w"], f"{hf}.bias": state[f"{tl}.b"]}

    out = {f"{n.embed}.weight": state["embed.W_E"]}
    if cfg.positional == "learned":
        out["wpe.weight"] = state["pos_embed.W_pos"]
    for i in range(cfg.n_layer):
        tl, hf = f"blocks.{i}", f"{n.blocks}.{i}"
        attn = f"{hf}.{n.attn}"
        w = [state[f"{tl}.attn.W_{s}"] for s in "QKV"]  # [H, D, dh]
        b = [state[f"{tl}.attn.b_{s}"] for s in "QKV"]  # [H, dh]
        if gpt2:  # columns [q (all heads) | k | v], stored (in, out)
            qkv_w = np.concatenate([x.transpose(1, 0, 2).reshape(d, h * dh) for x in w], 1)
            qkv_b = np.concatenate([x.reshape(-1) for x in b])
        else:  # rows (head, q|k|v, dh), stored (out, in)
            qkv_w = np.stack(w, 1).transpose(0, 1, 3, 2).reshape(3 * h * dh, d)
            qkv_b = np.stack(b, 1).reshape(-1)
        out.update(norm(f"{tl}.ln1", f"{hf}.{n.ln_1}"))
        out.update({f"{attn}.{n.qkv}.weight": qkv_w, f"{attn}.{n.qkv}.bias": qkv_b,
                    f"{attn}.{n.attn_out}.weight": linear(state[f"{tl}.attn.W_O"].reshape(h * dh, d)),
                    f"{attn}.{n.attn_out}.bias": state[f"{tl}.attn.b_O"]})
        if not cfg.attn_only:
            out.update(norm(f"{tl}.ln2", f"{hf}.{n.ln_2}"))
            for tl_name, hf_name in (("in", n.fc_in), ("out", n.fc_out)):
                out[f"{hf}.mlp.{hf_name}.weight"] = linear(state[f"{tl}.mlp.W_{tl_name}"])
                out[f"{hf}.mlp.{hf_name}.bias"] = state[f"{tl}.mlp.b_{tl_name}"]
    if cfg.final_norm:
        out.update(norm("ln_final", n.ln_f))
    out[f"{n.unembed}.weight"] = state["unembed.W_U"].T  # torch Linear (out, in)
    out[f"{n.unembed}.bias"] = state["unembed.b_U"]
    out.update({k: v for k, v in state.items() if k not in required})
    return cfg, out
