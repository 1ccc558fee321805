"""Training SAEs with optax: one (:func:`train`) or many in lock-step (:func:`train_many`).

``train_many`` groups the configs by their static fields (variant, widths, k, ...); inside a group the configs,
params, optimiser states and statistics are stacked and the step is ``jax.vmap``-ed; all groups advance together
in one jitted ``lax.scan`` over a chunk of steps. All SAEs see the same shuffled batches (``data_seed``); each
SAE's own ``seed`` sets its initial weights and its dropout stream. ``train`` is ``train_many`` of one SAE.
Under ``vmap`` a ``lax.cond`` runs both branches, so for a variant with an auxiliary loss that is usually off
(``has_aux_loss``: TopK's AuxK) a group asks ``aux_needed(state)`` and runs the auxiliary loss only on steps where
some SAE of it needs it (a group of one runs unbatched, where the variant's own ``lax.cond`` skips it).

Runs are deterministic for (seeds, data_seed, settings) and resumable: with ``checkpoint_dir`` the whole state
is written atomically every ``checkpoint_every`` steps and a restarted run continues from it with identical
results. A non-finite loss or parameter stops training with :class:`TrainingDiverged`, leaving the last good
checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxequiv.io.arrays import read_npz
from jaxequiv.io.files import atomic_path
from jaxequiv.io.progress import progress_bar
from jaxequiv.rng import as_key
from jaxequiv.sae import variants as V
from jaxequiv.sae.data import BatchStream
from jaxequiv.sae.interface import SAE

__all__ = ["TrainSettings", "TrainResult", "TrainingDiverged", "train", "train_many", "make_optimizer",
           "codec_sweep", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.npz"


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN/Inf."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Shared training settings.

    Attributes:
      batch_size: rows per step. steps / epochs: run length (give one; epochs may be fractional).
      lr: Adam learning rate. schedule: "constant", "cosine" or "linear" decay to ``lr * final_lr_frac`` after
        ``warmup_steps`` of linear warm-up. plateau: multiply by ``plateau_factor`` when the epoch-mean loss has
        not improved (rtol 1e-4) for ``plateau_patience`` epochs (CODEC's ReduceLROnPlateau).
      data_seed: shuffling seed (None: the first SAE's seed). log_every: steps per compiled chunk and per
        history entry. checkpoint_every: steps between checkpoints (a multiple of log_every).
      dead_window: a latent not active for this many steps counts as dead in the history.
    """

    batch_size: int = 128
    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_frac: float = 0.0
    plateau: bool = False
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    data_seed: int | None = None
    log_every: int = 100
    checkpoint_every: int | None = None
    dead_window: int = 1000

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"TrainSettings: give exactly one of steps or epochs, got steps={self.steps}, "
                             f"epochs={self.epochs}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"TrainSettings: schedule must be 'constant', 'cosine' or 'linear', got {self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainSettings: lr must be a positive finite float, got {self.lr}")
        if self.log_every < 1:
            raise ValueError(f"TrainSettings: log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every is not None and (self.checkpoint_every < 1
                                                  or self.checkpoint_every % self.log_every):
            raise ValueError(f"TrainSettings: checkpoint_every ({self.checkpoint_every}) must be a positive multiple "
                             f"of log_every ({self.log_every})")

    def total_steps(self, steps_per_epoch: int) -> int:
        n = self.steps if self.steps is not None else int(round(self.epochs * steps_per_epoch))
        if n < 1:
            raise ValueError(f"TrainSettings: the run has {n} steps; raise steps/epochs")
        return n


@dataclasses.dataclass
class TrainResult:
    """A trained SAE: its config, params, statistics state, seed, steps done and logged history."""

    cfg: Any
    params: dict
    state: dict
    seed: int
    step: int
    history: list[dict]


def make_optimizer(settings: TrainSettings, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the settings' schedule; with ``plateau`` the step is scaled by optax's reduce_on_plateau
    (pass ``value=loss`` to ``update``), which accumulates the loss over one epoch."""
    s = settings
    warm = min(s.warmup_steps, total_steps)
    end = s.lr * s.final_lr_frac
    if s.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, s.lr, warm, max(total_steps, warm + 1), end)
    else:
        tail = (optax.constant_schedule(s.lr) if s.schedule == "constant"
                else optax.linear_schedule(s.lr, end, max(total_steps - warm, 1)))
        sched = optax.join_schedules([optax.linear_schedule(0.0, s.lr, warm), tail], [warm]) if warm else tail
    parts = [optax.adam(sched, b1=s.adam_b1, b2=s.adam_b2)]
    if s.plateau:
        parts.append(optax.contrib.reduce_on_plateau(factor=s.plateau_factor, patience=s.plateau_patience,
                                                     rtol=1e-4, accumulation_size=steps_per_epoch))
    return optax.chain(*parts)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _group(configs) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c.static_key(), []).append(i)
    return list(groups.values())


@jax.jit
def _init_params(cfg, keys):
    """Stacked initial params and statistics of a stacked group of configs, one compiled call."""
    return jax.vmap(lambda c, k: (c.post_update(c.init(jax.random.fold_in(k, 0))), c.init_state()))(cfg, keys)


def _init_group(cfgs, seeds, tx):
    keys = jnp.stack([as_key(s, "seed") for s in seeds])
    cfg = _stack(cfgs)
    params, state = _init_params(cfg, keys)
    opt = jax.vmap(tx.init)(params)
    return cfg, keys, (params, opt, state)


def _chunk_fn(settings: TrainSettings, total: int, steps_per_epoch: int):
    """Optimiser and jit(carry, bad, xs, steps) -> (carry, bad, sums): a scan of vmapped steps over every group.
    Runs whose settings differ only in what the compiled step does not read (length, batch size, seeds,
    logging) share one cached function, hence its compiled code."""
    decays = settings.schedule != "constant" or settings.warmup_steps > 0
    step_settings = dataclasses.replace(settings, steps=1, epochs=None, batch_size=1, data_seed=None, log_every=1,
                                        checkpoint_every=None, dead_window=1)
    return _compiled_chunk(step_settings, total if decays else 0, steps_per_epoch if settings.plateau else 0)


@functools.lru_cache(maxsize=32)
def _compiled_chunk(settings: TrainSettings, total: int, steps_per_epoch: int):
    tx = make_optimizer(settings, total, steps_per_epoch)

    def sae_step(cfg, key, params, opt, state, x, step, with_aux=True):
        kstep = jax.random.fold_in(jax.random.fold_in(key, 1), step)

        def objective(p):
            out = cfg.loss(p, x, kstep, state, with_aux=with_aux)
            return out.loss, out

        (loss, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, new_opt = tx.update(grads, opt, params, value=loss)
        new_params = cfg.post_update(optax.apply_updates(params, updates))
        new_state = cfg.update_state(state, out)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(new_params)]))
        return (new_params, new_opt, new_state), finite, jnp.stack([loss, out.mse, out.l0.astype(jnp.float32)])

    def body(carry, inp):
        groups, bad = carry
        x, step = inp
        new_groups, new_bad, mets = [], [], []
        for (cfg, keys, trio), b in zip(groups, bad):
            if b.shape[0] == 1:  # a lone SAE runs unbatched, so lax.cond (e.g. AuxK) still skips work
                one = jax.tree_util.tree_map(lambda a: a[0], (cfg, keys, trio))
                out = sae_step(one[0], one[1], *one[2], x, step)
                new, finite, m = jax.tree_util.tree_map(lambda a: a[None], out)
            else:
                group_step = lambda with_aux: jax.vmap(  # noqa: E731
                    functools.partial(sae_step, with_aux=with_aux), in_axes=(0, 0, 0, 0, 0, None, None))(
                    cfg, keys, *trio, x, step)
                if cfg.has_aux_loss:  # skip the auxiliary loss unless some SAE of the group needs it
                    need = jnp.any(jax.vmap(type(cfg).aux_needed)(cfg, trio[2]))
                    new, finite, m = jax.lax.cond(need, lambda: group_step(True), lambda: group_step(False))
                else:
                    new, finite, m = group_step(True)
            ok = finite & (b < 0)
            # an SAE that went non-finite keeps stepping (the SAEs are independent); the loop raises after the chunk
            # without using this carry, so the last good state is the checkpoint on disk
            new_groups.append((cfg, keys, new))
            new_bad.append(jnp.where((b < 0) & ~finite, step, b))
            mets.append(jnp.where(ok[:, None], m, 0.0))
        return (tuple(new_groups), tuple(new_bad)), tuple(mets)

    @functools.partial(jax.jit, donate_argnums=(0,))  # params/optimiser buffers are updated in place
    def chunk(groups, bad, xs, steps):
        (groups, bad), mets = jax.lax.scan(body, (groups, bad), (xs, steps))
        return groups, bad, tuple(m.sum(axis=0) for m in mets)

    return tx, chunk


# -- checkpoints -----------------------------------------------------------------------------------------------
def _meta(configs, seeds, settings, data_shape):
    return {"configs": [{"variant": c.name, **c.config_dict()} for c in configs], "seeds": list(seeds),
            "settings": dataclasses.asdict(settings), "data_shape": list(data_shape)}


def _save_checkpoint(path, trios, step, meta, history):
    leaves = jax.tree_util.tree_leaves(trios)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["meta"] = np.array(json.dumps({**meta, "step": step, "history": history}))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_checkpoint(path, trios, meta):
    z = read_npz(path, hint="delete it to restart training from step 0, or train into a fresh output folder")
    saved = json.loads(str(z["meta"]))
    leaves = [z[f"leaf_{i:05d}"] for i in range(len(z) - 1)]
    old_d, new_d = saved["data_shape"][1], meta["data_shape"][1]
    if old_d != new_d:
        raise ValueError(f"checkpoint {path} was written for data with d={old_d} features, but this data has "
                         f"d={new_d}; use the matching data or a fresh checkpoint_dir")
    for key in ("configs", "seeds", "settings"):
        if saved[key] != meta[key]:
            raise ValueError(f"checkpoint {path} has different {key} ({saved[key]}) than this run ({meta[key]}); "
                             f"use the same {key} to resume or a fresh checkpoint_dir")
    template = jax.tree_util.tree_leaves(trios)
    if len(leaves) != len(template) or any(a.shape != b.shape for a, b in zip(leaves, template)):
        raise ValueError(f"checkpoint {path} does not match the structure of this run; use a fresh checkpoint_dir")
    treedef = jax.tree_util.tree_structure(trios)
    restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, dtype=b.dtype) for a, b in zip(leaves, template)])
    return restored, saved["step"], saved["history"]


# -- the loop --------------------------------------------------------------------------------------------------
def train_many(configs: Sequence[Any], data: Any, *, seeds: Sequence[int], settings: TrainSettings,
               checkpoint_dir: str | os.PathLike | None = None,
               callback: Callable[[int, dict], None] | None = None, progress: bool = False) -> list[TrainResult]:
    """Train ``len(configs)`` SAEs in lock-step on the same shuffled batches of ``data`` (N, d).

    Args:
      configs: variant configs (see :mod:`jaxequiv.sae.variants`); any mix of variants and widths.
      data: (N, d) array-like; np.memmap is streamed batch by batch.
      seeds: one int per config (initial weights and dropout).
      settings: :class:`TrainSettings`.
      checkpoint_dir: where ``checkpoint.npz`` is written every ``settings.checkpoint_every`` steps; if it
        already holds a checkpoint of the same run, training resumes from it.
      callback: ``callback(step, entry)`` after every logged chunk (entry: per-SAE lists of loss/mse/l0/dead).
      progress: show a progress bar (see :func:`jaxequiv.io.progress_bar`).
    Returns:
      one :class:`TrainResult` per config, in order.
    """
    configs, seeds = list(configs), [int(s) for s in seeds]
    if not configs or len(configs) != len(seeds):
        raise ValueError(f"train_many needs one seed per config, got {len(configs)} configs and {len(seeds)} seeds")
    for c in configs:
        if not isinstance(c, SAE):
            raise TypeError(f"expected SAE variant configs (jaxequiv.sae.SAE, e.g. {', '.join(V.VARIANTS)}), got "
                            f"{type(c).__name__}; build them with jaxequiv.sae.make(...)")
    data_seed = seeds[0] if settings.data_seed is None else settings.data_seed
    stream = BatchStream(data, settings.batch_size, data_seed)
    for c in configs:
        if c.d_in != stream.d:
            raise ValueError(f"{c.name} config has d_in={c.d_in} but the data has d={stream.d} features; "
                             f"build the config with d_in={stream.d}")
    total = settings.total_steps(stream.steps_per_epoch)
    tx, chunk_fn = _chunk_fn(settings, total, stream.steps_per_epoch)
    groups = _group(configs)
    built = [_init_group([configs[i] for i in g], [seeds[i] for i in g], tx) for g in groups]
    trios = [b[2] for b in built]
    meta = _meta(configs, seeds, settings, (stream.n, stream.d))
    start, history, saved_step = 0, [], None
    ckpt = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_FILE) if checkpoint_dir is not None else None
    if ckpt is not None:
        os.makedirs(os.fspath(checkpoint_dir), exist_ok=True)
        if os.path.exists(ckpt):
            trios, start, history = _load_checkpoint(ckpt, trios, meta)
            saved_step = start
    carry = tuple((b[0], b[1], t) for b, t in zip(built, trios))
    bar = progress_bar(total, initial=start, desc=f"sae x{len(configs)}", unit="step", enabled=progress)
    step = start
    next_xs = stream.chunk(step, min(step + settings.log_every, total)) if step < total else None
    while step < total:
        stop = min(step + settings.log_every, total)
        xs = next_xs
        bad0 = tuple(jnp.full((len(g),), -1, jnp.int32) for g in groups)
        new_carry, bad, sums = chunk_fn(carry, bad0, jnp.asarray(xs), jnp.arange(step, stop, dtype=jnp.int32))
        # gather the next chunk on the host while the device works
        next_xs = stream.chunk(stop, min(stop + settings.log_every, total)) if stop < total else None
        bad = [np.asarray(b) for b in bad]
        for g, b in zip(groups, bad):
            for i, s in zip(g, b):
                if s >= 0:
                    where = (f"; the last good checkpoint ({ckpt}, step {saved_step}) is intact"
                             if saved_step is not None else "")
                    raise TrainingDiverged(
                        f"SAE {i} ({configs[i].name}, seed {seeds[i]}) got a NaN/Inf loss or parameter at step "
                        f"{int(s)}{where}; lower the learning rate or check the data scale")
        carry = new_carry
        n = stop - step
        entry = {"step": stop, "loss": [0.0] * len(configs), "mse": [0.0] * len(configs),
                 "l0": [0.0] * len(configs), "dead": [0] * len(configs)}
        for g, sm, (_, _, (_, _, st)) in zip(groups, sums, carry):
            sm = np.asarray(sm) / n
            dead = np.asarray(jnp.sum(st["since_fired"] >= settings.dead_window, axis=1))
            for j, i in enumerate(g):
                entry["loss"][i], entry["mse"][i], entry["l0"][i] = (float(v) for v in sm[j])
                entry["dead"][i] = int(dead[j])
        history.append(entry)
        step = stop
        if ckpt is not None and (step == total or (settings.checkpoint_every and step % settings.checkpoint_every == 0)):
            _save_checkpoint(ckpt, [c[2] for c in carry], step, meta, history)
            saved_step = step
        bar.update(n)
        bar.set_postfix(loss=f"{np.mean(entry['loss']):.4g}", l0=f"{np.mean(entry['l0']):.3g}")
        if callback is not None:
            callback(step, entry)
    bar.close()
    results: list[TrainResult | None] = [None] * len(configs)
    for g, (_, _, (params, _, state)) in zip(groups, carry):
        for j, i in enumerate(g):
            pick = lambda t: jax.tree_util.tree_map(lambda a: a[j], t)  # noqa: E731
            hist = [{"step": e["step"], **{k: e[k][i] for k in ("loss", "mse", "l0", "dead")}} for e in history]
            results[i] = TrainResult(configs[i], pick(params), pick(state), seeds[i], step, hist)
    return results


def train(cfg: Any, data: Any, *, seed: int = 0, settings: TrainSettings,
          checkpoint_dir: str | os.PathLike | None = None, callback: Callable[[int, dict], None] | None = None,
          progress: bool = False) -> TrainResult:
    """Train one SAE on ``data`` (N, d); see :func:`train_many` for the arguments. Shuffling uses
    ``settings.data_seed`` or, when None, ``seed``."""
    return train_many([cfg], data, seeds=[seed], settings=settings, checkpoint_dir=checkpoint_dir,
                      callback=callback, progress=progress)[0]


def codec_sweep(d_in: int, expansions: Sequence[int] = (1, 3, 5), thetas: Sequence[float] = (0.5, 0.7, 0.9),
                l1s: Sequence[float] = (0.0, 1e-4, 1e-2), seeds: Sequence[int] = (483, 1001, 2002),
                **stsae_kwargs) -> tuple[list[Any], list[int]]:
    """CODEC's hyper-parameter grid (codec.md §6) as ``(configs, seeds)`` for :func:`train_many`:
    N x theta x lambda_D x seed stsae configs (81 by default), ``d_sae = N * d_in``."""
    configs, out_seeds = [], []
    for n in expansions:
        for theta in thetas:
            for l1 in l1s:
                for s in seeds:
                    configs.append(V.STSAE(d_in=d_in, d_sae=n * d_in, theta=theta, l1=l1, **stsae_kwargs))
                    out_seeds.append(int(s))
    return configs, out_seeds
