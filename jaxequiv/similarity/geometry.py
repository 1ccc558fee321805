"""Shape and subspace measures: orthogonal Procrustes, CCA / SVCCA / PWCCA, RSA, mutual k-NN alignment.

Conventions (documented values instead of NaN): inputs are centred (except k-NN, which L2-normalises rows)
and scaled to unit Frobenius norm (:mod:`jaxequiv.similarity.numerics`, so any finite float32 scale gives the same
value); a constant representation gives Procrustes distance sqrt(2) / angle pi/2,
CCA-type similarity 0, RSA 0 (an RDM with no spread has no rank order) and RSA rows with no variance count
as maximally dissimilar (correlation distance 1). Wide inputs (d > n) are first reduced to an ``n x n``
factor with the same Gram matrix, so every decomposition is at most ``min(n, d)`` on a side.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxequiv.similarity.base import Measure, check_pair
from jaxequiv.similarity.numerics import center_unit, qr_r, svd, unit_rows

__all__ = [
    "procrustes",
    "cca",
    "svcca",
    "pwcca",
    "rsa",
    "knn_alignment",
    "PROCRUSTES",
    "PROCRUSTES_ANGULAR",
    "CCA",
    "SVCCA",
    "PWCCA",
    "RSA",
    "KNN",
]

_HI = jax.lax.Precision.HIGHEST


def _reduce(X):
    """An (n, min(n, d)) matrix with the same Gram matrix ``X X'`` (R' of the QR of X' when d > n)."""
    n, d = X.shape
    if d <= n:
        return X
    return qr_r(X.T).T  # X' = Q R, X X' = R' R


# ---------------------------------------------------------------------------------------------------------
# Procrustes


@functools.partial(jax.jit, static_argnames=("angular",))
def _procrustes_kernel(X, Y, angular: bool):
    X, okx = center_unit(X)
    Y, oky = center_unit(Y)
    Xr, Yr = _reduce(X), _reduce(Y)
    U, _, Vt = svd(jnp.matmul(Yr.T, Xr, precision=_HI))
    R = Xr - jnp.matmul(Yr, U @ Vt, precision=_HI)  # the residual itself: no 2 - 2 cos cancellation near 0
    e = jnp.where(okx & oky, jnp.minimum(jnp.sqrt(jnp.sum(R * R)), jnp.sqrt(2.0)), jnp.sqrt(2.0))
    return 2.0 * jnp.arcsin(e / 2.0) if angular else e


def procrustes(X: ArrayLike, Y: ArrayLike, *, angular: bool = False) -> jax.Array:
    """Orthogonal Procrustes distance of centred, unit-norm X (n, d1) and Y (n, d2); a scalar.

    Euclidean: ``min_Q ||X - Y Q||_F = sqrt(2 - 2 ||X'Y||_*)`` in [0, sqrt 2]; angular: ``arccos ||X'Y||_*`` in
    [0, pi/2] (Williams et al. 2021). Unequal widths are handled as zero-padding (Q a partial isometry).
    """
    X, Y = check_pair(X, Y, name="procrustes")
    return _procrustes_kernel(X, Y, bool(angular))


# ---------------------------------------------------------------------------------------------------------
# CCA family


def _whiten(X, reg, keep_var):
    """Whitened basis (n, r) of X (centred, unit norm), the number of usable directions, and X reduced."""
    X = _reduce(X)
    U, s, _ = svd(X)
    s2 = s * s
    total = jnp.sum(s2)
    rank_ok = s > jnp.max(s) * max(X.shape) * jnp.finfo(X.dtype).eps * 10
    if keep_var is not None:  # SVCCA: the leading directions explaining keep_var of the variance
        frac = jnp.cumsum(s2) / jnp.where(total > 0, total, 1.0)
        rank_ok = rank_ok & (jnp.arange(s.shape[0]) <= jnp.sum(frac < keep_var))
    if reg > 0:
        eps = reg * total / s.shape[0]
        w = jnp.where(rank_ok, s / jnp.sqrt(s2 + eps), 0.0)
    else:
        w = rank_ok.astype(X.dtype)
    return U * w, jnp.sum(rank_ok), X


def _cca_parts(X, Y, reg, keep_var):
    Wx, kx, Xr = _whiten(center_unit(X)[0], reg, keep_var)  # a constant X has no usable direction: CCA 0
    Wy, ky, _ = _whiten(center_unit(Y)[0], reg, keep_var)
    A, rho, _ = svd(jnp.matmul(Wx.T, Wy, precision=_HI))
    k = jnp.minimum(kx, ky)
    valid = jnp.arange(rho.shape[0]) < k
    return jnp.clip(rho, 0.0, 1.0), valid, k, Wx @ A, Xr


@functools.partial(jax.jit, static_argnames=("reg", "keep_var", "weighted"))
def _cca_kernel(X, Y, reg: float, keep_var: float | None, weighted: bool):
    rho, valid, k, H, Xr = _cca_parts(X, Y, reg, keep_var)
    if weighted:  # PWCCA: weight each correlation by how much of X's neurons its canonical variate accounts for
        Xc = Xr - jnp.mean(Xr, axis=0)
        w = jnp.sum(jnp.abs(jnp.matmul(H.T, Xc, precision=_HI)), axis=1)[: rho.shape[0]] * valid
        tot = jnp.sum(w)
        return jnp.where(tot > 0, jnp.sum(w * rho) / jnp.where(tot > 0, tot, 1.0), 0.0)
    return jnp.where(k > 0, jnp.sum(rho * valid) / jnp.maximum(k, 1), 0.0)


def _check_reg(reg):
    if not reg >= 0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    return float(reg)


def cca(X: ArrayLike, Y: ArrayLike, *, reg: float = 0.0) -> jax.Array:
    """Mean canonical correlation of X (n, d1) and Y (n, d2) over the min(rank) canonical pairs; in [0, 1].

    ``reg > 0`` shrinks each covariance towards ``reg * mean eigenvalue * I`` (regularised CCA), which keeps
    the value informative when n < d (unregularised CCA of wide data is always 1).
    """
    X, Y = check_pair(X, Y, name="cca")
    return _cca_kernel(X, Y, _check_reg(reg), None, False)


def svcca(X: ArrayLike, Y: ArrayLike, *, keep_var: float = 0.99, reg: float = 0.0) -> jax.Array:
    """SVCCA (Raghu et al. 2017): CCA on the leading singular directions explaining ``keep_var`` of variance."""
    if not 0 < keep_var <= 1:
        raise ValueError(f"keep_var must be in (0, 1], got {keep_var}")
    X, Y = check_pair(X, Y, name="svcca")
    return _cca_kernel(X, Y, _check_reg(reg), float(keep_var), False)


def pwcca(X: ArrayLike, Y: ArrayLike, *, reg: float = 0.0) -> jax.Array:
    """Projection-weighted CCA (Morcos et al. 2018), weights from X's neurons (not symmetric); in [0, 1]."""
    X, Y = check_pair(X, Y, name="pwcca")
    return _cca_kernel(X, Y, _check_reg(reg), None, True)


# ---------------------------------------------------------------------------------------------------------
# RSA


def _avg_ranks_xla(v):
    """Ranks 1..m of ``v [m]``, ties given their average rank: one key-value sort, then each tie group's first and
    last sorted index by a running max / min."""
    m = v.shape[0]
    i = jnp.arange(m)
    s, order = jax.lax.sort((v, i), num_keys=1, is_stable=False)
    differs = s[1:] != s[:-1]
    first = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones(1, bool), differs]), i, 0))
    last = jax.lax.cummin(jnp.where(jnp.concatenate([differs, jnp.ones(1, bool)]), i, m - 1), reverse=True)
    return jnp.zeros(m, v.dtype).at[order].set((first + last).astype(v.dtype) / 2 + 1, unique_indices=True)


def _avg_ranks_host(v):
    """The same ranks from ``scipy.stats.rankdata`` on the host (its NumPy sort of 2M floats takes a third of
    XLA:CPU's comparator sort)."""
    from scipy.stats import rankdata

    return jax.pure_callback(lambda a: rankdata(a).astype(a.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
                             jax.lax.stop_gradient(v), vmap_method="sequential")


def _avg_ranks(v):
    """Ranks 1..m with ties given their average rank (as scipy.stats.rankdata); on the CPU through SciPy."""
    return jax.lax.platform_dependent(v, cpu=_avg_ranks_host, default=_avg_ranks_xla)


def _standardized(v):
    """``v`` centred and scaled to unit norm, so that the Pearson r of two vectors is their dot product; zeros when
    ``v`` has no spread beyond float rounding of its magnitude (r = 0 then)."""
    tol = 16 * jnp.finfo(v.dtype).eps * jnp.sqrt(v.shape[0])
    ok = jnp.std(v) > tol * jnp.max(jnp.abs(v))
    c = v - jnp.mean(v)
    return jnp.where(ok, c / jnp.where(ok, jnp.sqrt(jnp.sum(c * c)), 1.0), 0.0)


def _rdm(X, kind):
    if kind == "correlation":
        Z = unit_rows(X, center=True)
        return 1.0 - jnp.matmul(Z, Z.T, precision=_HI)
    X, _ = center_unit(X)
    sq = jnp.sum(X * X, axis=1)
    return jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(X, X.T, precision=_HI), 0.0))


def _rdm_vector(X, rdm: str, compare: str):
    """The upper triangle of X's RDM (its ranks for Spearman), standardized: ``(n (n - 1) / 2,)``."""
    a = _rdm(X, rdm)[jnp.triu_indices(X.shape[0], 1)]
    return _standardized(_avg_ranks(a) if compare == "spearman" else a)


@functools.partial(jax.jit, static_argnames=("rdm", "compare"))
def _rsa_kernel(X, Y, rdm: str, compare: str):
    return jnp.sum(_rdm_vector(X, rdm, compare) * _rdm_vector(Y, rdm, compare))


def _rsa_pairwise(Xs, Ys, keys, chunk: int):
    """All pairs of (m, n, d) and (k, n, d) stacks, (m, k): each RDM is built and ranked once (not once per pair),
    then the correlations are one matrix product of the standardized RDM vectors."""
    vectors = lambda S: jax.lax.map(lambda X: _rdm_vector(X, "correlation", "spearman"), S)  # noqa: E731
    A = vectors(Xs)
    return jnp.matmul(A, (A if Ys is None else vectors(Ys)).T, precision=_HI)


def rsa(X: ArrayLike, Y: ArrayLike, *, rdm: str = "correlation", compare: str = "spearman") -> jax.Array:
    """Representational similarity analysis: correlation of the upper triangles of the two RDMs; in [-1, 1].

    Args:
      rdm: ``"correlation"`` (1 - Pearson r between stimuli's patterns) or ``"euclidean"``.
      compare: ``"spearman"`` (average ranks for ties) or ``"pearson"``.
    """
    if rdm not in ("correlation", "euclidean"):
        raise ValueError(f"rdm must be 'correlation' or 'euclidean', got {rdm!r}")
    if compare not in ("spearman", "pearson"):
        raise ValueError(f"compare must be 'spearman' or 'pearson', got {compare!r}")
    X, Y = check_pair(X, Y, min_samples=3, name="rsa")
    return _rsa_kernel(X, Y, rdm, compare)


# ---------------------------------------------------------------------------------------------------------
# Mutual k-NN alignment


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_kernel(X, Y, k: int):
    def neighbours(A):
        A = unit_rows(A)
        S = jnp.matmul(A, A.T, precision=_HI)
        S = jnp.where(jnp.eye(A.shape[0], dtype=bool), -jnp.inf, S)
        return jax.lax.top_k(S, k)[1]

    nx, ny = neighbours(X), neighbours(Y)
    shared = jnp.sum(jnp.any(nx[:, :, None] == ny[:, None, :], axis=-1), axis=1)
    return jnp.mean(shared / k)


def knn_alignment(X: ArrayLike, Y: ArrayLike, *, k: int = 10) -> jax.Array:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024): mean fraction of shared cosine neighbours; [0, 1]."""
    X, Y = check_pair(X, Y, min_samples=2, name="knn_alignment")
    if not 1 <= k < X.shape[0]:
        raise ValueError(f"knn_alignment: k must be in [1, n-1] = [1, {X.shape[0] - 1}], got {k}")
    return _knn_kernel(X, Y, int(k))


# ---------------------------------------------------------------------------------------------------------
# Measures

_SHAPE_INV = frozenset({"orthogonal", "isotropic_scaling", "translation"})

PROCRUSTES = Measure(
    "procrustes", lambda X, Y, key: _procrustes_kernel(X, Y, False), False, True, True, _SHAPE_INV,
    doc="orthogonal Procrustes distance (Euclidean) of centred unit-norm representations",
)
PROCRUSTES_ANGULAR = Measure(
    "procrustes_angular", lambda X, Y, key: _procrustes_kernel(X, Y, True), False, True, True, _SHAPE_INV,
    doc="angular Procrustes shape distance arccos ||X'Y||_*",
)
CCA = Measure(
    "cca", lambda X, Y, key: _cca_kernel(X, Y, 0.0, None, False), True, False, True,
    _SHAPE_INV | {"invertible_linear"}, doc="mean canonical correlation",
)
SVCCA = Measure(
    "svcca", lambda X, Y, key: _cca_kernel(X, Y, 0.0, 0.99, False), True, False, True, _SHAPE_INV,
    doc="SVCCA (99% variance) mean canonical correlation",
)
PWCCA = Measure(  # the weights sum over X's neurons: not invariant to rotating them
    "pwcca", lambda X, Y, key: _cca_kernel(X, Y, 0.0, None, True), True, False, False,
    frozenset({"isotropic_scaling", "translation", "permutation"}),
    doc="projection-weighted CCA",
)
RSA = Measure(
    "rsa", lambda X, Y, key: _rsa_kernel(X, Y, "correlation", "spearman"), True, False, True,
    frozenset({"isotropic_scaling", "monotonic_rdm"}), min_samples=3, pairwise_kernel=_rsa_pairwise,
    doc="Spearman correlation of correlation-distance RDMs",
)
KNN = Measure(
    "knn", lambda X, Y, key: _knn_kernel(X, Y, min(10, X.shape[0] - 1)), True, False, True,
    frozenset({"orthogonal", "isotropic_scaling"}), min_samples=2,
    doc="mutual k-NN alignment (k = 10, cosine)",
)
