"""Independent work items (similarity pairs, bootstrap trials, congruity rounds) split over every device.

A kernel whose work is a list of items that need nothing from each other runs on a mesh in three steps::

    items, n = split_items(items, mesh)              # outside jit: padded, split over every device
    context = replicate(context, mesh)               # outside jit: whole on every device
    out = map_items(fn, mesh, items, *context)       # inside jit: fn(block, *context) on each device
    result = gather_items(out, n)                    # outside jit: whole, on every process

The items are split over all axes of the mesh at once (these kernels split nothing else), the context (the
representations the items index) is replicated, and no device talks to another until the results are fetched.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxequiv.distributed.placement import fetch_global, shard

__all__ = ["split_items", "map_items", "gather_items"]


def _spec(mesh: Mesh) -> PartitionSpec:
    return PartitionSpec(tuple(mesh.axis_names))


def split_items(items, mesh: Mesh):
    """Place a pytree of per-item arrays (leading axis ``n``, the same values on every process) split over every
    device of ``mesh``, the leading axis padded to a multiple of ``mesh.size`` by repeating the last item.

    Returns:
      ``(placed items, n)``.
    """
    sizes = {np.shape(a)[0] for a in jax.tree.leaves(items)}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"split_items: every leaf needs the same positive number of items, got {sorted(sizes)}")
    n = sizes.pop()
    index = np.minimum(np.arange(n + (-n % mesh.size)), n - 1)
    return jax.tree.map(lambda a: shard(jnp.asarray(a)[index], mesh, _spec(mesh)), items), n


def map_items(fn: Callable, mesh: Mesh, items, *context):
    """Inside ``jit``: ``fn(block, *context)`` on each device, ``block`` its share of ``items`` (placed by
    :func:`split_items`), ``context`` whole on every device (placed by :func:`~jaxequiv.distributed.replicate`); ``fn``
    returns per-item results (leading axis = the block's), which stay split over the devices."""
    spec = _spec(mesh)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) + (PartitionSpec(),) * len(context), out_specs=spec,
                         check_vma=False)(items, *context)


def gather_items(out, n: int):
    """The first ``n`` items of every array in ``out`` (results of :func:`map_items`), whole on every process, as
    NumPy."""
    return jax.tree.map(lambda a: a[:n], fetch_global(out))
