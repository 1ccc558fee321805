"""Decoder-only transformer (flax nnx) for GPT-2, GPT-NeoX/Pythia, attention-only toys and tracr-style models.

One module, :class:`Transformer`, driven by :class:`TransformerConfig`. Attribute paths follow the Hugging Face
torch module names of the chosen ``naming`` so that a checkpoint maps onto it by a table:

==================  =========================  ================================
role                ``naming="gpt2"``          ``naming="neox"``
==================  =========================  ================================
token embedding     ``wte``                    ``embed_in``
learned positions   ``wpe``                    ``wpe`` (NeoX itself uses rotary)
blocks              ``h[i]``                   ``layers[i]``
pre-attention norm  ``h[i].ln_1``              ``layers[i].input_layernorm``
attention           ``h[i].attn``              ``layers[i].attention``
fused q,k,v         ``attn.c_attn``            ``attention.query_key_value``
output projection   ``attn.c_proj``            ``attention.dense``
pre-MLP norm        ``h[i].ln_2``              ``layers[i].post_attention_layernorm``
MLP in / out        ``mlp.c_fc`` / ``c_proj``  ``mlp.dense_h_to_4h`` / ``dense_4h_to_h``
final norm          ``ln_f``                   ``final_layer_norm``
untied unembedding  ``lm_head``                ``embed_out``
==================  =========================  ================================

The fused q,k,v output is laid out as in torch: GPT-2 puts ``[q (all heads) | k | v]``, NeoX puts
``[q | k | v]`` inside each head.

Sites (``B`` batch, ``T`` tokens, ``H`` heads, ``dh`` head size; names for ``naming="gpt2"``, with NeoX the token
embedding is ``embed_in``, the block prefix ``layers.{i}``, the norms ``input_layernorm`` /
``post_attention_layernorm``, attention ``attention`` and the final norm ``final_layer_norm``); the TransformerLens
hook name each one also answers to (:func:`transformer_lens_aliases`) is in brackets:

- ``wte`` [B,T,D] (batch, token, channel): token embedding [``hook_embed``]; ``wpe`` [B,T,D]: learned position
  embedding, broadcast over the batch [``hook_pos_embed``];
- ``embed`` [B,T,D]: residual stream before block 0 (token + learned position embedding);
- ``h.{i}.resid_pre`` [B,T,D]: residual stream entering block ``i`` [``blocks.{i}.hook_resid_pre``];
- ``h.{i}.ln_1.scale`` [B,T,1]: ``sqrt(var + eps)`` of the pre-attention LayerNorm [``blocks.{i}.ln1.hook_scale``];
  ``h.{i}.ln_1.normalized`` [B,T,D]: its centred input divided by the scale, before the affine map
  [``blocks.{i}.ln1.hook_normalized``]; the same for ``ln_2`` [``ln2``] and ``ln_f`` [``ln_final``];
- ``h.{i}.attn.q`` / ``.k`` / ``.v`` [B,T,H,dh] (batch, token, head, channel); q and k after rotary embedding
  [``attn.hook_q/k/v``; with rotary: ``attn.hook_rot_q/k``, and ``attn.q_unrotated`` / ``.k_unrotated`` are the
  projections before rotation, ``attn.hook_q/k``];
- ``h.{i}.attn.scores`` [B,H,T,T] (batch, head, query, key): scaled dot products after masking (masked entries
  hold the dtype's most negative value where TransformerLens puts ``-inf``) [``attn.hook_attn_scores``];
- ``h.{i}.attn.pattern`` [B,H,T,T]: attention probabilities [``attn.hook_pattern``];
- ``h.{i}.attn.z`` [B,T,H,dh]: per-head attention output before the output projection (scale it with a head mask
  ``[H, 1]`` to ablate heads, replace it to patch heads) [``attn.hook_z``];
- ``h.{i}.attn`` [B,T,D]: attention output after the projection [``blocks.{i}.hook_attn_out``];
- ``h.{i}.resid_mid`` [B,T,D]: residual after attention, before the MLP (sequential residual with an MLP only)
  [``blocks.{i}.hook_resid_mid``];
- ``h.{i}.mlp.pre`` / ``.act`` [B,T,d_mlp]: MLP hidden before / after the activation [``mlp.hook_pre`` /
  ``mlp.hook_post``]; ``h.{i}.mlp`` [B,T,D]: MLP output [``blocks.{i}.hook_mlp_out``];
- ``h.{i}`` [B,T,D]: residual stream after block ``i`` [``blocks.{i}.hook_resid_post``];
- ``ln_f`` [B,T,D]: final normed residual (only with ``final_norm``) [``unembed.hook_in``];
  ``logits`` [B,T,V] [``unembed.hook_out``].
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jaxequiv.io.config import DictConfig
from jaxequiv.sites import declare_aliases, site

__all__ = ["TransformerConfig", "Transformer", "LayerNorm", "Naming", "NAMINGS", "attention", "rotary",
           "ACTIVATIONS", "transformer_lens_aliases"]

TOKEN_AXES = ("batch", "token", "channel")
HEAD_AXES = ("batch", "token", "head", "channel")
PATTERN_AXES = ("batch", "head", "query", "key")

ACTIVATIONS = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class Naming:
    """Attribute (= torch module) names of one model family."""

    embed: str
    blocks: str
    ln_1: str
    attn: str
    qkv: str
    attn_out: str
    ln_2: str
    fc_in: str
    fc_out: str
    ln_f: str
    unembed: str
    qkv_per_head: bool  # fused q,k,v interleaved per head (NeoX) rather than [q | k | v] (GPT-2)


NAMINGS = {
    "gpt2": Naming("wte", "h", "ln_1", "attn", "c_attn", "c_proj", "ln_2", "c_fc", "c_proj", "ln_f", "lm_head", False),
    "neox": Naming(
        "embed_in", "layers", "input_layernorm", "attention", "query_key_value", "dense",
        "post_attention_layernorm", "dense_h_to_4h", "dense_4h_to_h", "final_layer_norm", "embed_out", True,
    ),
}

_CHOICES = {
    "positional": ("learned", "rotary", "none"),
    "norm": ("layernorm", "none"),
    "activation": tuple(ACTIVATIONS),
    "naming": tuple(NAMINGS),
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig(DictConfig):
    """Sizes and variants of a decoder-only transformer.

    Attributes:
      vocab_size: input token vocabulary ``V``.
      n_layer, n_head, d_model, n_ctx: depth, heads per layer, residual width ``D``, maximum sequence length.
      d_head: size per head (default ``d_model // n_head``); ``n_head * d_head`` need not equal ``d_model``.
      d_mlp: MLP hidden width (default ``4 * d_model``).
      attn_only: blocks without MLP (and without ``ln_2``).
      positional: ``"learned"`` (``wpe``), ``"rotary"`` (NeoX rotate-half RoPE) or ``"none"``.
      rotary_pct, rotary_base: fraction of each head's channels rotated, and the RoPE base.
      parallel_residual: ``x + attn(ln_1(x)) + mlp(ln_2(x))`` (NeoX) instead of sequential.
      norm: ``"layernorm"`` or ``"none"`` (tracr-style); ``final_norm`` adds the final norm (off when ``norm="none"``).
      ln_eps: LayerNorm epsilon.
      activation: ``"gelu_tanh"`` (GPT-2 ``gelu_new``), ``"gelu"`` (exact erf) or ``"relu"``.
      bias: biases in the attention and MLP projections.
      tie_embeddings: logits from the transposed token embedding instead of an unembedding matrix.
      unembed_bias: bias on the untied unembedding.
      d_vocab_out: output vocabulary (default ``vocab_size``; a different size needs untied embeddings).
      causal: mask future keys (tracr compiles non-causal models by default).
      naming: ``"gpt2"`` or ``"neox"``: attribute and site names (see module docstring).
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    n_ctx: int
    d_head: int | None = None
    d_mlp: int | None = None
    attn_only: bool = False
    positional: str = "learned"
    rotary_pct: float = 1.0
    rotary_base: float = 10000.0
    parallel_residual: bool = False
    norm: str = "layernorm"
    final_norm: bool = True
    ln_eps: float = 1e-5
    activation: str = "gelu_tanh"
    bias: bool = True
    tie_embeddings: bool = True
    unembed_bias: bool = False
    d_vocab_out: int | None = None
    causal: bool = True
    naming: str = "gpt2"

    def __post_init__(self):
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"TransformerConfig.{field}={getattr(self, field)!r} is not one of {allowed}")
        for field in ("vocab_size", "n_layer", "n_head", "d_model", "n_ctx"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{field} must be a positive int, got {value!r}")
        if self.d_head is None:
            if self.d_model % self.n_head:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_head={self.n_head}; pass d_head explicitly"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_head)
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.vocab_size)
        if self.tie_embeddings and (self.d_vocab_out != self.vocab_size or self.unembed_bias):
            raise ValueError(
                "tie_embeddings=True needs d_vocab_out == vocab_size and unembed_bias=False; "
                f"got d_vocab_out={self.d_vocab_out}, vocab_size={self.vocab_size}, unembed_bias={self.unembed_bias}"
            )
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must lie in [0, 1], got {self.rotary_pct}")
        if self.norm == "none" and self.final_norm:
            object.__setattr__(self, "final_norm", False)

    @property
    def names(self) -> Naming:
        return NAMINGS[self.naming]


# ---------------------------------------------------------------------------------------------------------
# Pure kernels shared by every attention layer of the package (decoder, ViT, BERT).


def rotary(x: jax.Array, pct: float, base: float) -> jax.Array:
    """Rotate-half rotary position embedding (GPT-NeoX convention) on the first ``int(dh * pct)`` channels.

    Args:
      x: [B, T, H, dh] queries or keys; position ``t`` is the index along ``T``.
    """
    dh = x.shape[-1]
    n_rot = int(dh * pct)
    if n_rot == 0:
        return x
    inv_freq = 1.0 / (base ** (jnp.arange(0, n_rot, 2, dtype=jnp.float32) / n_rot))
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * inv_freq[None, :]  # [T, n_rot/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, T, 1, n_rot]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x_rot, x_pass = x[..., :n_rot], x[..., n_rot:]
    half = n_rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, prefix: str, *, causal: bool, key_mask: jax.Array | None = None
) -> jax.Array:
    """Scaled dot-product attention with sites ``{prefix}.q/.k/.v/.scores/.pattern/.z``.

    Args:
      q, k, v: [B, T, H, dh].
      prefix: site prefix, e.g. ``"h.3.attn"``.
      causal: mask keys after the query.
      key_mask: [B, T] bool, ``True`` for real tokens; padded keys get no attention.

    Returns:
      z: [B, T, H, dh] per-head outputs (as edited at the ``z`` site).
    """
    q = site(f"{prefix}.q", q, HEAD_AXES)
    k = site(f"{prefix}.k", k, HEAD_AXES)
    v = site(f"{prefix}.v", v, HEAD_AXES)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    t = q.shape[1]
    allowed = jnp.tril(jnp.ones((t, t), bool)) if causal else jnp.ones((t, t), bool)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.astype(bool)[:, None, None, :]
    scores = site(f"{prefix}.scores", jnp.where(allowed, scores, jnp.finfo(scores.dtype).min), PATTERN_AXES)
    pattern = site(f"{prefix}.pattern", jax.nn.softmax(scores, axis=-1), PATTERN_AXES)
    return site(f"{prefix}.z", jnp.einsum("bhqk,bkhd->bqhd", pattern, v), HEAD_AXES)


def check_tokens(tokens: jax.Array, attention_mask: jax.Array | None, n_ctx: int | None) -> None:
    """``ValueError``/``TypeError`` unless ``tokens`` is an int [B, T] batch (T <= n_ctx) and the mask matches."""
    shape = tuple(tokens.shape)
    if len(shape) != 2:
        raise ValueError(f"tokens must have shape [batch, seq_len], got {shape}; add a batch axis with tokens[None]")
    if jnp.dtype(tokens.dtype).kind not in "iu":
        raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}; a Network of a token model takes "
                        "input_dtype='int' (model.network(), or Network.from_module(model, (None,), input_dtype='int'))")
    if n_ctx is not None and shape[1] > n_ctx:
        raise ValueError(f"sequence length {shape[1]} exceeds the model's n_ctx={n_ctx}; truncate the input")
    if attention_mask is not None and tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask must have the tokens' shape {shape}, got {tuple(attention_mask.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Modules.


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis whose forward pass marks the sites ``{prefix}.scale`` [..., 1] =
    ``sqrt(var + eps)`` and ``{prefix}.normalized`` = centred input / scale, before the affine map
    (TransformerLens' ``hook_scale`` / ``hook_normalized``; freeze the scale by replacing it)."""

    def __call__(self, x: jax.Array, prefix: str) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        centred = x - x.mean(-1, keepdims=True)
        scale = site(f"{prefix}.scale", jnp.sqrt((centred * centred).mean(-1, keepdims=True) + self.epsilon),
                     TOKEN_AXES)
        normalized = site(f"{prefix}.normalized", centred / scale, TOKEN_AXES)
        return normalized * self.scale[...] + self.bias[...]


def _layernorm(cfg: TransformerConfig, rngs: nnx.Rngs) -> LayerNorm | None:
    return LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, rngs=rngs) if cfg.norm == "layernorm" else None


def _apply_norm(norm: LayerNorm | None, x: jax.Array, prefix: str) -> jax.Array:
    return x if norm is None else norm(x, prefix)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused q,k,v projection (torch layout of the configured family)."""

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        n, hd = cfg.names, cfg.n_head * cfg.d_head
        setattr(self, n.qkv, nnx.Linear(cfg.d_model, 3 * hd, use_bias=cfg.bias, rngs=rngs))
        setattr(self, n.attn_out, nnx.Linear(hd, cfg.d_model, use_bias=cfg.bias, rngs=rngs))

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, prefix: str) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        cfg, n = self.cfg, self.cfg.names
        b, t, _ = x.shape
        qkv = getattr(self, n.qkv)(x)
        if n.qkv_per_head:
            q, k, v = jnp.split(qkv.reshape(b, t, cfg.n_head, 3 * cfg.d_head), 3, axis=-1)
        else:
            q, k, v = (a.reshape(b, t, cfg.n_head, cfg.d_head) for a in jnp.split(qkv, 3, axis=-1))
        if cfg.positional == "rotary":
            q = rotary(site(f"{prefix}.q_unrotated", q, HEAD_AXES), cfg.rotary_pct, cfg.rotary_base)
            k = rotary(site(f"{prefix}.k_unrotated", k, HEAD_AXES), cfg.rotary_pct, cfg.rotary_base)
        z = attention(q, k, v, prefix, causal=cfg.causal, key_mask=key_mask)
        return site(prefix, getattr(self, n.attn_out)(z.reshape(b, t, -1)), TOKEN_AXES)


class MLP(nnx.Module):
    """Two-layer MLP with sites ``{prefix}.pre`` / ``{prefix}.act`` on the hidden before / after the activation."""

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        n = cfg.names
        setattr(self, n.fc_in, nnx.Linear(cfg.d_model, cfg.d_mlp, use_bias=cfg.bias, rngs=rngs))
        setattr(self, n.fc_out, nnx.Linear(cfg.d_mlp, cfg.d_model, use_bias=cfg.bias, rngs=rngs))

    def __call__(self, x: jax.Array, prefix: str) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        n = self.cfg.names
        h = site(f"{prefix}.pre", getattr(self, n.fc_in)(x), TOKEN_AXES)
        h = site(f"{prefix}.act", ACTIVATIONS[self.cfg.activation](h), TOKEN_AXES)
        return site(prefix, getattr(self, n.fc_out)(h), TOKEN_AXES)


class Block(nnx.Module):
    """Pre-norm residual block: attention then (unless ``attn_only``) MLP, sequential or parallel."""

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        n = cfg.names
        setattr(self, n.ln_1, _layernorm(cfg, rngs))
        setattr(self, n.attn, Attention(cfg, rngs))
        if not cfg.attn_only:
            setattr(self, n.ln_2, _layernorm(cfg, rngs))
            self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, prefix: str) -> jax.Array:
        """[B, T, D] -> [B, T, D]; marks ``prefix`` (the residual after the block) and the inner sites."""
        cfg, n = self.cfg, self.cfg.names
        x = site(f"{prefix}.resid_pre", x, TOKEN_AXES)
        a = getattr(self, n.attn)(_apply_norm(getattr(self, n.ln_1), x, f"{prefix}.{n.ln_1}"), key_mask,
                                  f"{prefix}.{n.attn}")
        if cfg.attn_only:
            x = x + a
        elif cfg.parallel_residual:
            x = x + a + self.mlp(_apply_norm(getattr(self, n.ln_2), x, f"{prefix}.{n.ln_2}"), f"{prefix}.mlp")
        else:
            x = site(f"{prefix}.resid_mid", x + a, TOKEN_AXES)
            x = x + self.mlp(_apply_norm(getattr(self, n.ln_2), x, f"{prefix}.{n.ln_2}"), f"{prefix}.mlp")
        return site(prefix, x, TOKEN_AXES)


def _check_logits(logits: str) -> None:
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' (every position) or 'last' (the last real one), got {logits!r}")


class Transformer(nnx.Module):
    """Decoder-only transformer: ``model(tokens [B,T] int, attention_mask [B,T] | None) -> logits [B,T,V_out]``.

    ``attention_mask`` marks real tokens with 1 and padding with 0; padded positions are masked as keys.
    See the module docstring for attribute and site names.
    """

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        n = cfg.names
        setattr(self, n.embed, nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs))
        self.wpe = nnx.Embed(cfg.n_ctx, cfg.d_model, rngs=rngs) if cfg.positional == "learned" else None
        setattr(self, n.blocks, nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layer)]))
        setattr(self, n.ln_f, _layernorm(cfg, rngs) if cfg.final_norm else None)
        if not cfg.tie_embeddings:
            setattr(self, n.unembed, nnx.Linear(cfg.d_model, cfg.d_vocab_out, use_bias=cfg.unembed_bias, rngs=rngs))

    def __call__(self, tokens: ArrayLike, attention_mask: ArrayLike | None = None, *, logits: str = "all") -> jax.Array:
        """``logits="last"`` unembeds only the last real position (from ``attention_mask``, else ``T - 1``):
        ``[B, 1, V_out]``, as Hugging Face's ``logits_to_keep=1`` (a GPT-2 head at all 128 positions of a batch
        is ~0.8 TFLOP per 100 sequences and 26 MB of logits per sequence)."""
        _check_logits(logits)
        cfg, n = self.cfg, self.cfg.names
        tokens = jnp.asarray(tokens)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        check_tokens(tokens, attention_mask, cfg.n_ctx)
        declare_aliases(transformer_lens_aliases(cfg))
        embed = getattr(self, n.embed)
        x = site(n.embed, embed(tokens), TOKEN_AXES)
        if self.wpe is not None:
            x = x + site("wpe", jnp.broadcast_to(self.wpe(jnp.arange(tokens.shape[1]))[None], x.shape), TOKEN_AXES)
        x = site("embed", x, TOKEN_AXES)
        key_mask = None if attention_mask is None else attention_mask.astype(bool)
        for i, block in enumerate(getattr(self, n.blocks)):
            x = block(x, key_mask, f"{n.blocks}.{i}")
        if cfg.final_norm:
            x = site(n.ln_f, getattr(self, n.ln_f)(x, n.ln_f), TOKEN_AXES)
        if logits == "last":
            t = tokens.shape[1]
            last = (jnp.full(tokens.shape[:1], t - 1) if attention_mask is None
                    else t - 1 - jnp.argmax(attention_mask[:, ::-1] != 0, axis=1))
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)  # [B, 1, D]
        out = embed.attend(x) if cfg.tie_embeddings else getattr(self, n.unembed)(x)
        return site("logits", out, TOKEN_AXES)

    def network(self, logits: str = "all"):
        """Pure :class:`~jaxequiv.network.Network` view (token inputs of free length); ``logits="last"``: the
        outputs at the last real position only, ``[B, 1, V_out]`` (a contributions target reads them with
        ``at_position(target, 0)``)."""
        from jaxequiv.network import Network

        _check_logits(logits)
        return Network.from_module(self, (None,), input_dtype="int", logits=logits)



@functools.lru_cache(maxsize=64)
def transformer_lens_aliases(cfg: TransformerConfig) -> Mapping[str, str]:
    """``{TransformerLens hook name: site}`` for a model of this config (see the module docstring); read-only.

    Hooks that TransformerLens only adds on request (``hook_attn_in``, ``hook_q_input``, ``attn.hook_result``,
    ``hook_mlp_in``, ``hook_tokens``) have no alias.
    """
    n = cfg.names
    table = {"hook_embed": n.embed}
    if cfg.positional == "learned":
        table["hook_pos_embed"] = "wpe"
    for i in range(cfg.n_layer):
        block, attn, tl = f"{n.blocks}.{i}", f"{n.blocks}.{i}.{n.attn}", f"blocks.{i}"
        table[f"{tl}.hook_resid_pre"] = f"{block}.resid_pre"
        norms = [("ln1", n.ln_1)] + ([] if cfg.attn_only else [("ln2", n.ln_2)])
        if cfg.norm == "layernorm":
            for tl_ln, ln in norms:
                table[f"{tl}.{tl_ln}.hook_scale"] = f"{block}.{ln}.scale"
                table[f"{tl}.{tl_ln}.hook_normalized"] = f"{block}.{ln}.normalized"
        rotated = cfg.positional == "rotary"
        for s in "qk":
            table[f"{tl}.attn.hook_{s}"] = f"{attn}.{s}_unrotated" if rotated else f"{attn}.{s}"
            if rotated:
                table[f"{tl}.attn.hook_rot_{s}"] = f"{attn}.{s}"
        for tl_name, name in (("hook_v", "v"), ("hook_attn_scores", "scores"), ("hook_pattern", "pattern"),
                              ("hook_z", "z")):
            table[f"{tl}.attn.{tl_name}"] = f"{attn}.{name}"
        table[f"{tl}.hook_attn_out"] = attn
        if not cfg.attn_only:
            if not cfg.parallel_residual:
                table[f"{tl}.hook_resid_mid"] = f"{block}.resid_mid"
            table[f"{tl}.mlp.hook_pre"] = f"{block}.mlp.pre"
            table[f"{tl}.mlp.hook_post"] = f"{block}.mlp.act"
            table[f"{tl}.hook_mlp_out"] = f"{block}.mlp"
        table[f"{tl}.hook_resid_post"] = block
    if cfg.final_norm:
        table["ln_final.hook_scale"] = f"{n.ln_f}.scale"
        table["ln_final.hook_normalized"] = f"{n.ln_f}.normalized"
    table["unembed.hook_in"] = n.ln_f if cfg.final_norm else f"{n.blocks}.{cfg.n_layer - 1}"
    table["unembed.hook_out"] = "logits"
    return types.MappingProxyType(table)
