"""All pairs of many representations in one compiled call, on one device or split over a mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from jaxequiv.distributed import gather_items, map_items, replicate, split_items
from jaxequiv.similarity.base import Measure, check_reprs

__all__ = ["pairwise"]


def pairwise(measure: Measure, Xs: ArrayLike, Ys: ArrayLike | None = None, *, key=None, chunk: int = 64,
             mesh: Mesh | None = None) -> jax.Array:
    """Matrix of ``measure(Xs[i], Ys[j])`` for stacks ``Xs`` (m, n, d1) and ``Ys`` (k, n, d2); shape (m, k).

    ``Ys=None`` compares ``Xs`` with itself. Structure is exploited where the measure provides it (CKA:
    centred Grams once per representation, accumulated as one matrix of inner products over row blocks of
    ``chunk`` samples; ridge: one decomposition per ``Xs[i]`` shared by every target, one split per row drawn
    from ``key``); otherwise ``chunk`` pairs are evaluated at a time (a vmap) inside one jitted ``lax.map``
    (:meth:`Measure.matrix_kernel`). ``chunk`` is the memory knob.

    ``mesh`` (:func:`jaxequiv.distributed.make_mesh`, any axes, devices of one or several processes) splits the
    work over all its devices: the rows ``i`` of the matrix for a measure with structure (each device holds its
    rows of ``Xs`` and all of ``Ys``), else the pairs; the same keys as on one device, so the same matrix up to
    float32 rounding. Every process passes the same inputs and gets the whole matrix.
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
    key = measure.key_for(key)
    if mesh is None:
        return _matrix(measure, Xs, None if same else Ys, key, int(chunk))
    m, k = Xs.shape[0], Ys.shape[0]
    if measure.pairwise_kernel is not None:  # rows of Xs with their keys
        items, n = split_items((Xs, jax.random.split(key, m)), mesh)
        out = _on_mesh(measure, items, replicate((Ys,), mesh), int(chunk), mesh)
        return jnp.asarray(gather_items(out, n))
    i, j = np.divmod(np.arange(m * k), k)
    items, n = split_items((i, j, jax.random.split(key, m * k)), mesh)
    out = _on_mesh(measure, items, replicate((Xs, Ys), mesh), int(chunk), mesh)
    return jnp.asarray(gather_items(out, n).reshape(m, k))


@functools.partial(jax.jit, static_argnames=("measure", "chunk"))
def _matrix(measure: Measure, Xs, Ys, key, chunk: int):
    return measure.matrix_kernel(Xs, Ys, key, chunk)


@functools.partial(jax.jit, static_argnames=("measure", "chunk", "mesh"))
def _on_mesh(measure: Measure, items, context, chunk: int, mesh: Mesh):
    """Per device: its rows ``(Xs, keys)`` against ``context = (Ys,)`` with the measure's ``pairwise_kernel``, or
    its pairs ``(i, j, keys)`` of ``context = (Xs, Ys)``."""
    if measure.pairwise_kernel is not None:
        return map_items(lambda rows, Ys: measure.pairwise_kernel(rows[0], Ys, rows[1], chunk), mesh, items,
                         *context)
    return map_items(lambda pairs, Xs, Ys: measure.pairs_kernel(Xs, Ys, *pairs, chunk), mesh, items, *context)
