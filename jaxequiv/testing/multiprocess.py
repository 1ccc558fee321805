"""Run a function on N JAX processes on this machine: real multi-process runs for tests and benchmarks.

Each worker is a fresh Python process with ``K`` CPU devices (``--xla_force_host_platform_device_count``), gloo
collectives and ``jax.distributed`` joined on a free localhost port through :func:`jaxequiv.distributed.initialize`
(from the ``JAXEQUIV_*`` environment variables), so what runs is what runs on a cluster, with N x K devices::

    def job(n):                     # module level, in a module that does not use JAX when imported
        m = make_mesh()             # 4 devices of 2 processes
        rows = local_rows(n, m)
        return fetch_global(jnp.sum(global_array(np.arange(n)[rows], m)))

    run_workers(job, 8, processes=2, devices=2)     # -> [28, 28], one result per process

A worker that fails or hangs stops them all: :class:`WorkerError` carries every worker's stderr, and nothing waits
longer than ``timeout_s``. ``kill_at=(i, "name")`` kills worker ``i`` (``SIGKILL``, like a lost host) when it
reports :func:`milestone` ``"name"``, to test that a job resumes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from jaxequiv.distributed.runtime import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

_ENV_DIR = "JAXEQUIV_WORKER_DIR"  # set in the workers: where milestones are reported
_ENV_KILL_AT = "JAXEQUIV_WORKER_KILL_AT"  # set in the worker to kill: the milestone that kills it


class WorkerError(RuntimeError):
    """A worker failed, or the workers did not finish in time; the message holds every worker's stderr."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _target(fn) -> tuple[str, str]:
    """(module name or file path, qualified name) by which a worker imports ``fn``."""
    name = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<" in name:
        raise ValueError(f"run_workers needs a module-level function (workers import it), got {fn!r}")
    module = fn.__module__
    if module == "__main__":
        return os.path.abspath(sys.modules["__main__"].__file__), name
    return module, name


def _import_root(module: str) -> str | None:
    """The sys.path entry from which ``module`` was imported (so the workers import the same file)."""
    if os.path.isabs(module):  # a script: Python puts its folder on sys.path
        return os.path.dirname(module)
    file = getattr(sys.modules.get(module), "__file__", None)
    if file is None:
        return None
    root = Path(file).resolve().parent
    for _ in range(module.count(".") + (Path(file).stem == "__init__")):
        root = root.parent
    return str(root)


def milestone(name: str) -> None:
    """Report that this worker reached ``name`` (a no-op outside :func:`run_workers`); may kill it here."""
    folder = os.environ.get(_ENV_DIR)
    if folder is None:
        return
    with open(Path(folder) / f"milestones.{os.environ[ENV_PROCESS_ID]}", "a") as f:
        f.write(name + "\n")
    if os.environ.get(_ENV_KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _milestones(folder: Path, i: int) -> list[str]:
    path = folder / f"milestones.{i}"
    return path.read_text().splitlines() if path.exists() else []


def _report(folder: Path, processes: int, why: str) -> str:
    parts = [why]
    for i in range(processes):
        err = (folder / f"stderr.{i}").read_text(errors="replace") if (folder / f"stderr.{i}").exists() else ""
        err = "\n".join(line for line in err.splitlines() if not line.startswith("[Gloo]"))[-4000:]
        parts.append(f"--- worker {i} (milestones {_milestones(folder, i)}) stderr:\n{err}")
    return "\n".join(parts)


def run_workers(fn, *args, processes: int = 2, devices: int = 2, timeout_s: float = 60.0,
                kill_at: tuple[int, str] | None = None, workdir: str | os.PathLike | None = None,
                env: dict[str, str] | None = None, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` on ``processes`` JAX processes of ``devices`` CPU devices each; their results.

    Args:
      fn: a module-level function (each worker imports it; its module must not use JAX at import time). It runs
        after ``jax.distributed`` is up; arguments and results travel by pickle (return NumPy, not jax arrays).
      timeout_s: for the whole run; past it every worker is killed and :class:`WorkerError` raised.
      kill_at: ``(i, name)``: worker ``i`` dies (``SIGKILL``) when it reports :func:`milestone` ``name``; the other
        workers are then stopped (they would wait for it forever). :class:`WorkerError` if it never gets there.
      workdir: where the workers' logs go (default: a temporary folder, removed afterwards).
      env: extra environment variables for the workers.
    Returns:
      The ``processes`` results in process order; with ``kill_at``, ``None`` for every worker that did not finish.
    """
    with tempfile.TemporaryDirectory(prefix="jaxequiv-workers-") as tmp:
        folder = Path(workdir if workdir is not None else tmp)
        folder.mkdir(parents=True, exist_ok=True)
        module, name = _target(fn)
        (folder / "task.pkl").write_bytes(pickle.dumps((module, name, args, kwargs)))
        base = {**os.environ, **(env or {})}
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", ""))
        paths = [p for p in (_import_root(module), _import_root(__name__), base.get("PYTHONPATH")) if p]
        base.update({
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
            "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(paths), _ENV_DIR: str(folder),
            ENV_COORDINATOR: f"localhost:{_free_port()}", ENV_NUM_PROCESSES: str(processes),
        })
        workers = []
        try:
            for i in range(processes):
                worker_env = {**base, ENV_PROCESS_ID: str(i)}
                if kill_at is not None and kill_at[0] == i:
                    worker_env[_ENV_KILL_AT] = kill_at[1]
                with open(folder / f"stdout.{i}", "w") as out, open(folder / f"stderr.{i}", "w") as err:
                    workers.append(subprocess.Popen([sys.executable, "-m", __name__, str(folder)], env=worker_env,
                                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL))
            return _wait(workers, folder, timeout_s, kill_at)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()


def _wait(workers: list[subprocess.Popen], folder: Path, timeout_s: float, kill_at) -> list:
    deadline = time.monotonic() + timeout_s

    def planned_kill(codes) -> bool:
        return (kill_at is not None and codes[kill_at[0]] == -signal.SIGKILL
                and kill_at[1] in _milestones(folder, kill_at[0]))

    while (codes := [w.poll() for w in workers]).count(None):
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if planned_kill(codes):
            failed.remove(kill_at[0])
            if not failed:
                break  # stop the others (in the finally of run_workers)
        if failed:
            raise WorkerError(_report(folder, len(workers), f"worker(s) {failed} failed (exit codes {codes})"))
        if time.monotonic() > deadline:
            running = [i for i, c in enumerate(codes) if c is None and not (folder / f"result.{i}").exists()]
            raise WorkerError(_report(folder, len(workers), f"workers did not finish within {timeout_s:g} s (still "
                                                            f"running: {running}; the others returned)"))
        time.sleep(0.02)
    codes = [w.poll() for w in workers]
    killed = planned_kill(codes)
    if kill_at is not None and not killed:
        raise WorkerError(_report(folder, len(workers), f"worker {kill_at[0]} never reached milestone "
                                                        f"{kill_at[1]!r}, so it was not killed (exit codes {codes})"))
    if not killed and any(codes):
        raise WorkerError(_report(folder, len(workers), f"worker(s) failed (exit codes {codes})"))
    results = []
    for i, code in enumerate(codes):
        path = folder / f"result.{i}"
        results.append(pickle.loads(path.read_bytes()) if code == 0 and path.exists() else None)
    return results


def _load(module: str, name: str):
    if os.path.isabs(module):  # a script run as __main__: load it under another name so its main block stays idle
        spec = importlib.util.spec_from_file_location("_jaxequiv_worker_script", module)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
    else:
        loaded = importlib.import_module(module)
    obj = loaded
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _worker_main(folder: str) -> None:
    from jaxequiv.distributed import initialize

    folder = Path(folder)
    module, name, args, kwargs = pickle.loads((folder / "task.pkl").read_bytes())
    initialize(timeout_s=30)
    result = _load(module, name)(*args, **kwargs)
    i = os.environ[ENV_PROCESS_ID]
    (folder / f"result.{i}.tmp").write_bytes(pickle.dumps(result))
    os.replace(folder / f"result.{i}.tmp", folder / f"result.{i}")


if __name__ == "__main__":
    try:
        _worker_main(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # do not wait in jax.distributed's shutdown for workers that may never arrive
