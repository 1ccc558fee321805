"""Vmapped training of many parameter sets at once (seeds, tasks), shared by the equivalence experiments.

``experiments.equiv_toy`` and ``experiments.equiv_ioi`` train every model of a run in one job with
:func:`fit_stacked`; it is tested in ``tests/experiments/test_stacked.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxequiv.rng import as_key

__all__ = ["fit_stacked"]


def fit_stacked(params, loss_fn: Callable[..., jax.Array], arrays: Sequence[Any], *, steps: int, batch_size: int,
                optimizer: optax.GradientTransformation | None = None, seed: int = 0, stacked_arrays: bool = False,
                chunk: int = 50) -> tuple[Any, np.ndarray]:
    """Train ``S`` parameter sets at once (seeds, tasks, ...): one jitted optax step ``vmap``-ed over the stack.

    Step ``t`` draws one minibatch of row indices, shared by all members, as
    ``jax.random.randint(jax.random.fold_in(jax.random.key(seed), t), (batch_size,), 0, N)``; with
    ``batch_size >= N`` every step uses all rows in order (full-batch training). Steps run ``chunk`` at a time
    in a ``lax.scan``, so a run compiles at most twice (full chunks and the remainder).

    Args:
      params: pytree whose leaves all carry the stack axis first, ``[S, ...]`` (e.g. ``Network.stack(...).params``,
        possibly with extra trainable heads).
      loss_fn: ``loss_fn(member_params, *batch) -> scalar`` for one member (no stack axis).
      arrays: arrays with ``N`` rows, ``[N, ...]`` shared by all members, or ``[S, N, ...]`` per member when
        ``stacked_arrays`` (e.g. each member imitates a different task).
      steps, batch_size: optimizer steps and rows per step.
      optimizer: optax transformation applied to each member independently; default ``optax.adam(1e-3)``.
      seed: the batch-sampling seed (the result is a deterministic function of it and ``params``).

    Returns:
      ``(trained params [S, ...], losses [steps, S])``.

    Raises:
      FloatingPointError: a member's loss became NaN/inf; the message names the first such step and member.
    """
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or any(np.ndim(p) == 0 for p in leaves):
        raise ValueError("fit_stacked: params must be a pytree whose leaves all have a leading stack axis [S, ...]")
    n_stack = int(np.shape(leaves[0])[0])
    if any(np.shape(p)[0] != n_stack for p in leaves):
        raise ValueError(f"fit_stacked: every params leaf needs the same stack size, got "
                         f"{sorted({np.shape(p)[0] for p in leaves})}")
    arrays = tuple(jnp.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("fit_stacked needs at least one array to draw batches from")
    axis = 1 if stacked_arrays else 0
    if stacked_arrays and any(a.ndim < 2 or a.shape[0] != n_stack for a in arrays):
        raise ValueError(f"fit_stacked: stacked_arrays needs [S={n_stack}, N, ...] arrays, got shapes "
                         f"{[a.shape for a in arrays]}")
    rows = {int(a.shape[axis]) for a in arrays if a.ndim > axis}
    if len(rows) != 1 or any(a.ndim <= axis for a in arrays):
        raise ValueError(f"fit_stacked: all arrays must share their row count N, got shapes "
                         f"{[a.shape for a in arrays]}")
    if steps < 1 or batch_size < 1 or chunk < 1:
        raise ValueError(f"steps, batch_size and chunk must be positive, got {steps}, {batch_size}, {chunk}")
    n = rows.pop()
    tx = optimizer if optimizer is not None else optax.adam(1e-3)
    opt_state = jax.vmap(tx.init)(params)
    key = as_key(seed, "seed")
    full = batch_size >= n

    def member(p, o, idx, *member_arrays):
        batch = tuple(a if full else a[idx] for a in member_arrays)
        loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    in_axes = (0, 0, None) + (0 if stacked_arrays else None,) * len(arrays)

    @functools.partial(jax.jit, static_argnums=3)
    def run_chunk(params, opt_state, start, length):
        def step(carry, t):
            p, o = carry
            idx = jax.random.randint(jax.random.fold_in(key, t), (min(batch_size, n),), 0, n)
            p, o, loss = jax.vmap(member, in_axes=in_axes)(p, o, idx, *arrays)
            return (p, o), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), start + jnp.arange(length))
        return params, opt_state, losses

    chunk = min(chunk, steps)
    history = []
    for start in range(0, steps, chunk):
        params, opt_state, losses = run_chunk(params, opt_state, start, min(chunk, steps - start))
        losses = np.asarray(losses)
        bad = np.argwhere(~np.isfinite(losses))
        if len(bad):
            t, m = bad[0]
            raise FloatingPointError(
                f"fit_stacked: loss of member {m} is {losses[t, m]} at step {start + t}; lower the learning rate, "
                "check the inputs for NaN/inf, or clip gradients (optax.clip_by_global_norm)")
        history.append(losses)
    return params, np.concatenate(history)
