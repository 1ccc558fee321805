"""CODEC analysis metrics (spec ``papers/codec.md`` §3), vectorised over examples, modes and layers.

Every function is a pure JAX kernel on float32 arrays; leading axes beyond the documented ones are batch axes
(e.g. a stack of layers of equal width), so one call covers many layers. Shapes use N examples, C channels,
K modes and Y classes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "hoyer",
    "class_means",
    "explained_variance_curve",
    "dimensionality",
    "pos_neg_decorrelation",
    "class_correlation",
    "Selectivity",
    "selectivity",
    "class_coverage",
    "Specificity",
    "specificity",
    "check_labels",
]

HOYER_EPS = 1e-6


def _float(x, name: str, min_ndim: int) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == bool:
            x = x.astype(jnp.float32)
        else:
            raise TypeError(f"{name} must be a real array, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {x.shape}")
    return x


def check_labels(labels, n: int, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Validate integer class labels for ``n`` examples; returns ``(labels int32 (N,), n_classes)``.

    Raises:
      ValueError: wrong length, negative or out-of-range labels. TypeError: non-integer labels.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) to match the {n} examples, got shape {labels.shape}; "
            "pass the labels of exactly the examples the values were computed on"
        )
    if n and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
    top = int(labels.max()) + 1 if n else 0
    if n_classes is None:
        n_classes = top
    elif top > n_classes:
        raise ValueError(f"labels go up to {top - 1} but n_classes={n_classes}; pass n_classes >= {top}")
    return labels.astype(np.int32), int(n_classes)


# ---------------------------------------------------------------------------------------------------------
# Sparsity


@jax.jit
def hoyer(v) -> jax.Array:
    """Hoyer sparsity along the last axis: ``(sqrt(d) - |v|_1 / (|v|_2 + 1e-6)) / (sqrt(d) - 1)``.

    0 for a constant vector, 1 for a one-hot vector (up to the 1e-6 floor). Apply to the (N, C) "sum"
    contributions for per-example sparsity, to atoms (K, C) per atom, or to loadings.T (K, N) per mode.

    Args:
      v: (..., d) with d >= 2.
    Returns:
      (...,) Hoyer index.
    """
    v = _float(v, "v", 1)
    d = v.shape[-1]
    if d < 2:
        raise ValueError(f"hoyer needs at least 2 entries along the last axis, got shape {v.shape}")
    l1 = jnp.sum(jnp.abs(v), axis=-1)
    l2 = jnp.sqrt(jnp.sum(v * v, axis=-1))
    sd = jnp.sqrt(jnp.asarray(d, v.dtype))
    return (sd - l1 / (l2 + HOYER_EPS)) / (sd - 1)


# ---------------------------------------------------------------------------------------------------------
# Dimensionality of class means


def class_means(x, labels, n_classes: int | None = None) -> jax.Array:
    """Mean of the rows of ``x`` per class.

    Args:
      x: (..., N, C) values (leading axes: e.g. layers of equal width).
      labels: (N,) integer classes.
      n_classes: number of classes Y (default ``max(labels) + 1``); every class must have an example.
    Returns:
      (..., Y, C) class means.
    """
    x = _float(x, "x", 2)
    labels, n_classes = check_labels(labels, x.shape[-2], n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(
            f"classes {np.flatnonzero(counts == 0).tolist()} have no examples; pass n_classes equal to the "
            "number of classes present or relabel the classes to 0..Y-1"
        )
    return _class_means(x, jnp.asarray(labels), jnp.asarray(counts, x.dtype))


@jax.jit
def _class_means(x, labels, counts):
    onehot = jax.nn.one_hot(labels, counts.shape[0], dtype=x.dtype)  # (N, Y)
    return jnp.einsum("ny,...nc->...yc", onehot, x) / counts[:, None]


@jax.jit
def explained_variance_curve(m) -> jax.Array:
    """Cumulative explained-variance ratio of PCA (centred over rows) of ``m``, as sklearn's PCA reports it.

    Args:
      m: (..., Y, C) matrix, e.g. class means.
    Returns:
      (..., min(Y, C)) non-decreasing curve ending at 1 (NaN if ``m`` has no variance).
    """
    m = _float(m, "m", 2)
    centred = m - m.mean(axis=-2, keepdims=True)
    s = jnp.linalg.svd(centred, compute_uv=False)
    var = s * s
    return jnp.cumsum(var, axis=-1) / jnp.sum(var, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames="threshold")
def _first_reaching(curve, threshold: float):
    # A small tolerance keeps float32 round-off from pushing the count one component past the threshold.
    return jnp.argmax(curve >= threshold - 1e-6, axis=-1) + 1


def dimensionality(x, labels, n_classes: int | None = None, threshold: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Number of principal components of the class-mean matrix that reach ``threshold`` of its variance.

    Args:
      x: (..., N, C) per-example vectors ("sum" contributions or "positive" activations).
      labels: (N,) integer classes.
      threshold: fraction of variance in (0, 1].
    Returns:
      ``(k, curve)``: (...,) integer counts and the (..., min(Y, C)) cumulative explained-variance curve.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    curve = explained_variance_curve(class_means(x, labels, n_classes))
    return _first_reaching(curve, float(threshold)), curve


# ---------------------------------------------------------------------------------------------------------
# Positive / negative decorrelation


@jax.jit
def _neg_pearson(n, p):
    n = n - n.mean(axis=-1, keepdims=True)
    p = p - p.mean(axis=-1, keepdims=True)
    den = jnp.sqrt(jnp.sum(n * n, axis=-1) * jnp.sum(p * p, axis=-1))
    return jnp.where(den > 0, -jnp.sum(n * p, axis=-1) / jnp.where(den > 0, den, 1), jnp.nan)


def pos_neg_decorrelation(negative, positive) -> jax.Array:
    """``-Pearson(n, p)`` across channels, per example: 1 when the same channels excite and inhibit.

    Args:
      negative: (..., C) per-channel sums of the negative parts (values <= 0).
      positive: (..., C) per-channel sums of the positive parts.
    Returns:
      (...,) values in [-1, 1]; NaN where either vector is constant.
    """
    negative = _float(negative, "negative", 1)
    positive = _float(positive, "positive", 1)
    if negative.shape != positive.shape:
        raise ValueError(f"negative and positive must have equal shapes, got {negative.shape} and {positive.shape}")
    return _neg_pearson(negative, positive)


# ---------------------------------------------------------------------------------------------------------
# Class selectivity


def class_correlation(loadings, labels, n_classes: int | None = None) -> jax.Array:
    """Pearson correlation of every column of ``loadings`` with every one-hot class indicator (NaN -> 0).

    One standardised matrix product, as in the paper's mode-summary step.

    Args:
      loadings: (..., N, K) mode loadings, or channel values (then K = C).
      labels: (N,) integer classes.
      n_classes: Y (default ``max(labels) + 1``).
    Returns:
      (..., K, Y) correlations.
    """
    loadings = _float(loadings, "loadings", 2)
    labels, n_classes = check_labels(labels, loadings.shape[-2], n_classes)
    return _class_correlation(loadings, jnp.asarray(labels), n_classes)


@functools.partial(jax.jit, static_argnames="n_classes")
def _class_correlation(z, labels, n_classes: int):
    n = z.shape[-2]
    ind = jax.nn.one_hot(labels, n_classes, dtype=z.dtype)  # (N, Y)
    zc = z - z.mean(axis=-2, keepdims=True)
    ic = ind - ind.mean(axis=0, keepdims=True)
    cov = jnp.einsum("...nk,ny->...ky", zc, ic) / n
    sz = jnp.sqrt(jnp.mean(zc * zc, axis=-2))  # (..., K)
    si = jnp.sqrt(jnp.mean(ic * ic, axis=0))  # (Y,)
    den = sz[..., :, None] * si
    return jnp.where(den > 0, cov / jnp.where(den > 0, den, 1), 0.0)


class Selectivity(NamedTuple):
    """Summary of a (K, Y) correlation matrix (leading axes kept)."""

    top_corr: jax.Array  # (..., K) best class correlation of each mode
    top_class: jax.Array  # (..., K) that class
    top_mode: jax.Array  # (..., Y) mode with the highest correlation for each class
    n_selective: jax.Array  # (...,) modes whose best correlation exceeds the threshold
    classes_covered: jax.Array  # (...,) classes with at least one mode above the threshold
    median_top_corr: jax.Array  # (...,) median of top_corr


@functools.partial(jax.jit, static_argnames="threshold")
def selectivity(corr, threshold: float = 0.2) -> Selectivity:
    """Per-mode and per-class selectivity of a correlation matrix from :func:`class_correlation`.

    Args:
      corr: (..., K, Y).
      threshold: a mode is "class selective" if its best correlation exceeds it (paper: 0.2).
    """
    corr = _float(corr, "corr", 2)
    top = corr.max(axis=-1)
    above = corr > threshold
    return Selectivity(
        top_corr=top,
        top_class=corr.argmax(axis=-1),
        top_mode=corr.argmax(axis=-2),
        n_selective=jnp.sum(top > threshold, axis=-1),
        classes_covered=jnp.sum(above.any(axis=-2), axis=-1),
        median_top_corr=jnp.median(top, axis=-1),
    )


@functools.partial(jax.jit, static_argnames="top")
def class_coverage(corr, top: int = 60) -> tuple[jax.Array, jax.Array]:
    """Class-coverage curves: rank-ordered correlations averaged over classes and over modes.

    Args:
      corr: (..., K, Y).
      top: ranks to keep (paper: 60); clipped to K and Y.
    Returns:
      ``(per_class, per_mode)``: (..., min(top, K)) mean over classes of each class's r-th best mode
      correlation, and (..., min(top, Y)) mean over modes of each mode's r-th best class correlation.
    """
    corr = _float(corr, "corr", 2)
    by_class = -jnp.sort(-corr, axis=-2)[..., : min(top, corr.shape[-2]), :]  # (..., r, Y)
    by_mode = -jnp.sort(-corr, axis=-1)[..., : min(top, corr.shape[-1])]  # (..., K, r)
    return by_class.mean(axis=-1), by_mode.mean(axis=-2)


class Specificity(NamedTuple):
    """How concentrated each mode's (clipped) class correlations are; NaN for a mode with none positive."""

    entropy: jax.Array  # (..., K) 1 - H(p) / log(Y)
    gini: jax.Array  # (..., K) Gini coefficient
    top1_share: jax.Array  # (..., K) share of the total held by the best class
    top5_share: jax.Array  # (..., K) share held by the best 5 classes


@jax.jit
def specificity(corr) -> Specificity:
    """Specificity of each mode's class-correlation row after clipping at 0.

    Args:
      corr: (..., K, Y) with Y >= 2.
    """
    corr = _float(corr, "corr", 2)
    y = corr.shape[-1]
    if y < 2:
        raise ValueError(f"specificity needs at least 2 classes, got corr of shape {corr.shape}")
    c = jnp.maximum(corr, 0.0)
    total = c.sum(axis=-1, keepdims=True)
    ok = total[..., 0] > 0
    p = c / jnp.where(total > 0, total, 1)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0.0), axis=-1)
    s = jnp.sort(c, axis=-1)  # ascending
    i = jnp.arange(1, y + 1, dtype=c.dtype)
    gini = jnp.sum((2 * i - y - 1) * s, axis=-1) / (y * jnp.where(ok, total[..., 0], 1))
    top = -jnp.sort(-p, axis=-1)
    nan = jnp.asarray(jnp.nan, c.dtype)
    return Specificity(
        entropy=jnp.where(ok, 1 - ent / jnp.log(y), nan),
        gini=jnp.where(ok, gini, nan),
        top1_share=jnp.where(ok, top[..., 0], nan),
        top5_share=jnp.where(ok, top[..., : min(5, y)].sum(axis=-1), nan),
    )
