"""Training SAEs with optax: one (:func:`train`) or many in lock-step (:func:`train_many`).

``train_many`` trains SAEs on one shared (N, d) array or on one array per SAE (CODEC's one SAE per layer). Configs
with equal static fields (variant, widths, k, ...) form a group: their configs, params, optimiser states and
statistics are stacked and the step is ``jax.vmap``-ed, each SAE reading its own data; each group runs a chunk of
steps as one jitted ``lax.scan`` (one compiled program per kind of group, reused by every run with such a group),
and all groups advance chunk by chunk. At every step every SAE reads the same row indices (one shuffle,
``data_seed``; the data must all have N rows), each from its own array, so SAEs that share data share batches.
Each SAE's ``seed`` sets its initial weights and its dropout stream.
``train`` is ``train_many`` of one SAE. Under ``vmap`` a ``lax.cond`` runs both branches, so for a variant with an
auxiliary loss that is usually off (``has_aux_loss``: TopK's AuxK) a group asks ``aux_needed(state)`` and runs the
auxiliary loss only on steps where some SAE of it needs it (a group of one runs unbatched, where the variant's own
``lax.cond`` skips it).

On many devices (``mesh`` with axes ``stack`` and ``data``, :func:`jaxequiv.distributed.make_mesh`) each group's
SAEs are split over ``stack`` (a group is padded with copies of its last SAE to a multiple of the axis size; the
copies are dropped) and every batch over ``data``; a lone SAE splits its dictionary (latent axis) over ``stack``
instead, for dictionaries bigger than one device, its top-k selections still exact. Results equal the one-device
run up to the order of the sums. The mesh may span several processes (:func:`jaxequiv.distributed.initialize`):
each reads only the batch rows of its own devices, all get the whole results, and only the writer process
(:func:`~jaxequiv.distributed.is_writer`) shows progress; the checkpoints hold the arrays of every process.

Runs are deterministic for (seeds, data_seed, settings) and resumable: with ``checkpoint_dir`` the whole state is
checkpointed with orbax (:mod:`jaxequiv.sae.checkpoint`) every ``checkpoint_every`` steps, and a restarted run
checks that its configs, seeds, settings and data (a content fingerprint) are the checkpoint's, then continues
with identical results. A non-finite loss or parameter stops training with :class:`TrainingDiverged`, leaving the
last good checkpoint untouched; a run that ends with a negative R^2 or most latents dead warns (:class:`FitWarning`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxequiv.distributed import fetch_global, is_writer, shard
from jaxequiv.io.progress import progress_bar
from jaxequiv.rng import as_key
from jaxequiv.sae import variants as V
from jaxequiv.sae.checkpoint import Checkpoints
from jaxequiv.sae.data import BatchStream, fingerprint, sample_rows
from jaxequiv.sae.interface import SAE

__all__ = ["TrainSettings", "TrainResult", "TrainingDiverged", "FitWarning", "train", "train_many",
           "compiled_chunks", "make_optimizer", "codec_sweep"]


class FitWarning(UserWarning):
    """Training ended with a reconstruction worse than the data's mean (R^2 < 0) or with most latents dead."""


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN/Inf."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Shared training settings.

    Attributes:
      batch_size: rows per step.
      steps: run length in steps (give steps or epochs).
      epochs: run length in passes over the data, may be fractional (give steps or epochs).
      lr: Adam learning rate.
      schedule: learning-rate decay to ``lr * final_lr_frac`` after ``warmup_steps`` of linear warm-up.
      warmup_steps: steps of linear warm-up from 0 to ``lr``.
      final_lr_frac: the decayed learning rate at the end of the run, as a fraction of ``lr``.
      plateau: multiply the learning rate by ``plateau_factor`` when the epoch-mean loss has not improved (rtol
        1e-4) for ``plateau_patience`` epochs (CODEC's ReduceLROnPlateau).
      plateau_factor: learning-rate factor of a plateau.
      plateau_patience: epochs without improvement that make a plateau.
      adam_b1: Adam's first-moment decay.
      adam_b2: Adam's second-moment decay.
      data_seed: shuffling seed (None: the first SAE's seed).
      log_every: steps per compiled chunk and per history entry.
      checkpoint_every: steps between checkpoints (a multiple of ``log_every``; None: none).
      dead_window: a latent not active for this many steps counts as dead in the history.
    """

    batch_size: int = 128
    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-5
    schedule: Literal["constant", "cosine", "linear"] = "constant"
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


@jax.jit
def _init_params(cfg, keys):
    """Stacked initial params and statistics of a stacked group of configs, one compiled call."""
    return jax.vmap(lambda c, k: (c.post_update(c.init(jax.random.fold_in(k, 0))), c.init_state()))(cfg, keys)


def _init_group(cfgs, seeds, tx):
    """``(stacked configs, keys, (params, optimiser states, statistics))`` of SAEs of equal static fields."""
    keys = jnp.stack([as_key(s, "seed") for s in seeds])
    cfg = _stack(cfgs)
    params, state = _init_params(cfg, keys)
    opt = jax.vmap(tx.init)(params)
    return cfg, keys, (params, opt, state)


def _chunk_fn(settings: TrainSettings, total: int, steps_per_epoch: int, sharded: bool = False):
    """Optimiser and jit(group, bad, xs, steps) -> (group, bad, sums): a scan of one group's vmapped steps.
    Runs whose settings differ only in what the compiled step does not read (length, batch size, seeds,
    logging) share one cached function, hence the compiled code of every group kind (variant, widths, size)
    they have in common. ``sharded``: traced for inputs on a mesh (top-k selections that XLA partitions,
    :func:`jaxequiv.sae.variants.sharded_top_k`)."""
    decays = settings.schedule != "constant" or settings.warmup_steps > 0
    step_settings = dataclasses.replace(settings, steps=1, epochs=None, batch_size=1, data_seed=None, log_every=1,
                                        checkpoint_every=None, dead_window=1)
    return _compiled_chunk(step_settings, total if decays else 0, steps_per_epoch if settings.plateau else 0,
                           sharded)


@functools.lru_cache(maxsize=32)
def _compiled_chunk(settings: TrainSettings, total: int, steps_per_epoch: int, sharded: bool):
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
        (cfg, keys, trio), bad = carry
        x, step = inp
        per_sae = x.ndim == 3  # (G, B, d): each SAE its own batch; (B, d): one batch for the group
        if bad.shape[0] == 1:  # a lone SAE runs unbatched, so lax.cond (e.g. AuxK) still skips work
            one = jax.tree_util.tree_map(lambda a: a[0], (cfg, keys, trio))
            out = sae_step(one[0], one[1], *one[2], x[0] if per_sae else x, step)
            new, finite, m = jax.tree_util.tree_map(lambda a: a[None], out)
        else:
            group_step = lambda with_aux: jax.vmap(  # noqa: E731
                functools.partial(sae_step, with_aux=with_aux),
                in_axes=(0, 0, 0, 0, 0, 0 if per_sae else None, None))(cfg, keys, *trio, x, step)
            if cfg.has_aux_loss:  # skip the auxiliary loss unless some SAE of the group needs it
                need = jnp.any(jax.vmap(type(cfg).aux_needed)(cfg, trio[2]))
                new, finite, m = jax.lax.cond(need, lambda: group_step(True), lambda: group_step(False))
            else:
                new, finite, m = group_step(True)
        ok = finite & (bad < 0)
        # an SAE that went non-finite keeps stepping (the SAEs are independent); the loop raises after the chunk
        # without using this carry, so the last good state is the checkpoint on disk
        return ((cfg, keys, new), jnp.where((bad < 0) & ~finite, step, bad)), jnp.where(ok[:, None], m, 0.0)

    @functools.partial(jax.jit, donate_argnums=(0,))  # params/optimiser buffers are updated in place
    def chunk(group, bad, xs, steps):
        with V.sharded_top_k() if sharded else contextlib.nullcontext():
            (group, bad), mets = jax.lax.scan(body, (group, bad), (xs, steps))
        return group, bad, mets.sum(axis=0)

    return tx, chunk


# -- data and placement ----------------------------------------------------------------------------------------
def _sources(configs, data) -> tuple[list[Any], list[int]]:
    """Distinct data arrays and, per config, the index of its array: a list/tuple is one array per config,
    anything else one array shared by all."""
    if not isinstance(data, (list, tuple)):
        return [data], [0] * len(configs)
    if len(data) != len(configs):
        raise ValueError(f"data is a sequence of {len(data)} arrays but there are {len(configs)} configs; pass one "
                         f"(N, d) array per config, or a single array shared by all")
    sources: list[Any] = []
    where: dict[int, int] = {}
    for d in data:
        if id(d) not in where:
            where[id(d)] = len(sources)
            sources.append(d)
    return sources, [where[id(d)] for d in data]


@dataclasses.dataclass
class _Group:
    """Configs of equal static fields, trained as one stack: ``members`` index the configs (padded with copies
    of the last one to a multiple of the mesh's stack size); the first ``size`` are real."""

    members: list[int]
    size: int
    per_sae: bool  # members read different arrays (else they share one)


def _plan(configs, source_of: list[int], stack: int) -> list[_Group]:
    by_key: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        by_key.setdefault(c.static_key(), []).append(i)
    return [_Group(m + [m[-1]] * (-len(m) % stack if len(m) > 1 else 0), len(m), len({source_of[i] for i in m}) > 1)
            for m in by_key.values()]


class _Placement:
    """Where arrays live: the default device, or a mesh with the stack over ``stack`` and batches over ``data``."""

    def __init__(self, mesh: Mesh | None, batch_size: int):
        self.mesh = mesh
        names = mesh.axis_names if mesh is not None else ()
        self.stack_axis = "stack" if "stack" in names else None
        self.data_axis = "data" if "data" in names else None
        self.stack = mesh.shape["stack"] if self.stack_axis else 1
        n_data = mesh.shape["data"] if self.data_axis else 1
        if batch_size % n_data:
            raise ValueError(f"batch_size {batch_size} does not split over the {n_data} devices of the mesh's "
                             f"'data' axis; use a multiple of {n_data}")

    def _stack_axis(self, size: int) -> str | None:
        return self.stack_axis if size % self.stack == 0 else None  # a lone SAE: replicated over stack

    def stacked(self, tree, size: int, d_sae: int):
        """Place a pytree whose leaves stack ``size`` SAEs of ``d_sae`` latents on their leading axis: split over
        ``stack``, or, for a lone SAE, with its latent axis split over ``stack`` (a dictionary bigger than one
        device; the top-k selections stay exact). Every process passes the same values."""
        if self.mesh is None:
            return tree
        axis = self._stack_axis(size)
        if axis is None and self.stack > 1 and d_sae % self.stack == 0:
            return jax.tree_util.tree_map(lambda a: shard(a, self.mesh, self._latents(np.shape(a), d_sae)), tree)
        return jax.tree_util.tree_map(lambda a: shard(a, self.mesh, PartitionSpec(axis)), tree)

    def _latents(self, shape, d_sae):
        """The spec of a lone SAE's leaf: its last axis of size d_sae (after the stack axis) over stack."""
        spec = [None] * len(shape)
        axes = [i for i in range(1, len(shape)) if shape[i] == d_sae]
        if axes:
            spec[axes[-1]] = self.stack_axis
        return PartitionSpec(*spec)

    def batches(self, read, shape: tuple[int, ...], per_sae: bool) -> jax.Array:
        """(T, B, d) or, per SAE, (T, G, B, d) batches on the devices; ``read(index)`` returns the host block at
        ``index`` (a tuple of slices). On a mesh only the blocks of this process's devices are read."""
        if self.mesh is None:
            return jnp.asarray(read((slice(None),) * len(shape)))
        spec = (None, self._stack_axis(shape[1]), self.data_axis) if per_sae else (None, self.data_axis)
        return jax.make_array_from_callback(shape, NamedSharding(self.mesh, PartitionSpec(*spec)), read)


def _read_chunk(streams, source_of, groups, start, stop, place: _Placement):
    """Per group, the batches of steps [start, stop): each block of rows that a device of this process needs,
    read once from each distinct array."""
    read: dict[tuple, np.ndarray] = {}

    def rows(s, positions: slice):
        if (s, positions.start, positions.stop) not in read:
            read[s, positions.start, positions.stop] = streams[s].chunk(start, stop, positions)
        return read[s, positions.start, positions.stop]

    def reader(g):  # index: slices of (T, B, d), or (T, G, B, d) per SAE
        if not g.per_sae:
            return lambda index: rows(source_of[g.members[0]], index[1])[..., index[2]]
        return lambda index: np.stack([rows(source_of[i], index[2])[..., index[3]] for i in g.members[index[1]]],
                                      axis=1)

    n, d = stop - start, streams[0].d
    return tuple(place.batches(reader(g), (n, len(g.members), streams[0].batch_size, d) if g.per_sae
                               else (n, streams[0].batch_size, d), g.per_sae) for g in groups)


def _unpad(trio, size):
    return jax.tree_util.tree_map(lambda a: a[:size], trio)


def _pad(trio, n):
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], n - a.shape[0], axis=0)]), trio)


def _identity(configs, seeds, settings, fingerprints) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (JSON-able)."""
    return {"configs": [{"variant": c.name, **c.config_dict()} for c in configs], "seeds": list(seeds),
            "settings": dataclasses.asdict(settings), "data": fingerprints}


_HINTS = {"stsae": "lower theta or l1", "relu_l1": "lower l1", "jumprelu": "lower l0 or init_threshold",
          "topk": "raise k", "matryoshka": "raise k", "batchtopk": "raise k"}


def _check_fit(configs, seeds, sources, source_of, results, settings: TrainSettings) -> None:
    """Warn (:class:`FitWarning`) about SAEs whose training R^2 over the last logged chunk (against a sample of
    their data) is negative or whose latents mostly did not fire in the last min(dead_window, steps / 2) steps."""
    var = {}
    for s in set(source_of):
        rows = sample_rows(sources[s]).astype(np.float64)
        var[s] = float(np.mean(np.square(rows - rows.mean())))
    poor = []
    for i, r in enumerate(results):
        if not r.history:
            continue
        window = max(1, min(settings.dead_window, r.step // 2))
        dead = int(np.sum(np.asarray(r.state["since_fired"]) >= window))
        r2 = 1.0 - r.history[-1]["mse"] / var[source_of[i]] if var[source_of[i]] > 0 else 1.0
        if r2 < 0 or dead > r.cfg.d_sae / 2:
            hint = f" ({_HINTS.get(r.cfg.name, 'loosen the sparsity')})" if dead > r.cfg.d_sae / 2 else ""
            poor.append(f"SAE {i} ({r.cfg.name}, seed {seeds[i]}): R^2 {r2:.2f}, {r.cfg.d_sae - dead}/{r.cfg.d_sae} "
                        f"latents fired in the last {window} steps{hint}")
    if poor:
        shown = "; ".join(poor[:5]) + (f"; and {len(poor) - 5} more" if len(poor) > 5 else "")
        warnings.warn(FitWarning(
            f"{len(poor)} of {len(configs)} SAEs fit poorly after {results[0].step} steps (training R^2 < 0 or "
            f"most latents dead): {shown}. Train longer (more steps or epochs) or try another learning rate (now "
            f"{settings.lr:g}); where most latents are dead, make them easier to fire as suggested"), stacklevel=3)


# -- the loop --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """A prepared run: validated inputs, one batch stream per distinct array, the groups, their initial stacked
    state on the devices and the compiled chunk."""

    configs: list
    seeds: list[int]
    sources: list
    source_of: list[int]
    streams: list[BatchStream]
    total: int
    place: _Placement
    chunk_fn: Any
    groups: list[_Group]
    carry: list

    def read(self, start: int, stop: int):
        return _read_chunk(self.streams, self.source_of, self.groups, start, stop, self.place)

    def no_failures(self):
        return tuple(self.place.stacked(jnp.full((len(g.members),), -1, jnp.int32), len(g.members), 0)
                     for g in self.groups)


def _prepare(configs, data, seeds, settings: TrainSettings, mesh: Mesh | None) -> _Run:
    configs, seeds = list(configs), [int(s) for s in seeds]
    if not configs or len(configs) != len(seeds):
        raise ValueError(f"train_many needs one seed per config, got {len(configs)} configs and {len(seeds)} seeds")
    for c in configs:
        if not isinstance(c, SAE):
            raise TypeError(f"expected SAE variant configs (jaxequiv.sae.SAE, e.g. {', '.join(V.VARIANTS)}), got "
                            f"{type(c).__name__}; build them with jaxequiv.sae.make(...)")
    sources, source_of = _sources(configs, data)
    data_seed = seeds[0] if settings.data_seed is None else settings.data_seed
    many = len(sources) > 1
    streams = [BatchStream(d, settings.batch_size, data_seed, f"data[{source_of.index(s)}]" if many else "data")
               for s, d in enumerate(sources)]
    if len({st.n for st in streams}) > 1:
        raise ValueError(f"the data arrays have different row counts {sorted({st.n for st in streams})}; SAEs trained "
                         "together read the same rows at every step, so give them arrays with equal N (or train "
                         "them in separate calls)")
    for i, c in enumerate(configs):
        if c.d_in != streams[source_of[i]].d:
            where = f"data[{i}]" if many else "the data"
            raise ValueError(f"{c.name} config has d_in={c.d_in} but {where} has d={streams[source_of[i]].d} "
                             f"features; build the config with d_in={streams[source_of[i]].d}")
    total = settings.total_steps(streams[0].steps_per_epoch)
    place = _Placement(mesh, settings.batch_size)
    tx, chunk_fn = _chunk_fn(settings, total, streams[0].steps_per_epoch, sharded=mesh is not None)
    groups = _plan(configs, source_of, place.stack)
    carry = []
    for g in groups:
        cfg, keys, trio = _init_group([configs[i] for i in g.members], [seeds[i] for i in g.members], tx)
        carry.append(place.stacked((cfg, keys, trio), len(g.members), configs[g.members[0]].d_sae))
    return _Run(configs, seeds, sources, source_of, streams, total, place, chunk_fn, groups, carry)


def compiled_chunks(configs: Sequence[SAE], data: Any, *, seeds: Sequence[int], settings: TrainSettings,
                    mesh: Mesh | None = None) -> list:
    """The compiled programs (``jax.stages.Compiled``, one per group of SAEs) that :func:`train_many` runs for
    its first ``settings.log_every`` steps with these arguments, to inspect their communication
    (:func:`jaxequiv.distributed.assert_no_gather`) or their cost."""
    run = _prepare(configs, data, seeds, settings, mesh)
    stop = min(settings.log_every, run.total)
    steps = jnp.arange(stop, dtype=jnp.int32)
    return [run.chunk_fn.lower(c, b, x, steps).compile()
            for c, b, x in zip(run.carry, run.no_failures(), run.read(0, stop))]


def train_many(configs: Sequence[SAE], data: Any, *, seeds: Sequence[int], settings: TrainSettings,
               checkpoint_dir: str | os.PathLike | None = None, callback: Callable[[int, dict], None] | None = None,
               progress: bool = False, mesh: Mesh | None = None) -> list[TrainResult]:
    """Train ``len(configs)`` SAEs in lock-step, each on its own (or a shared) data array.

    Args:
      configs: SAE configs (:class:`jaxequiv.sae.SAE`, see :mod:`jaxequiv.sae.variants`); any mix of variants and
        widths.
      data: one (N, d) array-like shared by every SAE, or a list/tuple of one per config (all with the same N;
        each with its config's d_in). np.memmap and lazy views (:class:`~jaxequiv.sae.data.Scaled`) are
        streamed batch by batch.
      seeds: one int per config (initial weights and dropout).
      settings: :class:`TrainSettings`.
      checkpoint_dir: orbax checkpoints are written there every ``settings.checkpoint_every`` steps and at the
        end; if it holds a checkpoint of the same run (configs, seeds, settings and data content), training
        resumes from it, and from another run it refuses (:class:`~jaxequiv.sae.checkpoint.CheckpointError`).
      callback: ``callback(step, entry)`` after every logged chunk (entry: per-SAE lists of loss/mse/l0/dead).
      progress: show a progress bar (see :func:`jaxequiv.io.progress_bar`).
      mesh: a device mesh (:func:`jaxequiv.distributed.make_mesh`): the SAEs of a group are split over its
        ``stack`` axis (a lone SAE: its latents) and each batch over ``data`` (batch_size must divide evenly).
    Returns:
      one :class:`TrainResult` per config, in order.
    Raises:
      TrainingDiverged: a loss or parameter became NaN/Inf. Warns :class:`FitWarning` when SAEs end with a
        negative training R^2 or most latents dead.
    """
    run = _prepare(configs, data, seeds, settings, mesh)
    configs, seeds, groups, place, total, carry = run.configs, run.seeds, run.groups, run.place, run.total, run.carry
    start, history, saved_step = 0, [], None
    ckpt = Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        if ckpt is not None:
            prints = [fingerprint(d) for d in run.sources]
            identity = _identity(configs, seeds, settings, [prints[s] for s in run.source_of])
            if ckpt.latest_step() is not None:
                template = tuple(place.stacked(_unpad(c[2], g.size), g.size, configs[g.members[0]].d_sae)
                                 for g, c in zip(groups, carry))
                names = [f"SAE {i} ({c.name}, seed {s})" for i, (c, s) in enumerate(zip(configs, seeds))]
                trios, start, history = ckpt.restore(template, identity, names)
                carry = [(c[0], c[1], place.stacked(_pad(t, len(g.members)), len(g.members),
                                                    configs[g.members[0]].d_sae))
                         for g, c, t in zip(groups, carry, trios)]
                saved_step = start
        carry = tuple(carry)
        bar = progress_bar(total, initial=start, desc=f"sae x{len(configs)}", unit="step",
                           enabled=progress and is_writer())
        step = start
        next_xs = run.read(step, min(step + settings.log_every, total)) if step < total else None
        while step < total:
            stop = min(step + settings.log_every, total)
            xs = next_xs
            steps = jnp.arange(step, stop, dtype=jnp.int32)
            outs = [run.chunk_fn(c, b, x, steps) for c, b, x in zip(carry, run.no_failures(), xs)]
            new_carry, bad, sums = (tuple(o[i] for o in outs) for i in range(3))
            # gather the next chunk on the host while the device works
            next_xs = run.read(stop, min(stop + settings.log_every, total)) if stop < total else None
            for g, b in zip(groups, bad):
                for i, s in zip(g.members[:g.size], fetch_global(b)[:g.size]):
                    if s >= 0:
                        where = (f"; the last good checkpoint ({ckpt.directory}, step {saved_step}) is intact"
                                 if saved_step is not None else "")
                        raise TrainingDiverged(
                            f"SAE {i} ({configs[i].name}, seed {seeds[i]}) got a NaN/Inf loss or parameter at step "
                            f"{int(s)}{where}; lower the learning rate or check the data scale")
            carry = new_carry
            n = stop - step
            entry = {"step": stop, "loss": [0.0] * len(configs), "mse": [0.0] * len(configs),
                     "l0": [0.0] * len(configs), "dead": [0] * len(configs)}
            for g, sm, (_, _, (_, _, st)) in zip(groups, sums, carry):
                sm = fetch_global(sm) / n
                dead = fetch_global(jnp.sum(st["since_fired"] >= settings.dead_window, axis=1))
                for j, i in enumerate(g.members[:g.size]):
                    entry["loss"][i], entry["mse"][i], entry["l0"][i] = (float(v) for v in sm[j])
                    entry["dead"][i] = int(dead[j])
            history.append(entry)
            step = stop
            if ckpt is not None and (step == total or (settings.checkpoint_every
                                                       and step % settings.checkpoint_every == 0)):
                ckpt.save(step, tuple(_unpad(c[2], g.size) for g, c in zip(groups, carry)), identity, history)
                saved_step = step
            bar.update(n)
            bar.set_postfix(loss=f"{np.mean(entry['loss']):.4g}", l0=f"{np.mean(entry['l0']):.3g}")
            if callback is not None:
                callback(step, entry)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()  # waits for a checkpoint being written
    results: list[TrainResult | None] = [None] * len(configs)
    for g, (_, _, (params, _, state)) in zip(groups, carry):
        # SAEs split over the devices of several processes come back whole, as NumPy, on every process
        params, state = jax.tree_util.tree_map(lambda a: a if a.is_fully_addressable else fetch_global(a),
                                               (params, state))
        for j, i in enumerate(g.members[:g.size]):
            pick = lambda t: jax.tree_util.tree_map(lambda a: a[j], t)  # noqa: E731
            hist = [{"step": e["step"], **{k: e[k][i] for k in ("loss", "mse", "l0", "dead")}} for e in history]
            results[i] = TrainResult(configs[i], pick(params), pick(state), seeds[i], step, hist)
    _check_fit(configs, seeds, run.sources, run.source_of, results, settings)
    return results


def train(cfg: SAE, data: Any, *, seed: int = 0, settings: TrainSettings,
          checkpoint_dir: str | os.PathLike | None = None, callback: Callable[[int, dict], None] | None = None,
          progress: bool = False, mesh: Mesh | None = None) -> TrainResult:
    """Train one SAE on ``data`` (N, d); see :func:`train_many` for the arguments. Shuffling uses
    ``settings.data_seed`` or, when None, ``seed``."""
    return train_many([cfg], data, seeds=[seed], settings=settings, checkpoint_dir=checkpoint_dir,
                      callback=callback, progress=progress, mesh=mesh)[0]


def codec_sweep(d_in: int, expansions: Sequence[int] = (1, 3, 5), thetas: Sequence[float] = (0.5, 0.7, 0.9),
                l1s: Sequence[float] = (0.0, 1e-4, 1e-2), seeds: Sequence[int] = (483, 1001, 2002),
                **stsae_kwargs) -> tuple[list[Any], list[int]]:
    """CODEC's hyper-parameter grid (codec.md §6) as ``(configs, seeds)`` for :func:`train_many`:
    N x theta x lambda_D x seed stsae configs (81 by default), ``d_sae = N * d_in``.

    Args:
      d_in: input width d.
      expansions: dictionary sizes N (K = N * d).
      thetas: stsae thresholds theta.
      l1s: dictionary L1 weights lambda_D.
      seeds: initialisation seeds, one SAE per seed and setting.
      stsae_kwargs: further :class:`~jaxequiv.sae.STSAE` fields shared by every SAE.
    """
    configs, out_seeds = [], []
    for n in expansions:
        for theta in thetas:
            for l1 in l1s:
                for s in seeds:
                    configs.append(V.STSAE(d_in=d_in, d_sae=n * d_in, theta=theta, l1=l1, **stsae_kwargs))
                    out_seeds.append(int(s))
    return configs, out_seeds
