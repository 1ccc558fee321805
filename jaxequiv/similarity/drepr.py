"""The paper's representation distance ``d_repr`` (operator-norm-constrained linear fit, both directions).

``d_repr(X, Y) = max( min_{||A||_op <= 1} ||X A - Y||_F , min_{||B||_op <= 1} ||X - Y B||_F )`` with rows as
samples. Each direction is a convex problem solved by accelerated projected gradient (FISTA) on
``0.5 ||X A - Y||_F^2``: step ``1 / lambda_max(X'X)``, projection onto the spectral-norm ball by clipping
singular values at 1. A fixed iteration count keeps it jittable and vmappable.

``d_repr`` is homogeneous, ``d_repr(c X, c Y) = c d_repr(X, Y)``: both inputs are divided by their common largest
magnitude and the result multiplied back, so any finite float32 scale works.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxequiv.similarity.base import Measure, check_pair
from jaxequiv.similarity.numerics import eigvalsh, max_abs, svd

__all__ = ["d_repr", "constrained_fit_error", "D_REPR"]

_HI = jax.lax.Precision.HIGHEST


def _project(A):
    U, s, Vt = svd(A)
    return (U * jnp.minimum(s, 1.0)) @ Vt


def _unit_fit_error(X, Y, iters: int):
    """:func:`_fit_error` of inputs whose magnitudes are at most 1."""
    C = jnp.matmul(X.T, X, precision=_HI)
    P = jnp.matmul(X.T, Y, precision=_HI)
    L = eigvalsh(C)[-1]
    step = 1.0 / jnp.where(L > 0, L, 1.0)

    def body(_, s):
        A, Z, t = s
        A_new = _project(Z - step * (jnp.matmul(C, Z, precision=_HI) - P))
        t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        return A_new, A_new + ((t - 1.0) / t_new) * (A_new - A), t_new

    A0 = jnp.zeros((X.shape[1], Y.shape[1]), X.dtype)
    A, _, _ = jax.lax.fori_loop(0, iters, body, (A0, A0, jnp.ones((), X.dtype)))
    R = jnp.matmul(X, A, precision=_HI) - Y
    return jnp.sqrt(jnp.sum(R * R))


@functools.partial(jax.jit, static_argnames=("iters",))
def _fit_error(X, Y, iters: int):
    """``min_{||A||_op <= 1} ||X A - Y||_F`` in units of the inputs' common largest magnitude, scaled back."""
    s = jnp.maximum(max_abs(X), max_abs(Y))
    return s * _unit_fit_error(X / s, Y / s, iters)


def constrained_fit_error(X: ArrayLike, Y: ArrayLike, *, iters: int = 500) -> jax.Array:
    """``min_{||A||_op <= 1} ||X A - Y||_F`` for X (n, d1), Y (n, d2); a scalar >= 0."""
    X, Y = check_pair(X, Y, min_samples=1, name="constrained_fit_error")
    return _fit_error(X, Y, int(iters))


@functools.partial(jax.jit, static_argnames=("iters",))
def _d_repr_kernel(X, Y, iters: int):
    return jnp.maximum(_fit_error(X, Y, iters), _fit_error(Y, X, iters))


def d_repr(X: ArrayLike, Y: ArrayLike, *, iters: int = 500) -> jax.Array:
    """The paper's ``d_repr``: the larger of the two constrained linear-fit errors (Frobenius); >= 0, 0 iff equal
    up to an operator-norm-1 map both ways (e.g. an orthogonal transform). Not scale-invariant, not centred."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    X, Y = check_pair(X, Y, min_samples=1, name="d_repr")
    return _d_repr_kernel(X, Y, int(iters))


D_REPR = Measure(
    "d_repr", lambda X, Y, key: _d_repr_kernel(X, Y, 500), False, False, True, frozenset({"orthogonal"}), min_samples=1,
    doc="max over directions of the operator-norm-1 linear fit error (paper's d_repr)",
)
