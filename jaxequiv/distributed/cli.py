"""The command-line flags of every sharded command: ``--mesh`` and the multi-process flags."""

from __future__ import annotations

import argparse

from jax.sharding import Mesh

from jaxequiv.distributed.placement import make_mesh, parse_mesh_spec
from jaxequiv.distributed.runtime import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, initialize


def _mesh_arg(text: str) -> dict[str, int]:
    try:
        return parse_mesh_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--mesh``, ``--coordinator``, ``--num-processes`` and ``--process-id`` to a command's parser."""
    g = parser.add_argument_group("devices and processes")
    g.add_argument("--mesh", type=_mesh_arg, metavar="data=N,stack=M,pairs=K",
                   help="how the devices of all processes are split: sizes of the mesh axes, -1 for the rest "
                        "(default: one device; in a run of several processes, every device on data, as --mesh '')")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help=f"process 0's address and a free port, the same for every process (default: "
                        f"${ENV_COORDINATOR}, or detected on Cloud TPU / Slurm / Open MPI; none: one process)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help=f"processes in the run (default: ${ENV_NUM_PROCESSES})")
    g.add_argument("--process-id", type=int, metavar="I", help=f"this process, 0..N-1 (default: ${ENV_PROCESS_ID})")


def from_args(args: argparse.Namespace) -> Mesh | None:
    """Join the run the flags describe (:func:`~jaxequiv.distributed.initialize`; call it before any JAX work) and
    build their mesh; ``None`` (the engines' one-device path) when one process runs without ``--mesh``."""
    several = initialize(args.coordinator, args.num_processes, args.process_id)
    return make_mesh(**(args.mesh or {})) if args.mesh is not None or several else None
