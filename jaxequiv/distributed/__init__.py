"""Many devices and many processes: the same kernels, placed on a mesh.

jaxequiv's kernels are jitted pure functions, so running them on many devices is a matter of where their inputs
live. A mesh (:func:`make_mesh`) has three axes named for what they split: ``data`` (examples, tokens), ``stack``
(SAEs of a sweep, sampled implementations, seeds, models) and ``pairs`` (similarity pairs, bootstrap trials).
Place the batch along ``data`` (:func:`shard`, or :func:`global_array` from each process's own rows) and ``jit``
propagates the sharding; streaming reductions combine per-device partial sums with a ``psum`` under
``jax.shard_map``; :func:`assert_no_gather` checks in the compiled HLO that only such reductions cross devices.

Several processes (hosts) call :func:`initialize` first; then every process runs the same program, each reading
(:func:`local_rows`) and writing (:func:`local_array`) its own rows; small results that must be written are
gathered (:func:`fetch_global`) and written where :func:`is_writer`. :func:`barrier` waits for the others, with a
timeout. Kernels made of independent work items (similarity pairs, trials, rounds) split them over every device
(:func:`split_items`, :func:`map_items`, :func:`gather_items`). On a CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` fakes 8 devices, and
:mod:`jaxequiv.testing.multiprocess` runs several processes on one machine.
"""

from jaxequiv.distributed.cli import add_distributed_args, from_args
from jaxequiv.distributed.hlo import Collective, assert_no_gather, collectives
from jaxequiv.distributed.items import gather_items, map_items, split_items
from jaxequiv.distributed.placement import (
    AXES,
    DATA,
    PAIRS,
    STACK,
    fetch_global,
    global_array,
    local_array,
    local_rows,
    make_mesh,
    parse_mesh_spec,
    replicate,
    shard,
)
from jaxequiv.distributed.runtime import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    BarrierTimeout,
    barrier,
    initialize,
    is_writer,
)

__all__ = [
    "DATA", "STACK", "PAIRS", "AXES", "make_mesh", "parse_mesh_spec", "shard", "replicate", "local_rows",
    "global_array", "local_array", "fetch_global", "initialize", "is_writer", "barrier", "BarrierTimeout",
    "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "collectives", "assert_no_gather", "Collective",
    "add_distributed_args", "from_args", "split_items", "map_items", "gather_items",
]
