"""Where arrays live: meshes with named axes, and arrays placed on them (one process or many)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"  # examples / tokens
STACK = "stack"  # SAEs of a sweep, sampled implementations, seeds, models
PAIRS = "pairs"  # similarity pairs, bootstrap trials
AXES = (DATA, STACK, PAIRS)  # the axes of every mesh from make_mesh, outermost first


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """``"data=4,stack=2"`` -> ``{"data": 4, "stack": 2}`` (the CLI's ``--mesh``); ``-1`` means 'the rest'."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: expected NAME=SIZE items with NAME in {AXES}, e.g. "
                             f"'data=4,stack=2', got {part!r}")
        if name in sizes:
            raise ValueError(f"mesh spec {spec!r} names axis {name!r} twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be an integer (or -1 for the rest), "
                             f"got {value.strip()!r}") from None
    return sizes


def make_mesh(*, data: int | None = None, stack: int = 1, pairs: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes with the axes ``("data", "stack", "pairs")``, always all three.

    One size may be ``-1``: the devices the others leave. ``data`` defaults to ``-1`` (or ``1`` when another axis
    is ``-1``), so ``make_mesh()`` puts every device on ``data`` and ``make_mesh(stack=2)`` splits the rest of them
    over ``data``. Axes of size 1 cost nothing and let kernels name all three axes on any mesh. ``data`` is the
    outermost axis: on several processes it is the one that spans them, so each process holds its own rows.
    ``devices`` restricts the mesh to some devices (default ``jax.devices()``, every process's).
    ``make_mesh(**parse_mesh_spec("data=-1,stack=2"))`` builds the mesh of a CLI's ``--mesh``.
    """
    if data is None:
        data = 1 if -1 in (stack, pairs) else -1
    asked = dict(zip(AXES, (data, stack, pairs)))
    shown = ",".join(f"{k}={v}" for k, v in asked.items())
    for name, size in asked.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ValueError(f"mesh {shown}: each size must be a positive integer or -1 (the rest), "
                             f"got {name}={size!r}")
    rest = [name for name, size in asked.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(f"mesh {shown}: only one axis may be -1 (the rest)")
    where = None if devices is None else f"the {len(devices)} devices given"
    devices = jax.devices() if devices is None else list(devices)
    count = len(devices)
    where = where or f"the {count} devices of {jax.process_count()} process(es)"
    fixed = math.prod(size for size in asked.values() if size != -1)
    if rest:
        if count % fixed:
            raise ValueError(f"mesh {shown}: the other axes use {fixed} devices, which does not divide "
                             f"{where}; choose sizes whose product divides {count}")
        asked[rest[0]] = count // fixed
    elif fixed != count:
        raise ValueError(f"mesh {shown} uses {fixed} devices but must cover {where}; make the sizes multiply to "
                         f"{count}, use -1 for 'the rest', or pass devices=[...] for a sub-mesh")
    return jax.make_mesh(tuple(int(s) for s in asked.values()), AXES, devices=devices,
                         axis_types=(AxisType.Auto,) * len(AXES))


def _spec(axis: str | PartitionSpec, ndim: int) -> PartitionSpec:
    if isinstance(axis, PartitionSpec):
        return axis
    return PartitionSpec(axis, *([None] * (ndim - 1)))


def _check_divides(n: int, m: Mesh, axis: str) -> None:
    if axis not in m.shape:
        raise ValueError(f"mesh has axes {tuple(m.shape)}, not {axis!r}")
    if n % m.shape[axis]:
        raise ValueError(f"{n} rows do not split evenly over the {m.shape[axis]} devices of mesh axis "
                         f"{axis!r}; pad or trim to a multiple of {m.shape[axis]}")


def _put(x, sharding: NamedSharding):
    """``jax.device_put``, also of typed keys onto devices of other processes (placed as their key data)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        spec = PartitionSpec(*sharding.spec, *([None] * (jax.random.key_data(x).ndim - len(sharding.spec))))
        data = jax.device_put(jax.random.key_data(x), NamedSharding(sharding.mesh, spec))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def shard(x, m: Mesh, axis: str | PartitionSpec = DATA) -> jax.Array:
    """Place the whole array ``x`` (the same value on every process) split along ``axis`` of ``m``.

    ``axis`` names the mesh axis of ``x``'s leading dimension, or is a full ``PartitionSpec``.
    When each process holds only its own rows, use :func:`global_array` instead.
    """
    if not isinstance(axis, PartitionSpec):
        _check_divides(np.shape(x)[0], m, axis)
    return _put(x, NamedSharding(m, _spec(axis, np.ndim(x))))


def replicate(tree, m: Mesh):
    """Copy a pytree (e.g. params, keys; the same value on every process) to every device of ``m``."""
    return jax.tree.map(lambda x: _put(x, NamedSharding(m, PartitionSpec())), tree)


def local_rows(n: int, m: Mesh, axis: str = DATA) -> np.ndarray:
    """Rows (sorted global indices) of an ``n``-row array split along ``axis`` that this process holds.

    A process reads just these rows of a data set and passes them to :func:`global_array`. They form one
    contiguous run on meshes from :func:`make_mesh` on CPUs and GPUs (``rows[0] .. rows[-1] + 1``); all ``n``
    rows when ``axis`` does not span processes.
    """
    _check_divides(n, m, axis)
    starts = {idx[0].start or 0 for idx in NamedSharding(m, PartitionSpec(axis)).addressable_devices_indices_map(
        (n,)).values()}
    per_device = n // m.shape[axis]
    return np.concatenate([np.arange(s, s + per_device) for s in sorted(starts)])


def global_array(local, m: Mesh, axis: str | PartitionSpec = DATA, n: int | None = None) -> jax.Array:
    """One array over all processes, built from each process's own rows ``local`` (rows ``local_rows(n, m, axis)``).

    Args:
      local: ``(len(local_rows(n, m, axis)), ...)`` this process's rows, in order.
      axis: the mesh axis of the leading dimension, or a full ``PartitionSpec``.
      n: the global row count (checked against ``local``); inferred when omitted.
    Returns:
      ``(n, ...)`` a ``jax.Array`` split along ``axis`` (``jax.make_array_from_process_local_data``).
    """
    local = np.asarray(local)
    shape = None
    if n is not None:
        if not isinstance(axis, PartitionSpec):
            want = len(local_rows(n, m, axis))
            if local.shape[0] != want:
                raise ValueError(f"this process holds {want} of the {n} rows split over {axis!r}, but got "
                                 f"{local.shape[0]} local rows; pass the rows local_rows({n}, mesh, {axis!r})")
        shape = (n, *local.shape[1:])
    return jax.make_array_from_process_local_data(NamedSharding(m, _spec(axis, local.ndim)), local, shape)


def local_array(x: jax.Array) -> np.ndarray:
    """This process's rows of ``x`` as NumPy: the inverse of :func:`global_array`, e.g. to write only them.

    Returns:
      ``(len(rows), ...)`` the rows of ``x`` this process holds (``local_rows`` of the axis splitting ``x``'s
      leading dimension), in order; copies held by several local devices are taken once.
    """
    if x.ndim == 0:
        return np.asarray(x.addressable_data(0))
    blocks = {}
    for shard_ in x.addressable_shards:
        for dim, (index, size) in enumerate(zip(shard_.index[1:], x.shape[1:]), 1):
            if index.indices(size) != (0, size, 1):
                spec = getattr(x.sharding, "spec", x.sharding)
                raise ValueError(f"local_array needs whole rows on each device, but dimension {dim} of an array "
                                 f"of shape {x.shape} is split ({spec}); gather it with fetch_global")
        blocks.setdefault(shard_.index[0].indices(x.shape[0])[0], shard_.data)
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def fetch_global(tree):
    """The whole value of every array in ``tree``, as NumPy, on every process.

    Arrays split over devices of other processes are gathered with
    ``jax.experimental.multihost_utils.process_allgather`` (an XLA all-gather: every process must call this, and
    each ends up holding the whole array); local arrays are just copied to the host. Use it for results that
    must be written (by the process where :func:`~jaxequiv.distributed.is_writer`), not for data sets: each
    process writes its own rows of those.
    """
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(fetch, tree)
