"""Implementations of a subroutine: function-preserving variants of its tracr compilation, and trained transformers.

Compiled variants (all variants of one subroutine share one padded architecture, so they stack and run under one
``vmap``): starting from tracr's weights,

* **layer allocation**: the compiled blocks sit at a random offset inside ``n_layer + extra_layers`` blocks (the
  other blocks are empty: identity on the residual stream);
* **non-circuit components**: an extra attention head and extra MLP units in every block, and extra residual
  channels, with random weights; they read the whole residual stream but write only to the extra channels, which
  nothing of the circuit reads, so the output is unchanged;
* **residual rotation**: a random orthogonal ``Q`` on the (padded) residual stream: writers ``W -> W Q``, readers
  ``W -> Q' W`` (no layer norm, so the function is unchanged).

Trained implementations: one small transformer per (subroutine, seed), all trained together by one jitted step
``vmap``-ed over the stacked parameters, to output the subroutine's tokens and, through linear read-outs of the
residual stream, the values of its intermediate RASP variables (at the depth tracr computes them).

Representations follow the reference code: the residual stream at ``embed`` and after every block, averaged over
positions, flattened to ``(N, (L + 1) * d_model)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxequiv.models.transformer import Transformer, TransformerConfig
from jaxequiv.network import Network
from jaxequiv.sites import run

__all__ = ["Padding", "compiled_variants", "substack", "reprs_and_outputs", "intermediate_targets", "train_imitators"]


@dataclasses.dataclass(frozen=True)
class Padding:
    """Extra capacity of the compiled variants: blocks, residual channels, MLP units (one extra head if > 0)."""

    extra_layers: int = 1
    junk_channels: int = 8
    junk_mlp: int = 8
    junk_scale: float = 0.1


def _base_weights(model: Transformer) -> dict:
    """tracr weights as numpy arrays: embeddings, per-block q/k/v/o per head and MLP, unembedding."""
    cfg = model.cfg
    h, dh, d = cfg.n_head, cfg.d_head, cfg.d_model
    blocks = []
    for blk in model.h:
        w = np.asarray(blk.attn.c_attn.kernel[...]).reshape(d, 3, h, dh)
        b = np.asarray(blk.attn.c_attn.bias[...]).reshape(3, h, dh)
        blocks.append({
            "qkv": w, "qkv_b": b, "o": np.asarray(blk.attn.c_proj.kernel[...]).reshape(h, dh, d),
            "o_b": np.asarray(blk.attn.c_proj.bias[...]), "fc": np.asarray(blk.mlp.c_fc.kernel[...]),
            "fc_b": np.asarray(blk.mlp.c_fc.bias[...]), "out": np.asarray(blk.mlp.c_proj.kernel[...]),
            "out_b": np.asarray(blk.mlp.c_proj.bias[...]),
        })
    return {"wte": np.asarray(model.wte.embedding[...]), "wpe": np.asarray(model.wpe.embedding[...]),
            "unembed": np.asarray(model.lm_head.kernel[...]), "blocks": blocks}


def padded_config(cfg: TransformerConfig, pad: Padding) -> TransformerConfig:
    extra_head = 1 if pad.junk_channels else 0
    return dataclasses.replace(
        cfg, n_layer=cfg.n_layer + pad.extra_layers, d_model=cfg.d_model + pad.junk_channels,
        n_head=cfg.n_head + extra_head, d_mlp=cfg.d_mlp + (pad.junk_mlp if pad.junk_channels else 0),
    )


def _variant(base: dict, cfg: TransformerConfig, pcfg: TransformerConfig, pad: Padding, offset: int,
             junk: bool, rotate: bool, rng: np.random.Generator) -> Transformer:
    """One function-preserving variant of the compiled model (see module docstring)."""
    d, d2, h, h2, dh = cfg.d_model, pcfg.d_model, cfg.n_head, pcfg.n_head, cfg.d_head
    m, m2 = cfg.d_mlp, pcfg.d_mlp
    s = pad.junk_scale if junk else 0.0
    q = np.linalg.qr(rng.normal(size=(d2, d2)))[0] if rotate else np.eye(d2)

    def noise(*shape):
        return s * rng.normal(size=shape)

    model = Transformer(pcfg, nnx.Rngs(0))
    wte = np.concatenate([base["wte"], noise(base["wte"].shape[0], d2 - d)], 1)
    wpe = np.concatenate([base["wpe"], noise(base["wpe"].shape[0], d2 - d)], 1)
    model.wte.embedding[...] = wte @ q
    model.wpe.embedding[...] = wpe @ q
    model.lm_head.kernel[...] = q.T @ np.concatenate([base["unembed"], np.zeros((d2 - d, base["unembed"].shape[1]))])
    for i, blk in enumerate(model.h):
        qkv, qkv_b = np.zeros((d2, 3, h2, dh)), np.zeros((3, h2, dh))
        o, o_b = np.zeros((h2, dh, d2)), np.zeros(d2)
        fc, fc_b, out, out_b = np.zeros((d2, m2)), np.zeros(m2), np.zeros((m2, d2)), np.zeros(d2)
        if 0 <= i - offset < cfg.n_layer:  # a block of the circuit
            b = base["blocks"][i - offset]
            qkv[:d, :, :h], qkv_b[:, :h], o[:h, :, :d], o_b[:d] = b["qkv"], b["qkv_b"], b["o"], b["o_b"]
            fc[:d, :m], fc_b[:m], out[:m, :d], out_b[:d] = b["fc"], b["fc_b"], b["out"], b["out_b"]
        if h2 > h:  # non-circuit head and MLP units: read everything, write only to the extra channels
            qkv[:, :, h:] = noise(d2, 3, h2 - h, dh)
            o[h:, :, d:] = noise(h2 - h, dh, d2 - d)
            fc[:, m:] = noise(d2, m2 - m)
            out[m:, d:] = noise(m2 - m, d2 - d)
        blk.attn.c_attn.kernel[...] = np.einsum("rD,Dxhk->rxhk", q.T, qkv).reshape(d2, -1)
        blk.attn.c_attn.bias[...] = qkv_b.reshape(-1)
        blk.attn.c_proj.kernel[...] = (o @ q).reshape(h2 * dh, d2)
        blk.attn.c_proj.bias[...] = o_b @ q
        blk.mlp.c_fc.kernel[...] = q.T @ fc
        blk.mlp.c_fc.bias[...] = fc_b
        blk.mlp.c_proj.kernel[...] = out @ q
        blk.mlp.c_proj.bias[...] = out_b @ q
    return model


def compiled_variants(tracr_model, n_variants: int, seed: int, pad: Padding = Padding()) -> Network:
    """``n_variants`` function-preserving variants of a compiled subroutine, stacked into one :class:`Network`.

    Variant ``i`` draws a layer offset, and switches the non-circuit components and the rotation on at random
    (variant 0 is tracr's model itself, padded).
    """
    cfg = tracr_model.config
    pcfg = padded_config(cfg, pad)
    base = _base_weights(tracr_model.model)
    rng = np.random.default_rng(seed)
    nets = []
    for i in range(n_variants):
        offset = int(rng.integers(pad.extra_layers + 1)) if i else 0
        junk, rotate = (bool(rng.integers(2)), bool(rng.integers(2))) if i else (False, False)
        if i and not (junk or rotate or offset):
            junk = True  # every variant but the first differs from tracr's allocation somehow
        nets.append(Network.from_module(_variant(base, cfg, pcfg, pad, offset, junk, rotate, rng), (None,), "int"))
    return Network.stack(nets)


def substack(net: Network, start: int, size: int) -> Network:
    """Networks ``start .. start + size - 1`` of a stacked :class:`Network`, still stacked."""
    params = jax.tree_util.tree_map(lambda p: p[start:start + size], net.params)
    return dataclasses.replace(net, params=params, stacked=size)


def reprs_and_outputs(net: Network, ids: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Representations and argmax outputs of every network of a stack on the same inputs.

    Args:
      net: stacked :class:`Network` (``S`` parameter sets) of a :class:`Transformer`.
      ids: ``[N, T]`` token ids.

    Returns:
      ``reprs [S, N, (L + 1) * D]``: the residual stream at ``embed`` and after every block, averaged over
      positions; ``outputs [S, N, T]``: argmax output class per position.
    """
    n_layer = len([k for k in net.sites(1, tokens=ids.shape[1]) if k.startswith("h.") and k.count(".") == 1])
    names = ["embed", *(f"h.{i}" for i in range(n_layer))]

    @jax.jit
    def one(params, x):
        def apply(p):
            out, cap = run(net.apply, p, x, capture=names)
            r = jnp.stack([cap[k].mean(1) for k in names], 1)  # [B, L+1, D]
            return r.reshape(r.shape[0], -1), out.argmax(-1)

        return jax.vmap(apply)(params)

    reprs, outs = [], []
    for start in range(0, len(ids), batch):
        r, o = one(net.params, jnp.asarray(ids[start:start + batch]))
        reprs.append(np.asarray(r))
        outs.append(np.asarray(o))
    return np.concatenate(reprs, 1), np.concatenate(outs, 1)


def intermediate_targets(tracr_model, ids: np.ndarray, out_labels: set[str]) -> list[tuple[int, np.ndarray]]:
    """Values of the program's categorical intermediate variables, read off tracr's residual stream.

    Returns one ``(block, values [N, T])`` per variable: ``block`` is the first block after which it is written,
    ``values`` the index of its active basis direction, ``-1`` where none is active (e.g. at BOS).
    """
    m = tracr_model
    names = [f"h.{i}" for i in range(m.config.n_layer)]
    _, cap = run(m.model, jnp.asarray(ids), capture=names)
    groups: dict[str, list[int]] = {}
    for j, label in enumerate(m.residual_labels):
        name = label.rsplit(":", 1)[0] if ":" in label else None
        if name and name not in ("tokens", "indices") and label not in out_labels:
            groups.setdefault(name, []).append(j)
    out = []
    for cols in groups.values():
        if len(cols) < 2:
            continue
        for i, k in enumerate(names):
            vals = np.asarray(cap[k])[..., cols]
            if np.abs(vals).max() > 0.5:
                target = np.where(vals.max(-1) > 0.5, vals.argmax(-1), -1)
                out.append((i, target.astype(np.int32)))
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
    """Train ``seeds`` transformers per task, all tasks and seeds in one vmapped job.

    Args:
      ids: ``[P, N, T]`` inputs of each of ``P`` tasks (subroutines).
      targets: ``[P, N, T]`` output class per position (``-1`` = not scored, e.g. BOS).
      probes: ``[P, G, N, T]`` intermediate-variable classes (``-1`` = absent / padding).
      probe_blocks: ``[P, G]`` block after which each intermediate variable is read out.
      cfg: architecture shared by all models; ``seeds`` models per task.

    Returns:
      the trained models as one stacked :class:`Network` ordered ``task-major`` (``P * seeds`` entries), and the
      training loss curve ``[steps // 50 + 1, P * seeds]``.
    """
    P, N, _ = ids.shape
    G = probes.shape[1]
    n_cls = max(int(probes.max()) + 1, 2)
    nets = [Network.from_module(Transformer(cfg, nnx.Rngs(seed * 1000 + p * seeds + s)), (None,), "int")
            for p in range(P) for s in range(seeds)]
    net = Network.stack(nets)
    key = jax.random.PRNGKey(seed)
    readout = jax.random.normal(key, (P * seeds, G, cfg.d_model, n_cls)) / np.sqrt(cfg.d_model)
    params = {"model": net.params, "readout": readout}
    task = np.repeat(np.arange(P), seeds)
    data = tuple(jnp.asarray(a[task]) for a in (ids, targets, probes, probe_blocks))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    opt = jax.vmap(tx.init)(params)
    names = [f"h.{i}" for i in range(cfg.n_layer)]

    def loss_fn(p, x, y, pr, pb):
        logits, cap = run(net.apply, p["model"], x, capture=names)
        resid = jnp.stack([cap[k] for k in names])  # [L, B, T, D]
        at = resid[pb]  # [G, B, T, D]
        probe_logits = jnp.einsum("gbtd,gdc->gbtc", at, p["readout"])
        return _masked_ce(logits, y) + probe_weight * _masked_ce(probe_logits, pr)

    @jax.jit
    def steps_fn(params, opt, key):
        def step(carry, k):
            params, opt = carry
            idx = jax.random.randint(k, (batch_size,), 0, N)

            def one(p, o, x, y, pr, pb):
                loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx], pr[:, idx], pb)
                upd, o = tx.update(g, o, p)
                return optax.apply_updates(p, upd), o, loss

            params, opt, loss = jax.vmap(one)(params, opt, *data)
            return (params, opt), loss

        (params, opt), losses = jax.lax.scan(step, (params, opt), jax.random.split(key, 50))
        return params, opt, losses[-1]

    curve = []
    for i in range(max(steps // 50, 1)):
        params, opt, loss = steps_fn(params, opt, jax.random.fold_in(key, i))
        curve.append(np.asarray(loss))
    return net.replace_params(params["model"]), np.stack(curve)
