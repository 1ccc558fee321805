"""Processes: join a multi-process run, find who writes, and wait for each other (with a timeout)."""

from __future__ import annotations

import math
import os
import re

import jax

ENV_COORDINATOR = "JAXEQUIV_COORDINATOR"  # HOST:PORT of process 0's coordination service
ENV_NUM_PROCESSES = "JAXEQUIV_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXEQUIV_PROCESS_ID"


class BarrierTimeout(TimeoutError):
    """Not every process reached a :func:`barrier` in time (one is slow, hung or dead)."""


def _from_env(value, name: str, kind=str):
    if value is not None or not os.environ.get(name):
        return value
    try:
        return kind(os.environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {os.environ[name]!r}") from None


def _backend_started() -> bool:
    # JAX has no public query for this; jax.distributed.initialize raises once the backend runs.
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, local_device_count: int | None = None, timeout_s: float = 300.0) -> bool:
    """Join a multi-process run (``jax.distributed.initialize``); call it first, before any other JAX work.

    Each argument left ``None`` is read from the environment (``JAXEQUIV_COORDINATOR``, ``JAXEQUIV_NUM_PROCESSES``,
    ``JAXEQUIV_PROCESS_ID``). With none of the three set, JAX detects the run itself on Cloud TPU, Slurm and Open
    MPI, and elsewhere this is a no-op (one process), as it is for ``num_processes=1``. Idempotent: a second call,
    or a call after ``jax.distributed.initialize``, only checks that its arguments agree with the run.

    CPU collectives across processes use gloo (``jax_cpu_collectives_implementation``, unless already set).

    Args:
      coordinator: ``"HOST:PORT"`` of process 0, where it serves the coordination service (any free port).
      num_processes: processes in the run; process_id: this one's index, ``0 .. num_processes - 1``.
      local_device_count: CPU devices this process shows (``jax_num_cpu_devices``; for tests and CPU clusters).
      timeout_s: how long to wait for every process to join.
    Returns:
      True when this process is part of a multi-process run (``jax.distributed`` is up), False for one process.
    """
    coordinator = _from_env(coordinator, ENV_COORDINATOR)
    num_processes = _from_env(num_processes, ENV_NUM_PROCESSES, int)
    process_id = _from_env(process_id, ENV_PROCESS_ID, int)
    if jax.distributed.is_initialized():
        for what, asked, actual in (("num_processes", num_processes, jax.process_count()),
                                    ("process_id", process_id, jax.process_index()),
                                    ("local_device_count", local_device_count, jax.local_device_count())):
            if asked is not None and asked != actual:
                raise ValueError(f"jax.distributed is already initialized with {what}={actual}, not {asked}; "
                                 "initialize once per process")
        return True
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", local_device_count)
    explicit = (coordinator, num_processes, process_id) != (None, None, None)
    if num_processes == 1 or (not explicit and _backend_started()):
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=max(1, math.ceil(timeout_s)))
    except ValueError as e:
        if not explicit:
            return False  # JAX found no TPU / Slurm / MPI cluster to join: one process
        raise ValueError(f"{e} Pass coordinator='HOST:PORT', num_processes and process_id (or set {ENV_COORDINATOR}, "
                         f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}).") from e
    return True


def is_writer() -> bool:
    """True on the one process (process 0) that prints progress and writes shared artefacts."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: float = 300.0) -> None:
    """Wait until every process has reached the barrier ``name`` (a no-op for one process).

    Unlike ``multihost_utils.sync_global_devices`` this gives up: it raises :class:`BarrierTimeout` on every
    process that waited if one has not arrived within ``timeout_s``. It runs on the coordination service of
    ``jax.distributed`` (its ``wait_at_barrier``), not through device collectives. Every process must pass the
    barriers of a run in the same order with the same names; a name may be used again once all have passed it.
    """
    if not jax.distributed.is_initialized():
        return
    from jax._src import distributed  # the coordination-service client has no public handle

    try:
        distributed.global_state.client.wait_at_barrier(name, max(1, round(timeout_s * 1000)))
    except jax.errors.JaxRuntimeError as e:
        if "DEADLINE_EXCEEDED" not in str(e):
            raise
        arrived = re.search(r"reached the barrier: (\d+/\d+)", str(e))
        raise BarrierTimeout(f"barrier {name!r}: {arrived[1] if arrived else 'not all'} processes arrived within "
                             f"{timeout_s:g} s; the others are slow, hung or dead (see their logs)") from e
