"""Reductions of per-unit contribution tensors to per-channel vectors (CODEC §1.4), and the normalisation
applied before the SAE.

The sign split happens per element, *before* the spatial sum: ``positive = sum max(C, 0)``,
``negative = sum min(C, 0)`` over the site's spatial axes (height/width, tokens, ...), as the model declared
them in its :class:`~jaxequiv.sites.SiteInfo`; never guessed from shapes. Axes left after the sum (channel,
or head x channel) are flattened, in order, into ``C`` channels. ``keep=("head",)`` reduces an attention site
per head instead (CODEC's ``attn_heads``: the sum over tokens *and* the head's channels, ``C = H``).

For sequence sites the tokens (axes ``token``, ``query``, ``key``) are the spatial positions; a ``mask``
``[B, T]`` (1 for real tokens, 0 for padding) leaves padded positions out of the sums.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jax.typing import ArrayLike

from jaxequiv.sites import SiteInfo

TOKEN_AXES = ("token", "query", "key")

__all__ = [
    "VARIANTS",
    "check_variants",
    "reduce_site",
    "spatial_sum",
    "reduced_channels",
    "global_std",
    "normalise_global_std",
]

#: "concat" is [positive | negative] (2C values), as in CODEC §1.4 (3).
VARIANTS = ("positive", "negative", "sum", "concat")


def check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    """The variants as a tuple; ``ValueError`` naming the valid ones if any is unknown or none is given."""
    variants = (variants,) if isinstance(variants, str) else tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown or no reduction variant(s) {unknown}; expected a subset of {VARIANTS}")
    return variants


def _summed(info: SiteInfo, ndim: int, keep: tuple[str, ...] | None) -> tuple[int, ...]:
    """Indices of the axes to sum in an array with ``ndim - len(info.axes)`` extra axes after the batch axis:
    the spatial ones, or every axis but the batch and the ``keep`` ones."""
    extra = ndim - len(info.axes)
    if extra < 0 or info.axes[:1] != ("batch",):
        raise ValueError(
            f"an array of {ndim} axes does not fit a site with axes {info.axes}; expected the batch axis first "
            "and optionally an outputs axis after it"
        )
    if keep is None:
        axes = info.spatial_axes
    else:
        missing = [a for a in keep if a not in info.axes]
        if missing:
            raise ValueError(f"keep={keep}: this site has no axis {missing}; its axes are {info.axes}")
        axes = tuple(i for i, a in enumerate(info.axes) if a != "batch" and a not in keep)
    return tuple(i + extra for i in axes)


def _masked(x: jax.Array, info: SiteInfo, mask) -> jax.Array:
    """``x`` with padded positions (``mask [B, T]`` = 0) zeroed along every token axis."""
    if mask is None:
        return x
    mask = jnp.asarray(mask)
    extra = x.ndim - len(info.axes)
    token_axes = [i for i, a in enumerate(info.axes) if a in TOKEN_AXES]
    if not token_axes:
        raise ValueError(f"a token mask was given but this site has no token axis (axes {info.axes})")
    for i in token_axes:
        t = x.shape[i + extra]
        if mask.shape != (x.shape[0], t):
            raise ValueError(f"the token mask has shape {mask.shape}; this site needs {(x.shape[0], t)} (batch, seq)")
        shape = [1] * x.ndim
        shape[0], shape[i + extra] = x.shape[0], t
        x = x * mask.reshape(shape).astype(x.dtype)
    return x


def spatial_sum(x: jax.Array, info: SiteInfo, *, keep: tuple[str, ...] | None = None,
                mask: ArrayLike | None = None) -> jax.Array:
    """Sum over the site's spatial axes (or over all axes but ``keep``): ``[B, (K,) *site] -> [B, (K,) C]``.

    ``mask [B, T]`` leaves padded tokens out of the sum.
    """
    axes = _summed(info, x.ndim, keep)
    lead = 1 + x.ndim - len(info.axes)
    summed = jnp.sum(_masked(x, info, mask), axis=axes)
    return summed.reshape(summed.shape[:lead] + (-1,))


def reduce_site(c: jax.Array, info: SiteInfo, variants: Iterable[str] = VARIANTS, *,
                keep: tuple[str, ...] | None = None, mask: ArrayLike | None = None) -> dict[str, jax.Array]:
    """Sign-split then spatially summed contributions of one site.

    Args:
      c: ``[B, *site_shape]`` or ``[B, K, *site_shape]`` contributions.
      info: the site's :class:`SiteInfo` (its axes say which are spatial).
      variants: subset of ``("positive", "negative", "sum", "concat")``.
      keep: axes left as channels (e.g. ``("head",)`` for one value per attention head); default: every
        non-spatial axis.
      mask: ``[B, T]`` token mask (1 real, 0 padding) for sequence sites.

    Returns:
      ``{variant: [B, (K,) C]}``; ``concat`` is ``[B, (K,) 2C]`` = [positive | negative].
    """
    variants = check_variants(variants)
    pos = spatial_sum(jnp.maximum(c, 0), info, keep=keep, mask=mask)
    neg = spatial_sum(jnp.minimum(c, 0), info, keep=keep, mask=mask)
    full = {"positive": pos, "negative": neg, "sum": pos + neg, "concat": jnp.concatenate([pos, neg], axis=-1)}
    return {v: full[v] for v in variants}


def reduced_channels(info: SiteInfo, keep: tuple[str, ...] | None = None) -> int:
    """Channels ``C`` per example after :func:`spatial_sum` of a site (``H`` with ``keep=("head",)``)."""
    if keep is None:
        return info.channels
    return int(np.prod([n for n, a in zip(info.shape, info.axes) if a in keep]))


def global_std(x: ArrayLike, ddof: int = 0, chunk_rows: int = 65536) -> float:
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


def normalise_global_std(x: ArrayLike, ddof: int = 0) -> tuple[np.ndarray, float]:
    """``x / std(x)`` with one global scalar std (no centring, no per-feature scaling), as CODEC does before
    the SAE. Returns the float32 ``[N, C]`` result and the std; raises if the std is zero or not finite."""
    s = global_std(x, ddof=ddof)
    if not np.isfinite(s) or s == 0.0:
        raise ValueError(f"cannot normalise: the global std of this {np.shape(x)} array is {s}")
    return (np.asarray(x, np.float32) / np.float32(s)), s
