"""Numerical building blocks of the measures: scale normalisation and decompositions that are safe to vmap.

**Scale.** Every measure divides its inputs by their largest magnitude before it forms a product, so any finite
float32 input gives the value of the same data at unit scale: a scale-invariant measure returns the same number for
``X`` and ``c X`` over the whole float32 range (bit for bit when ``c`` is a power of two), and nothing under- or
overflows in the squares and sums.

**LAPACK on the CPU.** jaxlib runs a *batched* decomposition (a vmapped ``eigh``, ``svd``, ``qr``, ...) by splitting
the batch over XLA's CPU thread pool and blocking its own pool thread until the pieces are done. When as many
batched calls run at once as the pool has threads (e.g. two independent ridge fits in one jitted program on a
2-core machine), every thread waits for work queued behind it and the program hangs; with fewer it can still stall.
An unbatched call runs inline on its thread. The decompositions below therefore turn a vmap into a sequential
loop of unbatched calls when the program runs on the CPU, and into one batched call on other platforms (decided
at lowering time with ``jax.lax.platform_dependent``). They are differentiable (forward and reverse mode; under
``vmap`` of a derivative the derivative's own decomposition is batched as usual).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["pool_safe", "eigh", "eigvalsh", "svd", "qr_r", "max_abs", "center_unit", "unit_rows"]


def pool_safe(fn: Callable) -> Callable:
    """``fn`` (array arguments -> pytree of arrays) whose ``vmap`` is a loop of unbatched calls on the CPU.

    On other platforms the vmap is ``jax.vmap(fn)`` (one batched call). Nested vmaps nest the loops.
    """

    @jax.custom_batching.custom_vmap
    def unbatched(*args):
        return fn(*args)

    @unbatched.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = tuple(a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))) for a, b in zip(args, in_batched))
        out = jax.lax.platform_dependent(
            *args, cpu=lambda *xs: jax.lax.map(lambda x: safe(*x), xs), default=jax.vmap(fn)
        )
        return out, jax.tree.map(lambda _: True, out)

    @jax.custom_jvp
    def safe(*args):
        return unbatched(*args)

    @safe.defjvp
    def _jvp(primals, tangents):
        return jax.jvp(fn, primals, tangents)

    return safe


eigh = pool_safe(jnp.linalg.eigh)
"""``jnp.linalg.eigh`` (``(eigenvalues (k,), eigenvectors (k, k))``, ascending), safe to vmap on the CPU."""

eigvalsh = pool_safe(jnp.linalg.eigvalsh)
"""``jnp.linalg.eigvalsh`` (ascending eigenvalues), safe to vmap on the CPU."""

svd = pool_safe(functools.partial(jnp.linalg.svd, full_matrices=False))
"""Thin ``jnp.linalg.svd``: ``U (m, k), s (k,), Vt (k, n)`` with ``k = min(m, n)``, safe to vmap on the CPU."""

qr_r = pool_safe(functools.partial(jnp.linalg.qr, mode="r"))
"""The ``R`` factor (k, n) of a reduced QR decomposition of an (m, n) matrix, safe to vmap on the CPU."""


def max_abs(X: ArrayLike) -> jax.Array:
    """Largest magnitude of ``X``, or 1 if ``X`` is all zeros (so that ``X / max_abs(X)`` is always defined)."""
    m = jnp.max(jnp.abs(X))
    return jnp.where(m > 0, m, jnp.ones_like(m))


def center_unit(X: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Centre the columns of X (n, d) and scale it to unit Frobenius norm, at any finite scale.

    Returns ``(Xc (n, d), ok ())``: ``ok`` is False, and ``Xc`` zeros, when X is constant up to float rounding
    (its centred spread is below ``16 eps sqrt(n)`` of its magnitude). X is divided by its largest magnitude
    first, so neither the mean nor the norm under- or overflows, and ``center_unit(2**k X)`` equals
    ``center_unit(X)`` bit for bit.
    """
    X = jnp.asarray(X)
    X = X / max_abs(X)
    Xc = X - jnp.mean(X, axis=0)
    m = jnp.max(jnp.abs(Xc))
    ok = m > 16 * jnp.finfo(X.dtype).eps * jnp.sqrt(X.shape[0])
    Xc = Xc / jnp.where(ok, m, 1.0)
    norm = jnp.sqrt(jnp.sum(Xc * Xc))
    return jnp.where(ok, Xc / jnp.where(ok, norm, 1.0), 0.0), ok


def unit_rows(X: ArrayLike, *, center: bool = False) -> jax.Array:
    """Rows of X (n, d) scaled to unit length (after subtracting each row's mean if ``center``); zero rows stay 0.

    Each row is divided by its largest magnitude first, so any finite scale (per row) gives the same result.
    """
    X = jnp.asarray(X)
    m = jnp.max(jnp.abs(X), axis=1, keepdims=True)
    X = X / jnp.where(m > 0, m, 1.0)
    if center:
        X = X - jnp.mean(X, axis=1, keepdims=True)
    norm = jnp.sqrt(jnp.sum(X * X, axis=1, keepdims=True))
    return X / jnp.where(norm > 0, norm, 1.0)
