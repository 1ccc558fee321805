"""BERT encoder in the Hugging Face ``BertModel`` layout, flax nnx, with mean pooling for sentence embeddings.

Attribute paths equal HF's ``state_dict`` keys up to the parameter name: ``embeddings.word_embeddings`` /
``position_embeddings`` / ``token_type_embeddings`` / ``LayerNorm``; ``encoder.layer[i].attention.self.query``
/ ``key`` / ``value``, ``attention.output.dense`` / ``LayerNorm``, ``intermediate.dense``, ``output.dense`` /
``LayerNorm``; ``pooler.dense`` (optional). Post-norm blocks, absolute positions.

Sites (``B`` batch, ``T`` tokens, ``H`` heads):

- ``embeddings`` [B,T,D] (batch, token, channel): normed sum of word, position and token-type embeddings;
- ``encoder.layer.{i}.attention.self.q`` / ``.k`` / ``.v`` / ``.z`` [B,T,H,dh] (batch, token, head, channel)
  and ``.pattern`` [B,H,T,T] (batch, head, query, key);
- ``encoder.layer.{i}.attention`` [B,T,D]: output of the attention sub-layer (after its residual LayerNorm);
- ``encoder.layer.{i}.intermediate`` [B,T,d_ff]: MLP hidden after GELU;
- ``encoder.layer.{i}`` [B,T,D]: layer output (HF ``hidden_states[i + 1]``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxequiv.io.config import DictConfig
from jaxequiv.models.transformer import ACTIVATIONS, TOKEN_AXES, attention, check_tokens
from jaxequiv.sites import site

__all__ = ["BertConfig", "BertModel", "mean_pool", "sentence_embedding"]


@dataclasses.dataclass(frozen=True)
class BertConfig(DictConfig):
    """Sizes of a BERT encoder (HF field names). ``hidden_act``: ``"gelu"`` (exact), ``"gelu_tanh"``, ``"relu"``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pooler: bool = True

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not one of {tuple(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")


def _ln(cfg: BertConfig, rngs):
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)


class _Dense(nnx.Module):
    """``dense`` (+ ``LayerNorm`` of ``dense(x) + residual`` when ``norm``), like HF's BertSelfOutput/BertOutput."""

    def __init__(self, d_in: int, d_out: int, cfg: BertConfig, rngs: nnx.Rngs, norm: bool):
        self.dense = nnx.Linear(d_in, d_out, rngs=rngs)
        if norm:
            self.LayerNorm = _ln(cfg, rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.word_embeddings = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, d, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
        self.LayerNorm = _ln(cfg, rngs)

    def __call__(self, ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        pos = self.position_embeddings(jnp.arange(ids.shape[1]))[None]
        return self.LayerNorm(self.word_embeddings(ids) + pos + self.token_type_embeddings(token_type_ids))


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask, prefix: str) -> jax.Array:
        b, t, d = x.shape
        heads = lambda a: a.reshape(b, t, self.num_heads, d // self.num_heads)  # noqa: E731
        z = attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), prefix, causal=False,
                      key_mask=key_mask)
        return z.reshape(b, t, d)


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.self = BertSelfAttention(cfg, rngs)
        self.output = _Dense(cfg.hidden_size, cfg.hidden_size, cfg, rngs, norm=True)

    def __call__(self, x: jax.Array, key_mask, prefix: str) -> jax.Array:
        z = self.self(x, key_mask, f"{prefix}.self")
        return site(prefix, self.output.LayerNorm(self.output.dense(z) + x), TOKEN_AXES)


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.attention = BertAttention(cfg, rngs)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size, cfg, rngs, norm=False)
        self.output = _Dense(cfg.intermediate_size, cfg.hidden_size, cfg, rngs, norm=True)

    def __call__(self, x: jax.Array, key_mask, prefix: str) -> jax.Array:
        a = self.attention(x, key_mask, f"{prefix}.attention")
        h = site(f"{prefix}.intermediate", self.act(self.intermediate.dense(a)), TOKEN_AXES)
        return site(prefix, self.output.LayerNorm(self.output.dense(h) + a), TOKEN_AXES)


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.dense = nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs)


class BertModel(nnx.Module):
    """``model(input_ids [B,T] int, attention_mask [B,T] | None, token_type_ids [B,T] | None)``
    -> last hidden state [B,T,D]. ``attention_mask``: 1 for real tokens, 0 for padding (masked as keys)."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs)
        self.encoder = BertEncoder(cfg, rngs)
        self.pooler = BertPooler(cfg, rngs) if cfg.pooler else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> jax.Array:
        ids = jnp.asarray(input_ids)
        check_tokens(ids, attention_mask, self.cfg.max_position_embeddings)
        types = jnp.zeros_like(ids) if token_type_ids is None else jnp.asarray(token_type_ids)
        x = site("embeddings", self.embeddings(ids, types), TOKEN_AXES)
        key_mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        for i, layer in enumerate(self.encoder.layer):
            x = layer(x, key_mask, f"encoder.layer.{i}")
        return x

    def pool(self, hidden: jax.Array) -> jax.Array:
        """HF ``pooler_output``: ``tanh(dense(hidden[:, 0]))`` [B, D]."""
        if self.pooler is None:
            raise ValueError("this BertModel has no pooler (BertConfig.pooler=False)")
        return jnp.tanh(self.pooler.dense(hidden[:, 0]))


def mean_pool(hidden: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """Mean of token vectors over real tokens: [B,T,D], [B,T] -> [B,D] (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(axis=1)
    m = jnp.asarray(attention_mask, hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def sentence_embedding(model: BertModel, input_ids, attention_mask=None, token_type_ids=None,
                       normalize: bool = True) -> jax.Array:
    """Sentence embeddings [B, D]: mean-pooled last hidden state, L2-normalised (as all-MiniLM-L6-v2)."""
    pooled = mean_pool(model(input_ids, attention_mask, token_type_ids), attention_mask)
    if not normalize:
        return pooled
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
