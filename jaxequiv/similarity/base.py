"""The ``Measure`` type: a jittable similarity/distance kernel plus the metadata that says how to read it.

A measure is called as ``measure(X, Y, key=None)`` with ``X`` of shape ``(n, d1)`` and ``Y`` of shape
``(n, d2)`` (rows are the same ``n`` stimuli). ``__call__`` validates its inputs (shapes, finiteness) and then
runs the jitted kernel; the raw kernels (``measure.kernel``) skip validation and can be used inside
``jit``/``vmap``. Measures that need randomness (the ridge score's train/test split) take ``key``; the others
ignore it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxequiv.rng import as_key

__all__ = ["Measure", "check_pair", "check_reprs", "INVARIANCES"]

# Vocabulary of declared invariances: transformations that leave the value unchanged whether applied to X, to Y
# or to both.
INVARIANCES = frozenset(
    {
        "orthogonal",  # X -> X Q with Q orthogonal
        "isotropic_scaling",  # X -> c X, c > 0
        "translation",  # X -> X + 1 b'
        "invertible_linear",  # X -> X A, A invertible
        "permutation",  # X -> X P (feature permutation)
        "monotonic_rdm",  # any monotonic transform of the dissimilarities
    }
)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_pair(X: ArrayLike, Y: ArrayLike, *, min_samples: int = 2, name: str = "measure") -> tuple[jax.Array, jax.Array]:
    """Validate a pair of representations; return them as float arrays (float32 unless already float64).

    Raises ``ValueError`` if either is not 2-D ``(n, d)``, their ``n`` differ, ``n < min_samples``, or (for
    concrete arrays) a value is NaN/Inf. Raises ``TypeError`` for non-numeric input.
    """
    out = []
    for label, A in (("X", X), ("Y", Y)):
        if not hasattr(A, "shape"):
            A = np.asarray(A)
        kind = np.dtype(A.dtype).kind
        if kind not in "fiub":
            raise TypeError(f"{name}: {label} must be a numeric array, got dtype {A.dtype}")
        if A.ndim != 2:
            raise ValueError(
                f"{name}: {label} must be 2-D (n_samples, n_features), got shape {tuple(A.shape)}; "
                "flatten the non-sample axes first, e.g. A.reshape(A.shape[0], -1)"
            )
        out.append(jnp.asarray(A) if kind == "f" else jnp.asarray(A, jnp.float32))  # float64 stays only under x64
    X, Y = out
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"{name}: X and Y must have the same number of rows (samples), got {X.shape[0]} and {Y.shape[0]}; "
            "pass representations of the same stimuli in the same order"
        )
    if X.shape[0] < min_samples:
        raise ValueError(f"{name}: needs at least {min_samples} samples, got n={X.shape[0]}")
    for label, A in (("X", X), ("Y", Y)):
        if _is_concrete(A) and not bool(jnp.all(jnp.isfinite(A))):
            raise ValueError(f"{name}: {label} contains NaN or Inf; clean or drop those rows first")
    return X, Y


def check_reprs(Xs: ArrayLike, *, name: str = "reprs", min_count: int = 1) -> jax.Array:
    """Validate a stack of representations ``(m, n, d)`` (an array, or a sequence of equal-shape ``(n, d)``)."""
    if isinstance(Xs, (list, tuple)):
        shapes = {tuple(np.shape(x)) for x in Xs}
        if len(shapes) > 1:
            raise ValueError(
                f"{name}: all representations must have one shape (n, d), got {sorted(shapes)}; "
                "pad or project them to a common width first"
            )
        Xs = jnp.stack([jnp.asarray(x) for x in Xs]) if Xs else jnp.zeros((0, 0, 0))
    Xs = jnp.asarray(Xs)
    if Xs.ndim != 3:
        raise ValueError(f"{name}: expected a stack of representations (m, n, d), got shape {tuple(Xs.shape)}")
    if Xs.shape[0] < min_count:
        raise ValueError(f"{name}: needs at least {min_count} representations, got {Xs.shape[0]}")
    if np.dtype(Xs.dtype).kind != "f":
        Xs = Xs.astype(jnp.float32)
    if _is_concrete(Xs) and not bool(jnp.all(jnp.isfinite(Xs))):
        raise ValueError(f"{name}: contains NaN or Inf; clean or drop those rows first")
    return Xs


@dataclasses.dataclass(frozen=True)
class Measure:
    """A representation similarity (or distance) with declared properties.

    Attributes:
      name: short identifier (used by the CLI and ``pairwise``).
      kernel: jittable ``(X (n, d1), Y (n, d2), key) -> scalar``; no validation.
      higher_is_similar: ``True`` for similarities (CKA, R^2), ``False`` for distances (Procrustes, d_repr).
      is_metric: satisfies the metric axioms (on the classes of its invariances).
      symmetric: ``m(X, Y) == m(Y, X)``.
      invariances: subset of :data:`INVARIANCES`.
      min_samples: smallest ``n`` accepted.
      one_to_many: optional jittable ``(X, Ys, key) -> (k,)`` sharing work across targets (e.g. one ridge
        decomposition of X for all targets); ``Ys`` is a tuple of target stacks ``(k_i, n, d_i)`` (widths may
        differ) and the scores are concatenated. Defaults to a vmap of ``kernel`` with the same key.
      pairwise_kernel: optional jittable ``(Xs (m, n, d1), Ys (k, n, d2) or None for Xs, keys (m,), chunk) ->
        (m, k)`` that exploits structure (e.g. Gram inner products for CKA), with one key per row (the rows of a
        matrix split over devices keep their keys); :func:`jaxequiv.similarity.pairwise` otherwise maps
        ``kernel`` over chunks of pairs.
      needs_key: the kernel uses ``key`` (random splits).
    """

    name: str
    kernel: Callable[..., jax.Array]
    higher_is_similar: bool
    is_metric: bool
    symmetric: bool
    invariances: frozenset[str]
    min_samples: int = 2
    one_to_many: Callable[..., jax.Array] | None = None
    pairwise_kernel: Callable[..., jax.Array] | None = None
    needs_key: bool = False
    doc: str = ""

    def __post_init__(self):
        unknown = set(self.invariances) - INVARIANCES
        if unknown:
            raise ValueError(f"Measure {self.name}: unknown invariances {sorted(unknown)}; allowed: {sorted(INVARIANCES)}")

    def __call__(self, X: ArrayLike, Y: ArrayLike, key: Any = None) -> jax.Array:
        """Validated ``kernel(X, Y, key)``; a scalar."""
        X, Y = check_pair(X, Y, min_samples=self.min_samples, name=self.name)
        key = self.key_for(key)
        return self.kernel(X, Y, key)

    def many(self, X: ArrayLike, Ys: ArrayLike, key: Any = None) -> jax.Array:
        """Scores of ``X (n, d1)`` against each of ``Ys (k, n, d2)``, sharing per-X work; shape ``(k,)``."""
        Ys = check_reprs(Ys, name=f"{self.name} targets")
        X, _ = check_pair(X, Ys[0], min_samples=self.min_samples, name=self.name)
        return self.many_kernel(X, Ys, self.key_for(key))

    def many_kernel(self, X: jax.Array, Ys: jax.Array | tuple[jax.Array, ...], key: jax.Array) -> jax.Array:
        """Unvalidated one-to-many kernel (jittable): ``X (n, d1)`` against ``Ys (k, n, d2)``, or a tuple of such
        stacks of different widths (their scores concatenated), all with one ``key``; shape ``(k,)`` (total)."""
        Ys = tuple(Ys) if isinstance(Ys, (tuple, list)) else (Ys,)
        if self.one_to_many is not None:
            return self.one_to_many(X, Ys, key)
        return jnp.concatenate([jax.vmap(lambda Y: self.kernel(X, Y, key))(Y) for Y in Ys])

    def matrix_kernel(self, Xs: jax.Array, Ys: jax.Array | None, key: jax.Array, chunk: int = 64) -> jax.Array:
        """Unvalidated all-pairs kernel (jittable): ``Xs (m, n, d1)``, ``Ys (k, n, d2)`` or ``None`` (Xs) -> (m, k).

        Uses ``pairwise_kernel`` where the measure has one (row ``i`` with key ``split(key, m)[i]``); otherwise
        maps ``kernel`` over the m*k pairs (:meth:`pairs_kernel`), pair ``(i, j)`` with key
        ``split(key, m*k)[i*k+j]``.
        """
        if self.pairwise_kernel is not None:
            return self.pairwise_kernel(Xs, Ys, jax.random.split(key, Xs.shape[0]), chunk)
        Ys = Xs if Ys is None else Ys
        m, k = Xs.shape[0], Ys.shape[0]
        i, j = jnp.divmod(jnp.arange(m * k), k)
        return self.pairs_kernel(Xs, Ys, i, j, jax.random.split(key, m * k), chunk).reshape(m, k)

    def pairs_kernel(self, Xs: jax.Array, Ys: jax.Array, i: jax.Array, j: jax.Array, keys: jax.Array,
                     chunk: int = 64) -> jax.Array:
        """Unvalidated kernel of chosen pairs (jittable): ``kernel(Xs[i[p]], Ys[j[p]], keys[p])`` for each of the
        ``r`` pairs, ``chunk`` at a time (a vmap inside a ``lax.map``); shape ``(r,)``."""
        one = lambda a: self.kernel(Xs[a[0]], Ys[a[1]], a[2])  # noqa: E731
        return jax.lax.map(one, (i, j, keys), batch_size=min(chunk, i.shape[0]))

    def key_for(self, key: Any) -> jax.Array:
        """A typed key for the kernels from ``key`` (a key or int seed); ``None`` is allowed (and means a fixed
        key) only for measures that draw nothing."""
        if key is None:
            if self.needs_key:
                raise ValueError(f"{self.name} draws a random split: pass key=jax.random.key(seed) or an int seed")
            return jax.random.key(0)
        return as_key(key, "key")
