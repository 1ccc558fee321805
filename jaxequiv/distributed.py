"""Meshes and shardings: the same kernels on many devices.

jaxequiv's kernels are jitted pure functions, so running them on several devices is a matter of where their
inputs live: place the batch (or the stack of implementations, or the SAEs of a sweep) along a mesh axis and
``jit`` propagates the sharding through the computation. Streaming reductions (e.g. minibatch CKA) combine
per-device partial sums with a ``psum`` under :func:`jax.shard_map`. Multi-host runs call
``jax.distributed.initialize()`` first; nothing else changes.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` fakes 8 devices (the tests do this).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["mesh", "shard_leading", "replicate"]


def mesh(shape: Sequence[int] | None = None, axis_names: Sequence[str] = ("data",)) -> Mesh:
    """A device mesh; by default every device along one ``"data"`` axis.

    Args:
      shape: devices per axis, e.g. ``(2, 4)`` with ``axis_names=("data", "model")``; product <= device count.
    """
    devices = jax.devices()
    shape = (len(devices),) if shape is None else tuple(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} needs one name per axis, got axis_names={tuple(axis_names)}")
    n = int(np.prod(shape))
    if n > len(devices):
        raise ValueError(f"a mesh of shape {shape} needs {n} devices, but only {len(devices)} are visible; on a CPU "
                         "set XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts")
    return Mesh(np.asarray(devices[:n]).reshape(shape), tuple(axis_names))


def shard_leading(x, m: Mesh, axis: str = "data") -> jax.Array:
    """Place ``x`` with its leading axis split over mesh axis ``axis`` (its size must divide evenly)."""
    size = m.shape[axis]
    if np.shape(x)[0] % size:
        raise ValueError(f"leading size {np.shape(x)[0]} does not split evenly over {size} devices of axis "
                         f"{axis!r}; pad or trim the batch to a multiple of {size}")
    spec = PartitionSpec(axis, *([None] * (np.ndim(x) - 1)))
    return jax.device_put(x, NamedSharding(m, spec))


def replicate(tree, m: Mesh):
    """Copy a pytree (e.g. params) to every device of the mesh."""
    return jax.device_put(tree, NamedSharding(m, PartitionSpec()))
