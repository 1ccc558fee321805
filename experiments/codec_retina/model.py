"""The deep-retina CNN (McIntosh et al. 2016; Maheswaranathan et al. 2023) in flax nnx, with its Poisson loss.

The input is a stimulus history ``[B, H, W, L]``: the last L frames as channels, the oldest first. Two valid
convolutions with ReLU, then a dense layer to one softplus rate per cell::

    x -> conv1 (C1 channels, k1 x k1) -> ReLU -> conv2 (C2, k2 x k2) -> ReLU -> dense -> softplus -> rates

Sites (for :mod:`jaxequiv.sites` / :mod:`jaxequiv.contributions`): ``conv1`` and ``conv2`` after their ReLU (axes
``batch, height, width, channel``), ``output`` the rates (``batch, channel``). The original scales the layers to
50 x 50 stimuli with 40 frames (15 x 15 and 11 x 11 kernels, 8 channels each); :class:`RetinaCNN` takes sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxequiv.sites import site

__all__ = ["RetinaCNN", "poisson_loss"]

SPATIAL = ("batch", "height", "width", "channel")
EPS = 1e-6  # keeps log(rate) finite where a rate underflows to 0


class RetinaCNN(nnx.Module):
    """Two conv layers, a dense layer and softplus outputs.

    Args:
      size: stimulus side H = W in pixels.
      lags: frames of history L (input channels).
      n_cells: outputs.
      channels: (C1, C2).
      kernels: (k1, k2) square kernel sides.
      rngs: initial weights.
    """

    def __init__(self, size: int, lags: int, n_cells: int, channels: tuple[int, int] = (8, 8),
                 kernels: tuple[int, int] = (7, 5), *, rngs: nnx.Rngs):
        out = size - kernels[0] - kernels[1] + 2
        if out < 1:
            raise ValueError(f"kernels {kernels} do not fit a {size} x {size} stimulus (valid convolutions)")
        self.size, self.lags = size, lags
        self.conv1 = nnx.Conv(lags, channels[0], (kernels[0],) * 2, padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(channels[0], channels[1], (kernels[1],) * 2, padding="VALID", rngs=rngs)
        self.dense = nnx.Linear(channels[1] * out * out, n_cells, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, H, W, L]`` -> rates ``[B, n_cells]`` (expected spike counts per frame, > 0)."""
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, self.lags):
            raise ValueError(f"RetinaCNN expects stimulus histories [batch, {self.size}, {self.size}, {self.lags}], "
                             f"got shape {tuple(x.shape)}")
        h = site("conv1", jax.nn.relu(self.conv1(x)), axes=SPATIAL)
        h = site("conv2", jax.nn.relu(self.conv2(h)), axes=SPATIAL)
        rates = jax.nn.softplus(self.dense(h.reshape(h.shape[0], -1)))
        return site("output", rates, axes=("batch", "channel"))


def poisson_loss(model: RetinaCNN, x: jax.Array, counts: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean Poisson negative log-likelihood ``rate - counts * log(rate)`` (dropping ``log(counts!)``), the loss
    :func:`jaxequiv.train.fit` takes; metric ``mse`` of the rates against the counts."""
    r = model(x)
    nll = jnp.mean(r - counts * jnp.log(r + EPS))
    return nll, {"mse": jnp.mean((r - counts) ** 2)}
