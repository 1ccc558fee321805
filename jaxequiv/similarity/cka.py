"""Centred kernel alignment (CKA): linear (biased and unbiased HSIC), RBF, and minibatch (streaming) CKA.

Conventions (documented values instead of NaN):

* Inputs are centred and scaled to unit Frobenius norm first (CKA is invariant to both;
  :func:`jaxequiv.similarity.numerics.center_unit`), so any finite float32 scale gives the same value.
* If either representation has no variance (constant rows) CKA is defined as 0.
* Unbiased CKA (HSIC_1 of Song et al. 2012) needs n >= 4; if an unbiased self-HSIC is <= 0 (possible for
  very small n) the value is 0.

Linear CKA is computed in feature space (``||Y'X||_F^2``) or Gram space, whichever is cheaper; the unbiased
estimator only needs ``||Y'X||_F^2``, the squared row norms and their sums, so neither forms ``n x n`` Grams
unless that is cheaper.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxequiv.similarity.base import Measure, check_pair
from jaxequiv.similarity.numerics import center_unit, max_abs

__all__ = [
    "linear_cka",
    "rbf_cka",
    "minibatch_cka",
    "CKAStream",
    "cka_stream_init",
    "cka_stream_update",
    "cka_stream_merge",
    "cka_stream_result",
    "LINEAR_CKA",
    "LINEAR_CKA_UNBIASED",
    "RBF_CKA",
    "rbf_cka_measure",
    "minibatch_cka_measure",
]

_HI = jax.lax.Precision.HIGHEST


def _cross_sq(X, Y):
    """``||Y'X||_F^2 = <XX', YY'>`` in the cheaper of feature or Gram space."""
    n, d1 = X.shape
    d2 = Y.shape[1]
    if n * d1 * d2 <= n * n * (d1 + d2):
        C = jnp.matmul(X.T, Y, precision=_HI)
        return jnp.sum(C * C)
    K = jnp.matmul(X, X.T, precision=_HI)
    L = jnp.matmul(Y, Y.T, precision=_HI)
    return jnp.sum(K * L)


def _hsic_u_terms(cross, dK, dL, n):
    """Unbiased HSIC (times n(n-3)) of centred data from ``<K,L>``, diag(K), diag(L)."""
    return cross - (1.0 + 2.0 / (n - 2)) * jnp.dot(dK, dL) + jnp.sum(dK) * jnp.sum(dL) / ((n - 1) * (n - 2))


def _ratio(xy, xx, yy):
    ok = (xx > 0) & (yy > 0)
    return jnp.where(ok, xy / jnp.sqrt(jnp.where(ok, xx * yy, 1.0)), 0.0)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _linear_cka_kernel(X, Y, unbiased: bool = False):
    X, okx = center_unit(X)
    Y, oky = center_unit(Y)
    xy, xx, yy = _cross_sq(X, Y), _cross_sq(X, X), _cross_sq(Y, Y)
    if unbiased:
        n = X.shape[0]
        dK, dL = jnp.sum(X * X, axis=1), jnp.sum(Y * Y, axis=1)
        xy, xx, yy = _hsic_u_terms(xy, dK, dL, n), _hsic_u_terms(xx, dK, dK, n), _hsic_u_terms(yy, dL, dL, n)
    return jnp.where(okx & oky, _ratio(xy, xx, yy), 0.0)


def linear_cka(X: ArrayLike, Y: ArrayLike, *, unbiased: bool = False) -> jax.Array:
    """Linear CKA of X (n, d1) and Y (n, d2), in [0, 1] (unbiased: may be slightly negative); a scalar.

    ``unbiased=True`` uses the unbiased HSIC estimator (needs n >= 4), which is ~0 for independent data.
    """
    X, Y = check_pair(X, Y, min_samples=4 if unbiased else 2, name="linear_cka")
    return _linear_cka_kernel(X, Y, bool(unbiased))


# ---------------------------------------------------------------------------------------------------------
# RBF CKA


def _rbf_gram(X, sigma_frac):
    sq = jnp.sum(X * X, axis=1)
    D = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(X, X.T, precision=_HI), 0.0)
    med = jnp.median(D)  # over all n^2 entries (diagonal included), as Kornblith et al.'s gram_rbf
    ok = med > 0
    return jnp.exp(-D / (2.0 * sigma_frac**2 * jnp.where(ok, med, 1.0))), ok


@functools.partial(jax.jit, static_argnames=("sigma_frac",))
def _rbf_cka_kernel(X, Y, sigma_frac: float = 1.0):
    X, okx = center_unit(X)
    Y, oky = center_unit(Y)
    K, ok1 = _rbf_gram(X, sigma_frac)
    L, ok2 = _rbf_gram(Y, sigma_frac)

    def center(G):
        G = G - jnp.mean(G, axis=0, keepdims=True)
        return G - jnp.mean(G, axis=1, keepdims=True)

    K, L = center(K), center(L)
    val = _ratio(jnp.sum(K * L), jnp.sum(K * K), jnp.sum(L * L))
    return jnp.where(okx & oky & ok1 & ok2, val, 0.0)


def rbf_cka(X: ArrayLike, Y: ArrayLike, *, sigma_frac: float = 1.0) -> jax.Array:
    """CKA with Gaussian kernels of bandwidth ``sigma_frac * sqrt(median squared distance)``; a scalar in [0, 1].

    Forms n x n Gram matrices (memory O(n^2)).
    """
    if not sigma_frac > 0:
        raise ValueError(f"sigma_frac must be positive, got {sigma_frac}")
    X, Y = check_pair(X, Y, min_samples=2, name="rbf_cka")
    return _rbf_cka_kernel(X, Y, float(sigma_frac))


# ---------------------------------------------------------------------------------------------------------
# Minibatch CKA (Nguyen et al. 2021): averages of unbiased HSIC over minibatches, streamable and mergeable.


class CKAStream(NamedTuple):
    """Running sums of per-batch unbiased HSIC (xy, xx, yy) and the number of batches. Merge by addition."""

    xy: jax.Array
    xx: jax.Array
    yy: jax.Array
    count: jax.Array


def cka_stream_init(dtype=jnp.float32) -> CKAStream:
    """An empty stream."""
    z = jnp.zeros((), dtype)
    return CKAStream(z, z, z, jnp.zeros((), jnp.int32))


def _batch_hsic(Xb, Yb):
    b = Xb.shape[0]
    Xb = Xb - jnp.mean(Xb, axis=0)
    Yb = Yb - jnp.mean(Yb, axis=0)
    dK, dL = jnp.sum(Xb * Xb, axis=1), jnp.sum(Yb * Yb, axis=1)
    scale = 1.0 / (b * (b - 3))
    return (
        scale * _hsic_u_terms(_cross_sq(Xb, Yb), dK, dL, b),
        scale * _hsic_u_terms(_cross_sq(Xb, Xb), dK, dK, b),
        scale * _hsic_u_terms(_cross_sq(Yb, Yb), dL, dL, b),
    )


@jax.jit
def cka_stream_update(state: CKAStream, Xb: ArrayLike, Yb: ArrayLike) -> CKAStream:
    """Add one minibatch ``Xb (b, d1)``, ``Yb (b, d2)`` (b >= 4, same stimuli in the same order).

    Batches are summed at their own scale (HSIC is a 4th power of it): divide a stream's values by one fixed
    constant if their magnitudes are far from 1 (beyond ~1e-9 .. 1e9 in float32); the value does not change.
    """
    if Xb.shape[0] < 4:
        raise ValueError(f"minibatch CKA needs batches of at least 4 samples, got {Xb.shape[0]}")
    xy, xx, yy = _batch_hsic(Xb, Yb)
    return CKAStream(state.xy + xy, state.xx + xx, state.yy + yy, state.count + 1)


def cka_stream_merge(a: CKAStream, b: CKAStream) -> CKAStream:
    """Combine two streams (e.g. from two devices; under ``shard_map`` use ``jax.lax.psum`` on the fields)."""
    return CKAStream(*(x + y for x, y in zip(a, b)))


def cka_stream_result(state: CKAStream) -> jax.Array:
    """Minibatch CKA of everything added so far (0 if a self-HSIC average is <= 0)."""
    return _ratio(state.xy, state.xx, state.yy)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _minibatch_kernel(X, Y, batch_size: int):
    X, Y = X / max_abs(X), Y / max_abs(Y)  # one scale for all batches: HSIC sums stay in float32 range
    nb = X.shape[0] // batch_size
    Xb = X[: nb * batch_size].reshape(nb, batch_size, -1)
    Yb = Y[: nb * batch_size].reshape(nb, batch_size, -1)
    xy, xx, yy = jax.vmap(_batch_hsic)(Xb, Yb)
    return _ratio(jnp.sum(xy), jnp.sum(xx), jnp.sum(yy))


def minibatch_cka(X: ArrayLike, Y: ArrayLike, *, batch_size: int = 256) -> jax.Array:
    """Minibatch CKA over consecutive batches of ``batch_size`` rows (n must be a multiple); a scalar."""
    X, Y = check_pair(X, Y, min_samples=4, name="minibatch_cka")
    if batch_size < 4 or X.shape[0] % batch_size:
        raise ValueError(
            f"minibatch_cka: batch_size must be >= 4 and divide n={X.shape[0]}, got {batch_size}; "
            "drop or pad rows, or pick a divisor of n"
        )
    return _minibatch_kernel(X, Y, int(batch_size))


# ---------------------------------------------------------------------------------------------------------
# Pairwise linear CKA: centred, normalised Grams per representation, one matrix of inner products.


@functools.partial(jax.jit, static_argnames=("unbiased", "block", "same"))
def _pairwise_linear_cka(Xs, Ys, unbiased: bool, block: int, same: bool):
    """Linear CKA between every ``Xs[i]`` (m, n, d1) and ``Ys[j]`` (k, n, d2); (m, k).

    Works on row blocks of the centred Gram matrices (memory O((m + k) * block * n)), accumulating
    ``<K_i, L_j>`` for all pairs with one matrix product per block; O(n^2 d) per representation instead of
    per pair.
    """
    n = Xs.shape[1]
    Xs, okx = jax.vmap(center_unit)(Xs)
    Ys, oky = (Xs, okx) if same else jax.vmap(center_unit)(Ys)
    pad = (-n) % block
    Xp = jnp.pad(Xs, ((0, 0), (0, pad), (0, 0)))
    Yp = Xp if same else jnp.pad(Ys, ((0, 0), (0, pad), (0, 0)))
    nblocks = (n + pad) // block

    def step(acc, i):
        xb = jax.lax.dynamic_slice_in_dim(Xp, i * block, block, axis=1)
        Gx = jnp.einsum("mbd,mnd->mbn", xb, Xs, precision=_HI).reshape(Xs.shape[0], -1)
        if same:
            Gy = Gx
        else:
            yb = jax.lax.dynamic_slice_in_dim(Yp, i * block, block, axis=1)
            Gy = jnp.einsum("mbd,mnd->mbn", yb, Ys, precision=_HI).reshape(Ys.shape[0], -1)
        S, sx, sy = acc
        return (S + jnp.matmul(Gx, Gy.T, precision=_HI), sx + jnp.sum(Gx * Gx, 1), sy + jnp.sum(Gy * Gy, 1)), None

    m, k = Xs.shape[0], Ys.shape[0]
    init = (jnp.zeros((m, k), Xs.dtype), jnp.zeros((m,), Xs.dtype), jnp.zeros((k,), Xs.dtype))
    (S, sx, sy), _ = jax.lax.scan(step, init, jnp.arange(nblocks))
    if unbiased:
        dX, dY = jnp.sum(Xs * Xs, axis=2), jnp.sum(Ys * Ys, axis=2)  # (m, n), (k, n)

        c1, c2 = 1.0 + 2.0 / (n - 2), 1.0 / ((n - 1) * (n - 2))
        S = S - c1 * (dX @ dY.T) + c2 * jnp.outer(dX.sum(1), dY.sum(1))
        sx = sx - c1 * jnp.sum(dX * dX, 1) + c2 * dX.sum(1) ** 2
        sy = sy - c1 * jnp.sum(dY * dY, 1) + c2 * dY.sum(1) ** 2
    val = _ratio(S, sx[:, None], sy[None, :])
    return jnp.where(okx[:, None] & oky[None, :], val, 0.0)


def _linear_measure(unbiased: bool) -> Measure:
    def kernel(X, Y, key):
        return _linear_cka_kernel(X, Y, unbiased)

    def pairwise_kernel(Xs, Ys, keys, chunk):
        block = max(1, min(Xs.shape[1], chunk))
        return _pairwise_linear_cka(Xs, Xs if Ys is None else Ys, unbiased, block, Ys is None)

    return Measure(
        name="linear_cka_unbiased" if unbiased else "linear_cka",
        kernel=kernel,
        higher_is_similar=True,
        is_metric=False,
        symmetric=True,
        invariances=frozenset({"orthogonal", "isotropic_scaling", "translation"}),
        min_samples=4 if unbiased else 2,
        pairwise_kernel=pairwise_kernel,
        doc="linear CKA" + (" with the unbiased HSIC estimator" if unbiased else ""),
    )


LINEAR_CKA = _linear_measure(False)
LINEAR_CKA_UNBIASED = _linear_measure(True)


def rbf_cka_measure(sigma_frac: float = 1.0) -> Measure:
    """RBF CKA as a :class:`Measure`."""
    if not sigma_frac > 0:
        raise ValueError(f"sigma_frac must be positive, got {sigma_frac}")
    return Measure(
        name="rbf_cka",
        kernel=lambda X, Y, key: _rbf_cka_kernel(X, Y, float(sigma_frac)),
        higher_is_similar=True,
        is_metric=False,
        symmetric=True,
        invariances=frozenset({"orthogonal", "isotropic_scaling", "translation"}),
        doc=f"CKA with RBF kernels (bandwidth {sigma_frac} x median distance)",
    )


RBF_CKA = rbf_cka_measure()


def minibatch_cka_measure(batch_size: int = 256) -> Measure:
    """Minibatch CKA as a :class:`Measure`; rows beyond the last full batch are ignored (``minibatch_cka`` raises)."""
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4, got {batch_size}")
    return Measure(
        name="minibatch_cka",
        kernel=lambda X, Y, key: _minibatch_kernel(X, Y, int(batch_size)),
        higher_is_similar=True,
        is_metric=False,
        symmetric=True,
        invariances=frozenset({"orthogonal", "isotropic_scaling", "translation"}),
        min_samples=int(batch_size),
        doc=f"minibatch CKA (unbiased HSIC averaged over batches of {batch_size})",
    )
