"""All pairs of many representations in one compiled call."""

from __future__ import annotations

import functools

import jax
from jax.typing import ArrayLike

from jaxequiv.similarity.base import Measure, check_reprs

__all__ = ["pairwise"]


def pairwise(measure: Measure, Xs: ArrayLike, Ys: ArrayLike | None = None, *, key=None, chunk: int = 64) -> jax.Array:
    """Matrix of ``measure(Xs[i], Ys[j])`` for stacks ``Xs`` (m, n, d1) and ``Ys`` (k, n, d2); shape (m, k).

    ``Ys=None`` compares ``Xs`` with itself. Structure is exploited where the measure provides it (CKA:
    centred Grams once per representation, accumulated as one matrix of inner products over row blocks of
    ``chunk`` samples; ridge: one decomposition per ``Xs[i]`` shared by every target, one split per row drawn
    from ``key``); otherwise ``chunk`` pairs are evaluated at a time (a vmap) inside one jitted ``lax.map``
    (:meth:`Measure.matrix_kernel`). ``chunk`` is the memory knob.
    """
    if not isinstance(measure, Measure):
        raise TypeError(f"pairwise: measure must be a jaxequiv.similarity.Measure, got {type(measure).__name__}")
    if chunk < 1:
        raise ValueError(f"pairwise: chunk must be >= 1, got {chunk}")
    Xs = check_reprs(Xs, name="pairwise Xs")
    same = Ys is None
    Ys = Xs if same else check_reprs(Ys, name="pairwise Ys")
    if Xs.shape[1] != Ys.shape[1]:
        raise ValueError(f"pairwise: Xs and Ys must share n (samples), got {Xs.shape[1]} and {Ys.shape[1]}")
    if Xs.shape[1] < measure.min_samples:
        raise ValueError(f"pairwise: {measure.name} needs at least {measure.min_samples} samples, got n={Xs.shape[1]}")
    return _matrix(measure, Xs, None if same else Ys, measure.key_for(key), int(chunk))


@functools.partial(jax.jit, static_argnames=("measure", "chunk"))
def _matrix(measure: Measure, Xs, Ys, key, chunk: int):
    return measure.matrix_kernel(Xs, Ys, key, chunk)
