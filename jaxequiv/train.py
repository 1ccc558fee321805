"""A small, general training loop for flax nnx models with optax, plus classification helpers.

``fit`` works for any model and loss: ``loss_fn(model, *batch) -> (loss, metrics)``, where ``batch`` holds the
same-index minibatch of every array in ``arrays`` (images and labels for a classifier, token ids for a language
model). Models with BatchNorm are put in train mode for the loop and switched back to eval mode at the end (also
when training fails), so a fitted model is ready for analysis.
"""

from __future__ import annotations

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

__all__ = ["fit", "classification_loss", "accuracy"]

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
    if net.stacked is not None:
        preds = _predictions(net, xs).reshape(net.stacked, -1)[:, :n]
        return np.mean(np.asarray(preds) == np.asarray(y)[None], axis=1)
    preds = _predictions(net, xs).reshape(-1)[:n]
    return float(np.mean(np.asarray(preds) == np.asarray(y)))


@jax.jit
def _predictions(net: Network, chunks: jax.Array) -> jax.Array:
    """Argmax labels of ``chunks: [C, b, ...]``: ``[C, b]``, or ``[S, C, b]`` for a stacked network (compiled once
    per network structure and chunk shape)."""
    def predict(params):
        return jax.lax.map(lambda xb: jnp.argmax(net.apply(params, xb), -1), chunks)

    return jax.vmap(predict)(net.params) if net.stacked is not None else predict(net.params)
