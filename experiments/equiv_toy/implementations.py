"""Implementations of the subroutines: function-preserving variants of their tracr compilations, and trained
transformers.

Compiled variants. All subroutines of a run are embedded in ONE padded architecture (the largest layer count
plus ``extra_layers``, the widest residual stream plus ``junk_channels``, the most heads plus one, the widest MLP
plus ``junk_mlp``), so every variant of every subroutine stacks into one :class:`Network` and runs under one
compiled ``vmap``. Starting from tracr's weights, a variant may use

* **layer allocation**: the compiled blocks sit at a random offset among the blocks (the others are empty:
  identity on the residual stream);
* **non-circuit components**: the extra heads, MLP units and residual channels get random weights; they read
  the whole residual stream but write only to channels the circuit never reads, so the output is unchanged;
* **residual rotation**: a random orthogonal ``Q`` on the padded residual stream: writers ``W -> W Q``, readers
  ``W -> Q' W`` (no layer norm, so the function is unchanged).

Variant 0 of each subroutine is tracr's model itself, zero-padded (queries rescaled by ``sqrt(d_head' / d_head)``
so the attention logits are tracr's exactly); its residual channels ``[:d]`` are tracr's residual stream.

Trained implementations: small transformers per (subroutine, seed), all trained together by
:func:`experiments.stacked.fit_stacked`, to output the subroutine's tokens and, through linear read-outs of the
residual stream, the values of its categorical intermediate RASP variables (at the depth tracr computes them).

Representations follow the reference code: the residual stream at ``embed`` and after every block, averaged over
positions, flattened to ``(N, (L + 1) * d_model)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxequiv.models.transformer import Transformer, TransformerConfig
from jaxequiv.network import Network
from jaxequiv.sites import run

__all__ = ["Padding", "common_config", "compiled_variants", "substack", "forward", "intermediate_targets",
           "train_imitators"]


@dataclasses.dataclass(frozen=True)
class Padding:
    """Extra capacity of the compiled variants: blocks, residual channels, MLP units (one extra head if > 0)."""

    extra_layers: int = 1
    junk_channels: int = 8
    junk_mlp: int = 8
    junk_scale: float = 0.1


def common_config(configs, pad: Padding) -> TransformerConfig:
    """One architecture holding every compiled program of ``configs`` plus the padding."""
    configs = list(configs)
    first = configs[0]
    for c in configs:
        if (c.vocab_size, c.n_ctx, c.causal) != (first.vocab_size, first.n_ctx, first.causal):
            raise ValueError("compiled subroutines must share vocabulary, length and causality to share an architecture")
    extra_head = 1 if pad.junk_channels else 0
    return dataclasses.replace(
        first, n_layer=max(c.n_layer for c in configs) + pad.extra_layers,
        d_model=max(c.d_model for c in configs) + pad.junk_channels,
        n_head=max(c.n_head for c in configs) + extra_head, d_head=max(c.d_head for c in configs),
        d_mlp=max(c.d_mlp for c in configs) + (pad.junk_mlp if pad.junk_channels else 0),
        d_vocab_out=max(c.d_vocab_out for c in configs),
    )


def _base_weights(model: Transformer) -> dict:
    """tracr weights as numpy arrays: embeddings, per-block q/k/v/o per head and MLP, unembedding."""
    cfg = model.cfg
    h, dh, d = cfg.n_head, cfg.d_head, cfg.d_model
    blocks = []
    for blk in model.h:
        blocks.append({
            "qkv": np.asarray(blk.attn.c_attn.kernel[...]).reshape(d, 3, h, dh),
            "qkv_b": np.asarray(blk.attn.c_attn.bias[...]).reshape(3, h, dh),
            "o": np.asarray(blk.attn.c_proj.kernel[...]).reshape(h, dh, d), "o_b": np.asarray(blk.attn.c_proj.bias[...]),
            "fc": np.asarray(blk.mlp.c_fc.kernel[...]), "fc_b": np.asarray(blk.mlp.c_fc.bias[...]),
            "out": np.asarray(blk.mlp.c_proj.kernel[...]), "out_b": np.asarray(blk.mlp.c_proj.bias[...]),
        })
    return {"wte": np.asarray(model.wte.embedding[...]), "wpe": np.asarray(model.wpe.embedding[...]),
            "unembed": np.asarray(model.lm_head.kernel[...]), "blocks": blocks}


def _pad_to(a: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def _variant_weights(base: dict, cfg: TransformerConfig, pcfg: TransformerConfig, pad: Padding, offset: int,
                     junk: bool, rotate: bool, rng: np.random.Generator) -> dict:
    """Weights of one function-preserving variant in the padded architecture (see module docstring)."""
    d, d2, h, h2, dh, dh2 = cfg.d_model, pcfg.d_model, cfg.n_head, pcfg.n_head, cfg.d_head, pcfg.d_head
    m, m2 = cfg.d_mlp, pcfg.d_mlp
    s = pad.junk_scale if junk else 0.0
    q = np.linalg.qr(rng.normal(size=(d2, d2)))[0] if rotate else np.eye(d2)

    def noise(*shape):
        return s * rng.normal(size=shape)

    wte = _pad_to(base["wte"], (base["wte"].shape[0], d2))
    wpe = _pad_to(base["wpe"], (base["wpe"].shape[0], d2))
    wte[:, d:], wpe[:, d:] = noise(wte.shape[0], d2 - d), noise(wpe.shape[0], d2 - d)
    out = {"wte": wte @ q, "wpe": wpe @ q,
           "unembed": q.T @ _pad_to(base["unembed"], (d2, pcfg.d_vocab_out)), "blocks": []}
    qscale = np.sqrt(dh2 / dh)  # keeps q.k / sqrt(d_head) equal to tracr's logits
    for i in range(pcfg.n_layer):
        qkv, qkv_b = np.zeros((d2, 3, h2, dh2)), np.zeros((3, h2, dh2))
        o, o_b = np.zeros((h2, dh2, d2)), np.zeros(d2)
        fc, fc_b, w_out, out_b = np.zeros((d2, m2)), np.zeros(m2), np.zeros((m2, d2)), np.zeros(d2)
        if 0 <= i - offset < cfg.n_layer:  # a block of the circuit
            b = base["blocks"][i - offset]
            qkv[:d, :, :h, :dh], qkv_b[:, :h, :dh] = b["qkv"], b["qkv_b"]
            qkv[:, 0] *= qscale
            qkv_b[0] *= qscale
            o[:h, :dh, :d], o_b[:d] = b["o"], b["o_b"]
            fc[:d, :m], fc_b[:m], w_out[:m, :d], out_b[:d] = b["fc"], b["fc_b"], b["out"], b["out_b"]
        if junk:  # non-circuit heads and MLP units: read everything, write only to channels the circuit never reads
            qkv[:, :, h:] = noise(d2, 3, h2 - h, dh2)
            o[h:, :, d:] = noise(h2 - h, dh2, d2 - d)
            fc[:, m:] = noise(d2, m2 - m)
            w_out[m:, d:] = noise(m2 - m, d2 - d)
        out["blocks"].append({
            "qkv": np.einsum("rD,Dxhk->rxhk", q.T, qkv).reshape(d2, -1), "qkv_b": qkv_b.reshape(-1),
            "o": (o @ q).reshape(h2 * dh2, d2), "o_b": o_b @ q, "fc": q.T @ fc, "fc_b": fc_b, "out": w_out @ q,
            "out_b": out_b @ q,
        })
    return out


def _load(pcfg: TransformerConfig, w: dict) -> Network:
    """A :class:`Network` of the padded architecture holding weights ``w`` (abstract init: no random weights)."""
    model = nnx.eval_shape(lambda: Transformer(pcfg, nnx.Rngs(0)))

    def put(var, value):
        var.set_value(jnp.asarray(value, jnp.float32))

    put(model.wte.embedding, w["wte"])
    put(model.wpe.embedding, w["wpe"])
    put(model.lm_head.kernel, w["unembed"])
    for blk, b in zip(model.h, w["blocks"]):
        put(blk.attn.c_attn.kernel, b["qkv"])
        put(blk.attn.c_attn.bias, b["qkv_b"])
        put(blk.attn.c_proj.kernel, b["o"])
        put(blk.attn.c_proj.bias, b["o_b"])
        put(blk.mlp.c_fc.kernel, b["fc"])
        put(blk.mlp.c_fc.bias, b["fc_b"])
        put(blk.mlp.c_proj.kernel, b["out"])
        put(blk.mlp.c_proj.bias, b["out_b"])
    return Network.from_module(model, (None,), "int")


def compiled_variants(tracr_models: list, n_variants: int, seed: int, pad: Padding = Padding()) -> Network:
    """``n_variants`` function-preserving variants of each compiled subroutine, all in one stacked :class:`Network`.

    Members are ordered subroutine-major (``P * n_variants``). Variant ``i > 0`` draws a layer offset and switches
    the non-circuit components and the rotation on at random (at least one of the three differs from tracr);
    variant 0 is tracr's model, padded.
    """
    pcfg = common_config([m.config for m in tracr_models], pad)
    rng = np.random.default_rng(seed)
    nets = []
    for m in tracr_models:
        base = _base_weights(m.model)
        for i in range(n_variants):
            offset, junk, rotate = 0, False, False
            if i:
                offset = int(rng.integers(pcfg.n_layer - m.config.n_layer + 1))
                junk, rotate = bool(rng.integers(2)), bool(rng.integers(2))
                junk = junk or not (rotate or offset)
            nets.append(_load(pcfg, _variant_weights(base, m.config, pcfg, pad, offset, junk, rotate, rng)))
    return Network.stack(nets)


def substack(net: Network, start: int, size: int) -> Network:
    """Networks ``start .. start + size - 1`` of a stacked :class:`Network`, still stacked."""
    params = jax.tree_util.tree_map(lambda p: p[start:start + size], net.params)
    return dataclasses.replace(net, params=params, stacked=size)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(apply, n_layer, params, ids):
    names = ["embed", *(f"h.{i}" for i in range(n_layer))]

    def one(p):
        out, cap = run(apply, p, ids, capture=names)
        return out, jnp.stack([cap[k] for k in names], 1)  # [B, T, C], [B, L+1, T, D]

    return jax.vmap(one)(params)


def forward(net: Network, ids: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and residual streams of every member of a stacked :class:`Transformer` network on the same inputs.

    Rows run ``batch`` at a time (the last batch padded), so one architecture and stack size compile once.

    Args:
      net: stacked :class:`Network` (``K`` members).
      ids: ``[N, T]`` token ids.

    Returns:
      ``logits [K, N, T, C]`` and ``resid [K, N, L + 1, T, D]`` (``embed`` and after every block).
    """
    n_layer = sum(1 for k in net.sites(1, tokens=ids.shape[1]) if k.startswith("h.") and k.count(".") == 1)
    n = len(ids)
    padded = np.concatenate([ids, np.repeat(ids[:1], -n % batch, 0)]) if n % batch else ids
    outs, resids = [], []
    for start in range(0, len(padded), batch):
        o, r = _forward(net.apply, n_layer, net.params, jnp.asarray(padded[start:start + batch]))
        outs.append(np.asarray(o))
        resids.append(np.asarray(r))
    return np.concatenate(outs, 1)[:, :n], np.concatenate(resids, 1)[:, :n]


def intermediate_targets(resid: np.ndarray, labels, out_labels: set[str]) -> list[tuple[int, np.ndarray]]:
    """Values of a program's categorical intermediate variables, read off tracr's residual stream.

    Args:
      resid: ``[N, L + 1, T, D']`` residual stream of the padded tracr model (variant 0; channels ``[:len(labels)]``
        are tracr's).
      labels: tracr's residual labels; ``out_labels``: the output space's labels (not probed).

    Returns:
      one ``(block, values [N, T])`` per variable: ``block`` is the first block after which it is written,
      ``values`` the index of its active basis direction, ``-1`` where none is active (e.g. at BOS).
    """
    groups: dict[str, list[int]] = {}
    for j, label in enumerate(labels):
        name = label.rsplit(":", 1)[0] if ":" in label else None
        if name and name not in ("tokens", "indices") and label not in out_labels:
            groups.setdefault(name, []).append(j)
    out = []
    for cols in groups.values():
        if len(cols) < 2:
            continue
        for i in range(1, resid.shape[1]):
            vals = resid[:, i][..., cols]
            if np.abs(vals).max() > 0.5:
                target = np.where(vals.max(-1) > 0.5, vals.argmax(-1), -1)
                out.append((i - 1, target.astype(np.int32)))
                break
    return out


def _masked_ce(logits, target):
    """Mean cross-entropy over entries with ``target >= 0``; ``logits [..., C]``, ``target [...]``."""
    valid = target >= 0
    ll = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(target, 0)[..., None], -1)[..., 0]
    return -(ll * valid).sum() / jnp.maximum(valid.sum(), 1)


def train_imitators(
    ids: np.ndarray, targets: np.ndarray, probes: np.ndarray, probe_blocks: np.ndarray, cfg: TransformerConfig,
    seeds: int, steps: int, batch_size: int = 128, lr: float = 3e-3, probe_weight: float = 1.0, seed: int = 0,
) -> tuple[Network, np.ndarray]:
    """Train ``seeds`` transformers per task, all tasks and seeds in one :func:`~experiments.stacked.fit_stacked` job.

    Args:
      ids: ``[P, N, T]`` inputs of each of ``P`` tasks (subroutines).
      targets: ``[P, N, T]`` output class per position (``-1`` = not scored, e.g. BOS).
      probes: ``[P, N, G, T]`` intermediate-variable classes (``-1`` = absent / padding).
      probe_blocks: ``[P, G]`` block after which each intermediate variable is read out.
      cfg: architecture shared by all models; ``seeds`` models per task.

    Returns:
      the trained models as one stacked :class:`Network` ordered task-major (``P * seeds`` entries), and the
      training losses ``[steps, P * seeds]``.
    """
    from experiments.stacked import fit_stacked

    P, N, _ = ids.shape
    G = probes.shape[2]
    n_cls = max(int(probes.max()) + 1, 2)
    nets = [Network.from_module(Transformer(cfg, nnx.Rngs(seed * 1000 + p * seeds + s)), (None,), "int")
            for p in range(P) for s in range(seeds)]
    net = Network.stack(nets)
    readout = jax.random.normal(jax.random.key(seed), (P * seeds, G, cfg.d_model, n_cls)) / np.sqrt(cfg.d_model)
    task = np.repeat(np.arange(P), seeds)
    blocks = np.broadcast_to(probe_blocks[:, None, :], (P, N, G))  # per row, so it batches like the data
    names = [f"h.{i}" for i in range(cfg.n_layer)]

    def loss_fn(p, x, y, pr, pb):
        logits, cap = run(net.apply, p["model"], x, capture=names)
        resid = jnp.stack([cap[k] for k in names])  # [L, B, T, D]
        at = resid[pb[0]]  # [G, B, T, D]
        probe_logits = jnp.einsum("gbtd,gdc->bgtc", at, p["readout"])
        return _masked_ce(logits, y) + probe_weight * _masked_ce(probe_logits, pr)

    params, losses = fit_stacked(
        {"model": net.params, "readout": readout}, loss_fn, tuple(a[task] for a in (ids, targets, probes, blocks)),
        steps=steps, batch_size=batch_size, seed=seed, stacked_arrays=True,
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)),
    )
    return net.replace_params(params["model"]), losses
