"""A small, general training loop for flax nnx models with optax, plus classification helpers.

``fit`` works for any model and loss: ``loss_fn(model, *batch) -> (loss, metrics)``, where ``batch`` holds the
same-index minibatch of every array in ``arrays`` (images and labels for a classifier, token ids for a language
model). Models with BatchNorm are put in train mode for the loop and switched back to eval mode at the end (also
when training fails), so a fitted model is ready for analysis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxequiv.data.batching import batches
from jaxequiv.io.progress import progress_bar
from jaxequiv.network import Network

__all__ = ["fit", "fit_stacked", "classification_loss", "accuracy"]

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def fit(model: nnx.Module, loss_fn: LossFn, arrays: Sequence[Any], *, epochs: int, batch_size: int,
        optimizer: optax.GradientTransformation | None = None, seed: int = 0,
        progress: bool = True) -> dict[str, np.ndarray]:
    """Train ``model`` in place on minibatches of ``arrays``; return the per-step history.

    Each epoch visits a fresh shuffle (derived from ``seed``) in ``N // batch_size`` full batches, so the
    jitted step compiles once; with the model's initial weights fixed, the result is a deterministic function
    of ``seed``.

    Args:
      model: an nnx module; its ``nnx.Param`` variables are trained, other state (BatchNorm statistics) is
        updated by the forward pass.
      loss_fn: ``loss_fn(model, *batch) -> (scalar loss, {name: scalar metric})``.
      arrays: arrays sharing their leading length ``N``.
      epochs, batch_size: passes over the data and examples per step (capped at ``N``).
      optimizer: an optax transformation; default ``optax.adam(1e-3)``.
      seed: shuffling seed.
      progress: show a progress bar (see :func:`jaxequiv.io.progress_bar`).

    Returns:
      ``{"loss": [steps], metric: [steps], ...}`` as NumPy arrays.

    Raises:
      FloatingPointError: the loss became NaN or infinite; the message names the step.
    """
    arrays = tuple(arrays)
    if not arrays:
        raise ValueError("fit needs at least one array to draw batches from")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"all arrays must have the same first dimension, got lengths {lengths}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got epochs={epochs}, batch_size={batch_size}")
    n = lengths[0]
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    opt = nnx.Optimizer(model, optimizer if optimizer is not None else optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, *batch):
        (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        opt.update(model, grads)
        return loss, metrics

    bar = progress_bar(epochs * steps_per_epoch, desc="training", unit="step", enabled=progress, leave=False)
    epoch_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=epochs)
    history: dict[str, list[float]] = {"loss": []}
    model.train()
    try:
        for epoch, epoch_seed in enumerate(epoch_seeds):
            for batch in batches(*arrays, batch_size=batch_size, seed=int(epoch_seed), drop_last=True):
                loss, metrics = step(model, opt, *batch)
                value = float(loss)
                k = len(history["loss"])
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss is {value} at step {k} (epoch {epoch}, batch {k - epoch * steps_per_epoch}); "
                        "lower the learning rate, check the inputs for NaN/inf, or clip gradients "
                        "(optax.clip_by_global_norm)")
                history["loss"].append(value)
                for name, v in metrics.items():
                    history.setdefault(name, []).append(float(v))
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    finally:
        model.eval()
        bar.close()
    return {k: np.asarray(v) for k, v in history.items()}


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
        raise ValueError(f"fit_stacked: every params leaf needs the same stack size, got {sorted({np.shape(p)[0] for p in leaves})}")
    arrays = tuple(jnp.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("fit_stacked needs at least one array to draw batches from")
    axis = 1 if stacked_arrays else 0
    if stacked_arrays and any(a.ndim < 2 or a.shape[0] != n_stack for a in arrays):
        raise ValueError(f"fit_stacked: stacked_arrays needs [S={n_stack}, N, ...] arrays, got shapes {[a.shape for a in arrays]}")
    rows = {int(a.shape[axis]) for a in arrays if a.ndim > axis}
    if len(rows) != 1 or any(a.ndim <= axis for a in arrays):
        raise ValueError(f"fit_stacked: all arrays must share their row count N, got shapes {[a.shape for a in arrays]}")
    if steps < 1 or batch_size < 1 or chunk < 1:
        raise ValueError(f"steps, batch_size and chunk must be positive, got {steps}, {batch_size}, {chunk}")
    n = rows.pop()
    tx = optimizer if optimizer is not None else optax.adam(1e-3)
    opt_state = jax.vmap(tx.init)(params)
    key = jax.random.key(seed)
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


def classification_loss(model: Callable, x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean softmax cross-entropy of ``model(x)`` (logits ``[B, K]``) against integer labels ``y: [B]``.

    Returns ``(loss, {"accuracy": fraction of argmax == y})``, the signature :func:`fit` expects.
    """
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def accuracy(network_or_model: Network | nnx.Module, x, y, batch_size: int = 256) -> float | np.ndarray:
    """Fraction of ``x: [N, ...]`` whose argmax logit equals ``y: [N]``, in chunks of ``batch_size``.

    A module is evaluated in its current mode (eval after :func:`fit`). A stacked :class:`Network` gives one
    accuracy per stacked network, ``[S]``.
    """
    net = network_or_model
    if isinstance(net, nnx.Module):
        net = Network.from_module(net, np.shape(x)[1:])
    net.check_input(x)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    batch_size = min(batch_size, n)
    n_chunks = -(-n // batch_size)
    xs = np.asarray(x)
    xs = np.concatenate([xs, np.zeros((n_chunks * batch_size - n, *xs.shape[1:]), xs.dtype)])
    xs = xs.reshape(n_chunks, batch_size, *xs.shape[1:])
    def predict(params, chunks):
        return jax.lax.map(lambda xb: jnp.argmax(net.apply(params, xb), -1), chunks)

    if net.stacked is not None:
        preds = jax.jit(jax.vmap(predict, in_axes=(0, None)))(net.params, xs).reshape(net.stacked, -1)[:, :n]
        return np.mean(np.asarray(preds) == np.asarray(y)[None], axis=1)
    preds = jax.jit(predict)(net.params, xs).reshape(-1)[:n]
    return float(np.mean(np.asarray(preds) == np.asarray(y)))
