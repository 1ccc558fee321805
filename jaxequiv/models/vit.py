"""Vision Transformer in timm's ``vit_base_patch16_224`` layout (configurable sizes), flax nnx, NHWC input.

Attribute paths equal timm's ``state_dict`` keys up to the parameter name: ``patch_embed.proj`` (conv, kernel =
stride = patch), ``cls_token`` [1,1,D], ``pos_embed`` [1,1+N,D], ``blocks[i].norm1``, ``blocks[i].attn.qkv``
(fused, ``[q | k | v]`` over all heads), ``blocks[i].attn.proj``, ``blocks[i].norm2``, ``blocks[i].mlp.fc1`` /
``fc2`` (exact GELU), ``norm``, ``head``. Class-token pooling, pre-norm blocks, LayerNorm eps 1e-6.

Sites (``B`` batch, ``T = 1 + N`` tokens with the class token first, ``H`` heads):

- ``patch_embed`` [B,h,w,D] (batch, height, width, channel): patch embeddings before flattening;
- ``embed`` [B,T,D] (batch, token, channel): tokens with class token and position embedding (residual stream
  before block 0);
- ``blocks.{i}.attn.q`` / ``.k`` / ``.v`` / ``.z`` [B,T,H,dh] (batch, token, head, channel), ``.pattern``
  [B,H,T,T] (batch, head, query, key); ``z`` is the input of ``attn.proj`` per head;
- ``blocks.{i}.attn`` [B,T,D] attention output; ``blocks.{i}.mlp.act`` [B,T,mlp_dim] (input of ``mlp.fc2``);
  ``blocks.{i}.mlp`` [B,T,D]; ``blocks.{i}`` [B,T,D] residual after the block;
- ``norm`` [B,T,D] final normed tokens; ``head`` [B,num_classes] (batch, channel) logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxequiv.io.config import DictConfig
from jaxequiv.models.transformer import TOKEN_AXES, attention
from jaxequiv.sites import site

__all__ = ["ViTConfig", "VisionTransformer"]


@dataclasses.dataclass(frozen=True)
class ViTConfig(DictConfig):
    """Sizes of a ViT; the defaults are timm's ``vit_base_patch16_224``.

    ``mlp_dim`` defaults to ``4 * embed_dim``; ``img_size`` must be a multiple of ``patch_size``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None
    ln_eps: float = 1e-6

    def __post_init__(self):
        for f in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ViTConfig.{f} must be a positive int, got {v!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.mlp_dim is None:
            object.__setattr__(self, "mlp_dim", 4 * self.embed_dim)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.proj = nnx.Conv(cfg.in_chans, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, h, w, D]."""
        return self.proj(x)


class Attention(nnx.Module):
    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.qkv = nnx.Linear(cfg.embed_dim, 3 * cfg.embed_dim, rngs=rngs)
        self.proj = nnx.Linear(cfg.embed_dim, cfg.embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, prefix: str) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (a.reshape(b, t, self.num_heads, d // self.num_heads) for a in jnp.split(self.qkv(x), 3, -1))
        z = attention(q, k, v, prefix, causal=False)
        return site(prefix, self.proj(z.reshape(b, t, d)), TOKEN_AXES)


class Mlp(nnx.Module):
    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.embed_dim, cfg.mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, prefix: str) -> jax.Array:
        h = site(f"{prefix}.act", jax.nn.gelu(self.fc1(x), approximate=False), TOKEN_AXES)
        return site(prefix, self.fc2(h), TOKEN_AXES)


class Block(nnx.Module):
    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.ln_eps, rngs=rngs)
        self.attn = Attention(cfg, rngs)
        self.norm2 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.ln_eps, rngs=rngs)
        self.mlp = Mlp(cfg, rngs)

    def __call__(self, x: jax.Array, prefix: str) -> jax.Array:
        x = x + self.attn(self.norm1(x), f"{prefix}.attn")
        x = x + self.mlp(self.norm2(x), f"{prefix}.mlp")
        return site(prefix, x, TOKEN_AXES)


class VisionTransformer(nnx.Module):
    """``model(images [B, H, W, C] float) -> logits [B, num_classes]`` (class-token pooling)."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, rngs)
        self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, d)))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + cfg.grid**2, d)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.depth)])
        self.norm = nnx.LayerNorm(d, epsilon=cfg.ln_eps, rngs=rngs)
        self.head = nnx.Linear(d, cfg.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        want = (cfg.img_size, cfg.img_size, cfg.in_chans)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            hint = "; it looks like NCHW: use x.transpose(0, 2, 3, 1)" if x.ndim == 4 and x.shape[1] == cfg.in_chans else ""
            raise ValueError(f"ViT expects NHWC images [batch, {', '.join(map(str, want))}], got {tuple(x.shape)}{hint}")
        patches = site("patch_embed", self.patch_embed(x), ("batch", "height", "width", "channel"))
        b = x.shape[0]
        tokens = patches.reshape(b, -1, cfg.embed_dim)
        cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (b, 1, cfg.embed_dim))
        h = site("embed", jnp.concatenate([cls, tokens], axis=1) + self.pos_embed[...], TOKEN_AXES)
        for i, block in enumerate(self.blocks):
            h = block(h, f"blocks.{i}")
        h = site("norm", self.norm(h), TOKEN_AXES)
        return site("head", self.head(h[:, 0]), ("batch", "channel"))
