"""Reductions of per-unit contribution tensors to per-channel vectors (CODEC §1.4), and the normalisation
applied before the SAE.

The sign split happens per element, *before* the spatial sum: ``positive = sum max(C, 0)``,
``negative = sum min(C, 0)`` over the site's spatial axes (height/width, tokens, ...), as the model declared
them in its :class:`~jaxequiv.sites.SiteInfo`; never guessed from shapes. Axes left after the sum (channel,
or head x channel) are flattened, in order, into ``C`` channels.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.sites import SiteInfo

__all__ = ["VARIANTS", "check_variants", "reduce_site", "spatial_sum", "global_std", "normalise_global_std"]

#: "concat" is [positive | negative] (2C values), as in CODEC §1.4 (3).
VARIANTS = ("positive", "negative", "sum", "concat")


def check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    """The variants as a tuple; ``ValueError`` naming the valid ones if any is unknown or none is given."""
    variants = (variants,) if isinstance(variants, str) else tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown or no reduction variant(s) {unknown}; expected a subset of {VARIANTS}")
    return variants


def _spatial(info: SiteInfo, ndim: int) -> tuple[int, ...]:
    """Spatial axis indices of an array with ``ndim - len(info.axes)`` extra axes after the batch axis."""
    extra = ndim - len(info.axes)
    if extra < 0 or info.axes[:1] != ("batch",):
        raise ValueError(
            f"an array of {ndim} axes does not fit a site with axes {info.axes}; expected the batch axis first "
            "and optionally an outputs axis after it"
        )
    return tuple(i + extra for i in info.spatial_axes)


def _flatten_channels(x: jax.Array, lead: int) -> jax.Array:
    return x.reshape(x.shape[:lead] + (-1,))


def spatial_sum(x: jax.Array, info: SiteInfo) -> jax.Array:
    """Sum over the site's spatial axes: ``[B, (K,) *site] -> [B, (K,) C]``."""
    axes = _spatial(info, x.ndim)
    lead = 1 + x.ndim - len(info.axes)
    return _flatten_channels(jnp.sum(x, axis=axes), lead)


def reduce_site(c: jax.Array, info: SiteInfo, variants: Iterable[str] = VARIANTS) -> dict[str, jax.Array]:
    """Sign-split then spatially summed contributions of one site.

    Args:
      c: ``[B, *site_shape]`` or ``[B, K, *site_shape]`` contributions.
      info: the site's :class:`SiteInfo` (its axes say which are spatial).
      variants: subset of ``("positive", "negative", "sum", "concat")``.

    Returns:
      ``{variant: [B, (K,) C]}``; ``concat`` is ``[B, (K,) 2C]`` = [positive | negative].
    """
    variants = check_variants(variants)
    pos = spatial_sum(jnp.maximum(c, 0), info)
    neg = spatial_sum(jnp.minimum(c, 0), info)
    full = {"positive": pos, "negative": neg, "sum": pos + neg, "concat": jnp.concatenate([pos, neg], axis=-1)}
    return {v: full[v] for v in variants}


def global_std(x, ddof: int = 0, chunk_rows: int = 65536) -> float:
    """Standard deviation of all entries of ``x [N, C]`` (one scalar), streamed in float64 over row chunks,
    so a memory-mapped store is never loaded whole."""
    x_shape = np.shape(x)
    n = int(np.prod(x_shape))
    if n - ddof <= 0:
        raise ValueError(f"global_std needs more than ddof={ddof} entries, got an array of shape {x_shape}")
    total = 0.0
    for lo in range(0, x_shape[0], chunk_rows):
        total += float(np.sum(np.asarray(x[lo : lo + chunk_rows], np.float64)))
    mean = total / n
    sq = 0.0
    for lo in range(0, x_shape[0], chunk_rows):
        sq += float(np.sum(np.square(np.asarray(x[lo : lo + chunk_rows], np.float64) - mean)))
    return float(np.sqrt(sq / (n - ddof)))


def normalise_global_std(x, ddof: int = 0) -> tuple[np.ndarray, float]:
    """``x / std(x)`` with one global scalar std (no centring, no per-feature scaling), as CODEC does before
    the SAE. Returns the float32 ``[N, C]`` result and the std; raises if the std is zero or not finite."""
    s = global_std(x, ddof=ddof)
    if not np.isfinite(s) or s == 0.0:
        raise ValueError(f"cannot normalise: the global std of this {np.shape(x)} array is {s}")
    return (np.asarray(x, np.float32) / np.float32(s)), s
