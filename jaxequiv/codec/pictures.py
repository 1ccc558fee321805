"""Mode pictures (spec ``papers/codec.md`` §5): which parts of an image a mode's channels draw on.

For one image X, a target class y and a channel set S (the top channels of a mode's atom) at site L:

* J = d score_y / d h_L (score: softmax probability or logit), kept on the channels of S;
* each unit's contribution C_{k,p} = J_{k,p} * <dh_{k,p}/dX, X>;
* G+ / G- = sum over units with C > 0 / C <= 0 of J_{k,p} * dh_{k,p}/dX;  M+- = G+- * X.

The reference code runs one backward pass per unit. Here ``h_L`` is linearised once at X: one JVP in the
direction X gives every C_{k,p}, and two transposed (VJP) passes with cotangents ``J * 1[C > 0]`` and
``J * 1[C <= 0]`` give G+ and G-. Images are vmapped. :func:`picture_mask` turns M into the displayed mask;
:func:`mode_pictures` draws one picture per class with the class's top mode.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.codec.interventions import top_channels
from jaxequiv.network import Network
from jaxequiv.sites import Add, list_sites, run

if TYPE_CHECKING:
    from jaxequiv.codec.analysis import ModeSelectivity
    from jaxequiv.sae import Modes

__all__ = ["PictureMaps", "mode_picture_maps", "picture_mask", "ModePictures", "mode_pictures"]

SCORES = ("softmax", "logit")


class PictureMaps(NamedTuple):
    """Contribution maps of a channel set, per image. Shapes: B images of (H, W, Cin); site (h, w, C)."""

    positive: jax.Array  # (B, H, W, Cin) M+ = G+ * X: from units with positive contribution
    negative: jax.Array  # (B, H, W, Cin) M- = G- * X
    units: jax.Array  # (B, h, w, C) per-unit contributions C_{k,p}, zero outside the channel set

    @property
    def total(self) -> jax.Array:
        """(B, H, W, Cin) M = (G+ + G-) * X; sums to the total contribution of the channel set."""
        return self.positive + self.negative


def mode_picture_maps(net: Network, x, site: str, atoms, target, *, n_channels: int = 3,
                      score: str = "softmax") -> PictureMaps:
    """Image-component maps of the top ``n_channels`` channels of each image's atom.

    Args:
      net: image classifier with site ``site`` of axes (batch, height, width, channel).
      x: (B, H, W, Cin) images as the network sees them (normalised).
      atoms: (B, C) or (C,) atom per image (the mode to draw). target: (B,) or scalar class y.
      n_channels: size of the channel set S (paper: 3 in the script, 20 in the note).
      score: ``"softmax"`` (the paper's pictures) or ``"logit"``.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    x = jnp.asarray(x)
    net.check_input(x)
    b = x.shape[0]
    info = list_sites(net.apply, net.params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    if site not in info:
        raise ValueError(f"site {site!r} is not a site of this network; its sites are {sorted(info)}")
    if info[site].axes[-1] != "channel":
        raise ValueError(f"site {site!r} has axes {info[site].axes}; pictures need a trailing channel axis")
    c = info[site].shape[-1]
    atoms = jnp.asarray(atoms, jnp.float32)
    if atoms.shape not in ((c,), (b, c)):
        raise ValueError(f"atoms must have shape ({c},) or ({b}, {c}) for site {site!r}, got {atoms.shape}")
    atoms = jnp.broadcast_to(atoms, (b, c))
    target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (b,))
    chosen = top_channels(atoms, n_channels)  # (B, C)
    return _maps(net, x, site, chosen, target, score)


@functools.partial(jax.jit, static_argnames=("site", "score"))
def _maps(net, x, site, chosen, target, score):
    def one(xi, sel, yi):
        xb = xi[None]

        def h_fn(z):
            return run(net.apply, net.params, z, capture=[site])[1][site]

        def out(delta):
            logits, _ = run(net.apply, net.params, xb, edits={site: Add(delta)})
            s = jax.nn.softmax(logits) if score == "softmax" else logits
            return s[0, yi]

        h, h_jvp = jax.linearize(h_fn, xb)
        j = jax.grad(out)(jnp.zeros_like(h)) * sel  # projective field on the channel set
        units = j * h_jvp(xb)
        transpose = jax.linear_transpose(h_jvp, xb)
        (g_pos,) = transpose(jnp.where(units > 0, j, 0.0))
        (g_neg,) = transpose(jnp.where(units > 0, 0.0, j))
        return g_pos[0] * xi, g_neg[0] * xi, units[0]

    return PictureMaps(*jax.vmap(one)(x, chosen, target))


def picture_mask(m, size: int = 2, gamma: float = 6.0) -> np.ndarray:
    """Display mask of a contribution map: |M|, median filter per colour, colour mean, min-max, x gamma, clip.

    Args:
      m: (..., H, W, Cin) contribution maps. size: median-filter width (1 = none). gamma: contrast.
    Returns:
      (..., H, W) float32 in [0, 1]; all zeros for a constant map.
    """
    from scipy.ndimage import median_filter

    m = np.abs(np.asarray(m, np.float64))
    if m.ndim < 3:
        raise ValueError(f"m must be (..., H, W, Cin), got shape {m.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    filt = (1,) * (m.ndim - 3) + (size, size, 1)
    a = median_filter(m, size=filt, mode="reflect").mean(axis=-1)
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    norm = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.0)
    return np.clip(gamma * norm, 0.0, 1.0).astype(np.float32)


class ModePictures(NamedTuple):
    """One image per class and the display mask of its class's top mode at ``site``."""

    site: str
    images: np.ndarray  # (B, H, W, Cin) as the network sees them
    masks: np.ndarray  # (B, H, W) in [0, 1] (:func:`picture_mask`)
    classes: np.ndarray  # (B,) class of each image
    modes: np.ndarray  # (B,) the class's top mode (index among the alive modes)


def mode_pictures(net: Network, x, y, site: str, modes: Modes, selectivity: ModeSelectivity, *,
                  predictions=None, n_images: int = 6, n_channels: int = 3, size: int = 2, gamma: float = 6.0,
                  score: str = "softmax") -> ModePictures:
    """Mode pictures of the first ``n_images`` classes: each class's first correctly classified example, masked
    by the map (:func:`mode_picture_maps`) of the top ``n_channels`` channels of that class's top mode.

    Args:
      x: (N, H, W, Cin) the examples the modes were read out on. y: (N,) their labels.
      modes: the SAE's modes at ``site`` (atoms over its C channels, e.g. contribution modes).
      selectivity: their class selectivity (:func:`jaxequiv.codec.mode_selectivity`); a class's top mode is
        ``selectivity.modes.top_mode[class]``.
      predictions: (N,) predicted classes (e.g. ``store.predictions``); default one forward pass of ``x``.
      size, gamma: median-filter width and contrast of :func:`picture_mask`.
    """
    x, y = np.asarray(x), np.asarray(y)
    if predictions is None:
        predictions = jnp.argmax(net.apply(net.params, jnp.asarray(x)), axis=-1)
    predictions = np.asarray(predictions)
    if y.shape != (x.shape[0],) or predictions.shape != y.shape:
        raise ValueError(f"y and predictions must have shape ({x.shape[0]},) to match x, got {y.shape} and "
                         f"{predictions.shape}")
    good = np.flatnonzero(predictions == y)
    if good.size == 0:
        raise ValueError("no example is classified correctly; mode pictures need at least one")
    chosen = np.array([good[y[good] == c][0] for c in np.unique(y[good])][:n_images])
    top = np.asarray(selectivity.modes.top_mode)[y[chosen]]
    atoms = modes.alive_atoms()[top]
    maps = mode_picture_maps(net, x[chosen], site, atoms, y[chosen], n_channels=n_channels, score=score)
    masks = picture_mask(np.asarray(maps.total), size=size, gamma=gamma)
    return ModePictures(site, x[chosen], masks, y[chosen], top)
