"""The ridge-regression encoding score of the interpretive-equivalence reference code, vectorised.

The reference fits scikit-learn ``RidgeCV(alphas=(0.1, 1, 10))`` (intercept, efficient leave-one-out over the
alphas with one alpha shared by all targets) on a ``train_test_split(test_size=0.1)`` and reports the held-out
R^2 averaged over outputs, optionally ``sqrt(max(R^2, 0))``. :func:`ridge_score` returns the same numbers:

* X and Y are centred on the training rows (the intercept); the test rows use the training means.
* One symmetric eigendecomposition of the training design per split: of the Gram matrix ``Xc Xc'`` when
  ``n_train <= d`` and of the covariance ``Xc' Xc`` otherwise (the smaller one). Every alpha and every target
  reuses it: with factors ``R`` (n, r), ``L`` (n, r), eigenvalues ``lam`` and ``g = 1 / (lam + alpha)``,
  fitted values are ``L diag(g) R' y``, the hat diagonal is ``(L * R) g``, and the leave-one-out residual is
  ``(y - fit) / (1 - hat - 1/n)`` (the ``1/n`` is the intercept's leverage).
* Scale: X is divided by its largest magnitude ``s`` and the alphas by ``s^2`` (the same fit exactly), Y by its
  largest magnitude (R^2 and the choice of alpha do not depend on it), so any finite float32 input gives
  scikit-learn's float64 answer: at scale 1e-20 every alpha shrinks the fit to the mean, at 1e19 none does.
* The eigendecomposition is :func:`jaxequiv.similarity.numerics.eigh`: vmapped fits (congruity rounds, pairwise
  rows) run it as a loop of unbatched LAPACK calls on the CPU, where a batched call can deadlock the XLA pool.
* alpha = argmin over alphas of the mean squared LOO residual over all samples and targets (first on ties).
* R^2 per output as ``sklearn.metrics.r2_score``: a constant held-out column scores 1 if predicted exactly and
  0 otherwise (constant means a spread below float32 resolution of the column's magnitude).

``many`` variants score one X against many targets with a single decomposition (the within- and across-
implementation fits of a trial, or a row of a pairwise matrix).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxequiv.rng import as_key
from jaxequiv.similarity.base import Measure, check_pair, check_reprs
from jaxequiv.similarity.numerics import eigh, max_abs

__all__ = ["ridge_score", "ridge_many", "ridge_r2_outputs", "split_indices", "ridge_measure", "RIDGE", "RIDGE_SQRT", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = (0.1, 1.0, 10.0)


def _split_sizes(n: int, test_size: float) -> tuple[int, int]:
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)  # as sklearn's train_test_split with a float test_size
    n_train = n - n_test
    if n_train < 2 or n_test < 1:
        raise ValueError(f"n={n} samples leave {n_train} training and {n_test} test rows; need >= 2 and >= 1")
    return n_train, n_test


def split_indices(key, n: int, test_size: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Random train/test row indices like ``train_test_split``: ``(train (n - ceil(t n),), test (ceil(t n),))``.

    ``key``: a ``jax.random.key`` or an int seed."""
    n_train, n_test = _split_sizes(n, test_size)
    perm = jax.random.permutation(as_key(key), n)
    return perm[n_test:], perm[:n_test]


# ---------------------------------------------------------------------------------------------------------
# Kernels (jittable, no validation).


def _basis(Xtr, Xte, a):
    """Factors of the ridge hat matrix of ``Xtr`` (n, d) (centred here) and the test design ``Xte`` (m, d).

    Returns ``(R, L, T, lam, a)`` with ``R, L`` (n, r), ``T`` (m, r), ``lam`` (r,) and the ridge strengths ``a``
    (A,) passed through: with ``g = 1 / (lam + a_k)``, the training fit is ``L diag(g) R' y`` and the test prediction ``T diag(g) R' y``.
    In the Gram form ``L is None`` and ``R`` is an orthonormal eigenbasis of the complement of the constant
    vector, so residuals and LOO denominators are sums of positive terms (no cancellation in float32).
    """
    mu = jnp.mean(Xtr, axis=0)
    Xc, Xt = Xtr - mu, Xte - mu
    n, d = Xc.shape
    hi = jax.lax.Precision.HIGHEST
    if n <= d:  # Gram form on the complement of 1 (the intercept direction), via one Householder reflection
        K = jnp.matmul(Xc, Xc.T, precision=hi)
        v = jnp.full((n,), 1.0 / math.sqrt(n), K.dtype).at[0].add(1.0)  # H e1 = -1/sqrt(n)
        beta = 2.0 / jnp.dot(v, v)
        w = K @ v
        HKH = K - beta * jnp.outer(v, w) - beta * jnp.outer(w, v) + beta**2 * jnp.dot(v, w) * jnp.outer(v, v)
        lam, Qh = eigh(HKH[1:, 1:])
        Q = jnp.concatenate([jnp.zeros((1, n - 1), K.dtype), Qh]) - beta * jnp.outer(v, v[1:] @ Qh)
        T = jnp.matmul(jnp.matmul(Xt, Xc.T, precision=hi), Q, precision=hi)
        return Q, None, T, jnp.maximum(lam, 0.0), a
    # Covariance form: C = V lam V'; Z = Xc V; fit = Z diag(g) Z' y; test = (Xt V) diag(g) Z' y
    C = jnp.matmul(Xc.T, Xc, precision=hi)
    lam, V = eigh(C)
    Z = jnp.matmul(Xc, V, precision=hi)
    return Z, Z, jnp.matmul(Xt, V, precision=hi), jnp.maximum(lam, 0.0), a


def _r2_outputs(Yte, pred):
    """Per-output R^2 with sklearn's ``force_finite`` rule for constant columns; shape (t,)."""
    m = Yte.shape[0]
    ss_res = jnp.sum((Yte - pred) ** 2, axis=0)
    ss_tot = jnp.sum((Yte - jnp.mean(Yte, axis=0)) ** 2, axis=0)
    scale = jnp.max(jnp.abs(Yte), axis=0)
    tol = m * (8 * jnp.finfo(Yte.dtype).eps * scale) ** 2
    constant = ss_tot <= tol
    return jnp.where(constant, jnp.where(ss_res <= tol, 1.0, 0.0), 1.0 - ss_res / jnp.where(constant, 1.0, ss_tot))


def _fit_eval(basis, Ytr, Yte):
    """Chosen-alpha index and per-output held-out R^2 for one target ``Ytr`` (n, t) / ``Yte`` (m, t).

    Y is divided by its largest magnitude first: R^2 and the leave-one-out choice of alpha do not depend on it.
    """
    R, L, T, lam, a = basis
    n = Ytr.shape[0]
    hi = jax.lax.Precision.HIGHEST
    s = jnp.maximum(max_abs(Ytr), max_abs(Yte))
    Ytr, Yte = Ytr / s, Yte / s
    ym = jnp.mean(Ytr, axis=0)
    Yc = Ytr - ym
    B = jnp.matmul(R.T, Yc, precision=hi)  # (r, t)
    G = 1.0 / (lam[None, :] + a[:, None])  # (A, r)
    if L is None:  # Gram form: residual = R diag(a g) R' y and 1 - h_ii - 1/n = sum_j R_ij^2 a g_j
        # LOO = residual / denominator does not change when a g is rescaled per alpha: use
        # W = (lam_min + a) / (lam + a) in (0, 1], which neither under- nor overflows at any alpha.
        W = (jnp.min(lam) + a[:, None]) / (lam[None, :] + a[:, None])
        resid = jnp.einsum("nr,art->ant", R, W[:, :, None] * B[None], precision=hi)  # (A, n, t)
        denom = jnp.matmul(R * R, W.T, precision=hi)  # (n, A)
    else:
        resid = Yc[None] - jnp.einsum("nr,art->ant", L, G[:, :, None] * B[None], precision=hi)
        denom = 1.0 - jnp.matmul(L * R, G.T, precision=hi) - 1.0 / n
    looe = resid / denom.T[:, :, None]
    mse = jnp.mean(looe**2, axis=(1, 2))  # (A,)
    best = jnp.argmin(mse)  # first minimum, as RidgeCV's strict ">" update
    pred = jnp.matmul(T, G[best][:, None] * B, precision=hi) + ym
    return best, _r2_outputs(Yte, pred)


def _finish(r2, sqrt: bool):
    r2 = jnp.mean(r2)
    return jnp.sqrt(jnp.maximum(r2, 0.0)) if sqrt else r2


def _fits(X, Ys, train_idx, test_idx, alphas):
    """Per target stack ``Ys[i]`` (k_i, n, t_i): the chosen-alpha indices (k_i,) and per-output R^2 (k_i, t_i) of
    X (n, d) predicting it on one split, all with one decomposition of X. X is divided by its largest magnitude
    and the alphas by its square (the same fit, see :func:`_basis`), so any finite scale works."""
    s = max_abs(X)
    fmax = jnp.finfo(X.dtype)
    a = jnp.clip(jnp.asarray(alphas, X.dtype) / s / s, fmax.tiny, fmax.max)
    X = X / s
    basis = _basis(X[train_idx], X[test_idx], a)
    return [jax.vmap(lambda Y: _fit_eval(basis, Y[train_idx], Y[test_idx]))(Y) for Y in Ys]


@functools.partial(jax.jit, static_argnames=("alphas", "sqrt"))
def _many_idx(X, Ys, train_idx, test_idx, alphas, sqrt):
    """R^2 of X (n, d) predicting each target of the stacks ``Ys`` (a tuple of (k_i, n, t_i)) on one split,
    concatenated: shape (sum k_i,)."""
    return jnp.concatenate([jax.vmap(lambda r: _finish(r, sqrt))(r2) for _, r2 in _fits(X, Ys, train_idx, test_idx, alphas)])


# ---------------------------------------------------------------------------------------------------------
# Public API.


def _check_split(n: int, train_idx, test_idx):
    train_idx = np.asarray(train_idx)
    test_idx = np.asarray(test_idx)
    for label, idx in (("train_idx", train_idx), ("test_idx", test_idx)):
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TypeError(f"{label} must be a 1-D integer index array, got shape {idx.shape} dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{label} has indices outside [0, {n}); got range [{idx.min()}, {idx.max()}]")
    if train_idx.size < 2 or test_idx.size < 1:
        raise ValueError(f"need >= 2 training rows and >= 1 test row, got {train_idx.size} and {test_idx.size}")
    return jnp.asarray(train_idx), jnp.asarray(test_idx)


def _resolve_split(n, key, train_idx, test_idx, test_size):
    if (train_idx is None) != (test_idx is None):
        raise ValueError("pass both train_idx and test_idx, or neither (and a key)")
    if train_idx is not None:
        return _check_split(n, train_idx, test_idx)
    if key is None:
        raise ValueError("ridge_score draws a random train/test split: pass key=jax.random.key(seed) or train_idx/test_idx")
    return split_indices(key, n, test_size)


def _check_alphas(alphas) -> tuple[float, ...]:
    alphas = tuple(float(a) for a in np.atleast_1d(np.asarray(alphas, dtype=float)))
    if not alphas or not all(0 < a < np.inf for a in alphas):
        raise ValueError(f"alphas must be positive, finite regularisation strengths, got {alphas}")
    return alphas


@functools.partial(jax.jit, static_argnames=("alphas",))
def _single(X, Y, train, test, alphas):
    ((best, r2),) = _fits(X, (Y[None],), train, test, alphas)
    return best[0], r2[0]


def ridge_r2_outputs(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    key=None,
    train_idx: ArrayLike | None = None,
    test_idx: ArrayLike | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    test_size: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """Held-out R^2 per output (t,) and the chosen alpha of ``RidgeCV`` fitted on X (n, d) -> Y (n, t)."""
    X, Y = check_pair(X, Y, min_samples=3, name="ridge_score")
    alphas = _check_alphas(alphas)
    train, test = _resolve_split(X.shape[0], key, train_idx, test_idx, test_size)
    best, r2 = _single(X, Y, train, test, alphas)
    return r2, jnp.asarray(alphas, X.dtype)[best]


def ridge_score(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    key=None,
    train_idx: ArrayLike | None = None,
    test_idx: ArrayLike | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    test_size: float = 0.1,
    sqrt: bool = False,
) -> jax.Array:
    """Held-out R^2 of ``RidgeCV(alphas)`` predicting Y (n, t) from X (n, d), averaged over outputs.

    Args:
      X, Y: representations of the same n stimuli (any finite scale).
      key: PRNG key (or int seed) for a random ``test_size`` split; or give ``train_idx`` and ``test_idx``.
      alphas: candidate ridge strengths; one is chosen for all targets by efficient leave-one-out.
      sqrt: return ``sqrt(max(R^2, 0))`` (the reference's "correlation-like" score).

    Returns:
      A scalar; matches ``RidgeCV(alphas).fit(X[tr], Y[tr]).score(X[te], Y[te])`` (float64 sklearn) to ~1e-5.
    """
    X, Y = check_pair(X, Y, min_samples=3, name="ridge_score")
    alphas = _check_alphas(alphas)
    train, test = _resolve_split(X.shape[0], key, train_idx, test_idx, test_size)
    return _many_idx(X, (Y[None],), train, test, alphas, bool(sqrt))[0]


def ridge_measure(
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    test_size: float = 0.1,
    sqrt: bool = False,
    split=None,
) -> Measure:
    """The ridge score as a :class:`Measure` (X predicts Y).

    ``split`` decides the train/test rows of every call: ``None`` draws a fresh split from each call's ``key``
    (the reference's toy-task code, ``train_test_split`` without a seed); an ``int`` seed or explicit
    ``(train_idx, test_idx)`` use one split for every call (the reference's ``random_state=0`` code). A fixed
    split makes the measure deterministic (``needs_key=False``), so callers may compute each pair's score
    once (e.g. :func:`jaxequiv.equivalence.distinguishability_grid` scores all pairs of implementations once).
    """
    alphas = _check_alphas(alphas)
    _split_sizes(3, test_size)  # validates the fraction
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool):
        split = int(split)
    elif split is not None:
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise ValueError(f"split must be None, an int seed or a (train_idx, test_idx) pair, got {split!r}")
        split = tuple(np.asarray(s) for s in split)
        _check_split(int(max(split[0].max(initial=0), split[1].max(initial=0))) + 1, *split)
    settings = dict(alphas=alphas, sqrt=bool(sqrt))

    def many(X, Ys, key):  # Ys: a tuple of target stacks (see Measure.one_to_many)
        n = X.shape[0]
        if split is None:
            rows = split_indices(key, n, test_size)
        elif isinstance(split, int):
            rows = split_indices(jax.random.key(split), n, test_size)
        else:
            rows = _check_split(n, *split)  # at trace time: the indices must fit this n
        return _many_idx(X, Ys, *rows, **settings)

    def kernel(X, Y, key):
        return many(X, (Y[None],), key)[0]

    def pairwise_kernel(Xs, Ys, keys, chunk):  # one split per row (its key), shared by all k targets
        Ys = Xs if Ys is None else Ys
        rows = max(1, min(Xs.shape[0], chunk // Ys.shape[0]))  # rows vmapped at a time
        return jax.lax.map(lambda xk: many(xk[0], (Ys,), xk[1]), (Xs, keys), batch_size=rows)

    return Measure(
        name="ridge_sqrt" if sqrt else "ridge",
        kernel=kernel,
        higher_is_similar=True,
        is_metric=False,
        symmetric=False,
        invariances=frozenset({"translation"}),  # X Q alone is invariant, Y Q is not (R^2 averaged over outputs)
        min_samples=3,
        one_to_many=many,
        pairwise_kernel=pairwise_kernel,
        needs_key=split is None,
        doc="held-out R^2 of RidgeCV X -> Y" + (" (sqrt of the clipped value)" if sqrt else "")
        + ("" if split is None else " on a fixed split"),
    )


RIDGE = ridge_measure()
RIDGE_SQRT = ridge_measure(sqrt=True)


def ridge_many(
    X: ArrayLike,
    Ys: ArrayLike,
    *,
    key=None,
    train_idx: ArrayLike | None = None,
    test_idx: ArrayLike | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    test_size: float = 0.1,
    sqrt: bool = False,
) -> jax.Array:
    """Ridge scores of X (n, d) predicting each of Ys (k, n, t) with one split and one decomposition; (k,)."""
    Ys = check_reprs(Ys, name="ridge targets")
    X, _ = check_pair(X, Ys[0], min_samples=3, name="ridge_score")
    alphas = _check_alphas(alphas)
    train, test = _resolve_split(X.shape[0], key, train_idx, test_idx, test_size)
    return _many_idx(X, (Ys,), train, test, alphas, bool(sqrt))
