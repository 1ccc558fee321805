"""Multi-layer perceptron as a flax nnx module, named like ``torch.nn`` so checkpoints map by path.

``MLP((d_in, h1, ..., d_out))`` holds ``layers``, a list of ``nnx.Linear``; parameter paths are
``layers.{i}.kernel`` ``[d_i, d_{i+1}]`` and ``layers.{i}.bias`` (torch ``layers.{i}.weight`` is the kernel
transposed). Inputs are ``[B, d_in]``; images or any ``[B, *dims]`` with ``prod(dims) == d_in`` are flattened
row-major (for NHWC images that is height, width, channel order, the order ``x.reshape(B, -1)`` gives).

Sites (axes ``batch, channel``): ``"layers.{i}"`` for each hidden layer's output *after* the activation, and
``"layers.{n-1}"`` for the logits of the last layer (no activation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxequiv.sites import site

__all__ = ["MLP", "ACTIVATIONS"]

# GELU is the exact (erf) form, as torch.nn.GELU() by default.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}

_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # torch Linear: U(+-1/sqrt(fan_in))


class MLP(nnx.Module):
    """Fully connected network ``d_in -> h1 -> ... -> d_out`` with one activation between layers.

    Args:
      sizes: layer widths including input and output, at least two entries.
      activation: one of :data:`ACTIVATIONS`.
      rngs: ``nnx.Rngs`` for the initial weights.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", *, rngs: nnx.Rngs):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least input and output widths, all positive; got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.sizes = sizes
        self.activation = activation
        self.layers = nnx.List(
            [nnx.Linear(a, b, kernel_init=_init, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [B, d_in]`` or ``[B, *dims]`` with ``prod(dims) == d_in`` -> ``[B, d_out]``."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.sizes[0]:
            raise ValueError(f"MLP expects inputs [batch, {self.sizes[0]}] (or [batch, *dims] with "
                             f"{self.sizes[0]} values per example), got shape {tuple(x.shape)}")
        h = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = act(h)
            h = site(f"layers.{i}", h, axes=("batch", "channel"))
        return h
