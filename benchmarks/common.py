"""Shared machinery of the benchmarks: fair terms for both sides, and results that can be reproduced.

Every benchmark does the same things through one :class:`Session`:

* pins the thread count of both sides before either library starts: the process's CPU affinity is cut to
  ``--threads`` cores (XLA sizes its intra-op pool from the affinity, NumPy's OpenBLAS and MKL from the
  ``*_NUM_THREADS`` variables set here, or threadpoolctl once loaded) and ``torch.set_num_threads`` gets the
  same number. The XLA pool
  actually running is counted (its ``tf_XLAEigen`` threads) and printed beside torch's count;
* prints the CPU model, its vector extensions (AVX2 / AVX-512 / AMX), the cores, the library versions and
  torch's kernel capability and BLAS;
* times the sides ALTERNATELY (a, b, a, b, ... with the order rotated every round, so a drifting machine
  load hits both alike): one warm-up call each, reported separately as ``first`` (for JAX that is the
  compile time, or the persistent-cache load), then ``--runs`` timed rounds; reports the median, min/max and
  quartiles, the 1-minute load average before and after each side, and the share of the pinned cores the
  process actually got (CPU time / wall time / threads: far below 1 means other jobs took the cores);
* records whether it runs at real-time priority (``chrt -f 10 python benchmarks/...``: on a machine shared
  with other jobs this gives the benchmark the cores, as a quiet machine would; the load-average warning is
  then not printed, and the per-side CPU share shows what the process got);
* turns on JAX's persistent compilation cache (``$JAXEQUIV_BENCH_CACHE``, default
  ``~/.cache/jaxequiv/bench-xla``), so a second process loads its executables instead of recompiling, and
  counts cache hits and misses;
* measures the f32 GEMM peak in JAX and in torch in the same run (:meth:`Session.peaks`), for fractions of peak;
* writes ``benchmarks/results/<name>.json`` (machine, timings with every sample, ratios, README rows, the
  RESULT line), from which ``benchmarks/readme_table.py`` regenerates the README's table. ``--quick`` runs
  (small sizes, for smoke tests) write no results unless ``--json`` says where.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def add_args(parser: argparse.ArgumentParser, runs: int = 5) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--runs``, ``--threads``, ``--json``."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 runs: a smoke test, not a measurement")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed rounds after the warm-up (default {runs})")
    parser.add_argument("--threads", type=int, default=None,
                        help="cores for each side (default: every core this process may use)")
    parser.add_argument("--json", default=None,
                        help="results file (default benchmarks/results/<name>.json; none with --quick)")
    return parser


# ---------------------------------------------------------------------------------------------------------
# Timings


@dataclasses.dataclass
class Timing:
    """Wall seconds of the timed runs of one side, with the conditions they ran under."""

    samples: list[float]
    first: float  # the warm-up call: compile (or cache load) + one run
    load_before: float  # 1-minute load average before this side's first timed run
    load_after: float  # ... and after its last one
    cpu_share: float  # process CPU time / (wall time x threads) over the timed runs

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    def fmt(self, scale: float = 1.0, unit: str = "s") -> str:
        """``median (min-max, first) [load a->b, cpu x%]`` with times multiplied by ``scale``."""
        f = lambda t: f"{t * scale:.4g}"  # noqa: E731
        return (f"{f(self.median)} {unit} (min {f(self.lo)}, max {f(self.hi)}, n={len(self.samples)}; first call "
                f"{self.first:.3g} s) [load {self.load_before:.1f}->{self.load_after:.1f}, "
                f"cpu {100 * self.cpu_share:.0f}%]")

    def to_json(self) -> dict:
        q1, q3 = self.quartiles
        return {"median": self.median, "min": self.lo, "max": self.hi, "q1": q1, "q3": q3, "first": self.first,
                "samples": self.samples, "load_before": self.load_before, "load_after": self.load_after,
                "cpu_share": self.cpu_share}


def ratio(slow: Timing, fast: Timing, slow_scale: float = 1.0, fast_scale: float = 1.0) -> tuple[float, float, float]:
    """``slow / fast`` of the medians (each time multiplied by its scale, e.g. per-item), and the min/max of the
    per-round ratios (rounds are paired because the sides alternate)."""
    per_round = [a * slow_scale / (b * fast_scale) for a, b in zip(slow.samples, fast.samples)]
    return slow.median * slow_scale / (fast.median * fast_scale), min(per_round), max(per_round)


def fmt_ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f}x (per-round {r[1]:.2f}-{r[2]:.2f})"


# ---------------------------------------------------------------------------------------------------------
# Machine


def xla_threads() -> int:
    """Threads of XLA's CPU intra-op pool (named ``tf_XLAEigen``) alive in this process."""
    n = 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                n += f.read().startswith("tf_XLAEigen")
        except OSError:
            pass
    return n


# ---------------------------------------------------------------------------------------------------------
# Session


class Session:
    """One benchmark run. Create it right after parsing the arguments, before anything imports jax or torch."""

    def __init__(self, name: str, args: argparse.Namespace, torch: bool = True):
        self.name, self.args, self.quick = name, args, bool(args.quick)
        self.runs = 2 if args.quick and args.runs == 5 else args.runs
        if self.runs < 1:
            raise SystemExit(f"--runs must be >= 1, got {self.runs}")
        allowed = sorted(os.sched_getaffinity(0))
        self.threads = args.threads or len(allowed)
        if not 1 <= self.threads <= len(allowed):
            raise SystemExit(f"--threads must be in 1..{len(allowed)} (the cores this process may use)")
        if "jax" in sys.modules or "torch" in sys.modules:
            raise RuntimeError("common.Session must be created before jax or torch is imported (thread pinning)")
        os.sched_setaffinity(0, allowed[: self.threads])
        for var in _THREAD_VARS:
            os.environ[var] = str(self.threads)
        try:  # BLAS pools already loaded (NumPy imported first) are limited at run time as well
            from threadpoolctl import threadpool_limits

            self._blas_limits = threadpool_limits(self.threads)
        except ImportError:
            self._blas_limits = None
        self._cache_events = {"hits": 0, "misses": 0}
        import jax

        from jaxequiv.io.provenance import provenance

        self._started = time.time()
        self._provenance = provenance  # commit, versions, CPU: one mechanism with the experiments' results files
        start = provenance(args)
        cache = os.environ.get("JAXEQUIV_BENCH_CACHE", os.path.expanduser("~/.cache/jaxequiv/bench-xla"))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

        def listen(event, **_):
            if event.endswith("compilation_cache/cache_hits"):
                self._cache_events["hits"] += 1
            elif event.endswith("compilation_cache/cache_misses"):
                self._cache_events["misses"] += 1

        jax.monitoring.register_event_listener(listen)
        warnings.filterwarnings("ignore", message=r".*SAEs? fits? poorly")  # short runs on random data, by design
        self.jax = jax
        self.torch = None
        if torch:
            import torch as _torch

            _torch.set_num_threads(self.threads)
            self.torch = _torch
        self.machine = {"cpu": start["machine"]["cpu"], "threads": self.threads, "python": platform.python_version(),
                        "jax": jax.__version__, "backend": jax.default_backend(), "compile_cache": cache}
        if self.torch is not None:
            self.machine.update(torch=self.torch.__version__, torch_threads=self.torch.get_num_threads(),
                                torch_capability=self.torch.backends.cpu.get_cpu_capability(),
                                torch_blas="mkl" if self.torch.backends.mkl.is_available() else "other")
        self.timings: dict[str, Timing] = {}
        self.values: dict[str, object] = {}
        self.rows: list[dict] = []
        self.notes: list[str] = []
        cpu = self.machine["cpu"]
        print(f"[{name}] {datetime.datetime.now().isoformat(timespec='seconds')} commit {_commit(start)}"
              f"{'  (--quick: smoke-test sizes, not a measurement)' if self.quick else ''}")
        print(f"  cpu: {cpu['model']}, {cpu['cores']} cores, vector {' '.join(cpu['vector']) or 'none'}; "
              f"load {os.getloadavg()[0]:.2f}")
        lib = f"  jax {jax.__version__} ({jax.default_backend()})"
        if self.torch is not None:
            lib += (f", torch {self.torch.__version__} (threads {self.torch.get_num_threads()}, kernels "
                    f"{self.machine['torch_capability']}, blas {self.machine['torch_blas']})")
        print(f"{lib}; pinned to {self.threads} core(s); runs: median of {self.runs} after 1 warm-up, alternating")
        if os.environ.get("XLA_FLAGS"):
            print(f"  XLA_FLAGS={os.environ['XLA_FLAGS']}")
        self.machine["xla_flags"] = os.environ.get("XLA_FLAGS", "")
        self.machine["realtime"] = os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR)
        if self.machine["realtime"]:
            print("  real-time scheduling (chrt -f): this process preempts every ordinary one, so the load average "
                  "counts jobs that get at most the kernel's 5% non-real-time share; see cpu % per side")
        self._warn_load(0.5 * os.cpu_count())  # before this run adds its own threads

    def _warn_load(self, limit: float) -> None:
        """Warn when the 1-minute load average exceeds ``limit`` (other jobs share the cores) and this process
        does not run at real-time priority."""
        load = os.getloadavg()[0]
        if load > limit and not self.machine["realtime"]:
            print(f"  WARNING: load average {load:.1f} on {os.cpu_count()} cores: other jobs share the CPU. PyTorch's "
                  "OpenMP threads spin-wait at every barrier and lose far more than XLA's pool under contention "
                  "(bench_threads.py), so ratios measured now overstate jaxequiv; rerun on a quiet machine.")

    # -- timing ------------------------------------------------------------------------------------------
    def time(self, sides: dict[str, Callable[[], object]], runs: int | None = None, prefix: str = "") -> dict[str, Timing]:
        """Time every side ``runs`` times, alternately, after one warm-up call each; the timings are kept
        under ``prefix + side`` for the results file. Each callable must block until its work is done."""
        runs = runs or self.runs
        names = list(sides)
        first = {}
        for n in names:
            t0 = time.perf_counter()
            sides[n]()
            first[n] = time.perf_counter() - t0
        samples = {n: [] for n in names}
        cpu = {n: 0.0 for n in names}
        loads = {n: [] for n in names}
        for r in range(runs):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                loads[n].append(os.getloadavg()[0])
                c0, t0 = time.process_time(), time.perf_counter()
                sides[n]()
                dt = time.perf_counter() - t0
                cpu[n] += time.process_time() - c0
                samples[n].append(dt)
                loads[n].append(os.getloadavg()[0])
        out = {}
        for n in names:
            out[n] = Timing(samples[n], first[n], loads[n][0], loads[n][-1],
                            cpu[n] / (sum(samples[n]) * self.threads))
            self.timings[prefix + n] = out[n]
        return out

    # -- peaks -------------------------------------------------------------------------------------------
    def peaks(self, n: int | None = None) -> dict[str, float]:
        """f32 GEMM ``n x n x n`` GFLOP/s in JAX and in torch (if loaded), timed alternately in this run; the
        roofline reference. Stored in the results as ``peak_<side>_gflops``."""
        import jax.numpy as jnp
        import numpy as np

        n = n or (512 if self.quick else 4096)
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        aj = self.jax.device_put(a)
        mm = _jit_matmul()
        sides = {"jax": lambda: mm(aj, aj).block_until_ready()}
        if self.torch is not None:
            at = self.torch.from_numpy(a)
            sides["torch"] = lambda: at @ at
        t = self.time(sides, prefix=f"peak{n}/")
        flops = 2.0 * n**3
        out = {k: flops / v.lo / 1e9 for k, v in t.items()}  # the peak: the best run
        for k, v in out.items():
            self.values[f"peak_{k}_gflops"] = v
        del jnp
        print(f"  f32 GEMM peak ({n}^3, best of {self.runs}): "
              + ", ".join(f"{k} {v:.1f} GFLOP/s (median {flops / t[k].median / 1e9:.1f})" for k, v in out.items()))
        self.machine["xla_threads"] = xla_threads()
        print(f"  threads: XLA intra-op pool {self.machine['xla_threads']}"
              + (f", torch {self.torch.get_num_threads()}" if self.torch is not None else ""))
        return out

    # -- reporting ---------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """A line printed now and kept in the results file."""
        self.notes.append(text)
        print(text)

    def row(self, label: str, value: str, target: str = "-", met: bool | None = None, key: str | None = None) -> None:
        """A README table row: what was compared, the figure, the target and whether it was met."""
        self.rows.append({"label": label, "value": value, "target": target, "met": met, "key": key})

    def finish(self, result: str, **values: float) -> None:
        """Print ``RESULT <result> k=v ...`` as the last line and write the results file."""
        line = f"RESULT {result} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in values.items())
        self.values.update(values)
        self.machine.setdefault("xla_threads", xla_threads())
        path = self.args.json or (None if self.quick else str(RESULTS_DIR / f"{self.name}.json"))
        cache = self._cache_events
        self._warn_load(os.cpu_count() + 0.5)  # this run's own threads count in the load now
        print(f"  compile cache: {cache['hits']} hits, {cache['misses']} misses; load now {os.getloadavg()[0]:.2f}")
        if path:
            prov = self._provenance(self.args, started=self._started)
            doc = {"benchmark": self.name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "commit": _commit(prov), "provenance": prov, "argv": sys.argv[1:], "quick": self.quick,
                   "runs": self.runs,
                   "machine": self.machine, "compile_cache": cache, "load_end": os.getloadavg()[0],
                   "timings": {k: t.to_json() for k, t in self.timings.items()}, "values": self.values,
                   "rows": self.rows, "notes": self.notes, "result": line}
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(doc, indent=1, default=float) + "\n")
            print(f"  results written to {path}")
        print(line, flush=True)


def _commit(prov: dict) -> str:
    """The short commit of a :func:`jaxequiv.io.provenance` record, ``+dirty`` when tracked files were changed."""
    git = prov["git"]
    return (git["short"] or "unknown") + ("+dirty" if git["dirty"] else "")


_MATMUL = None


def _jit_matmul():
    global _MATMUL
    if _MATMUL is None:
        import jax

        _MATMUL = jax.jit(lambda u, v: u @ v)
    return _MATMUL


# ---------------------------------------------------------------------------------------------------------
# Profiles


_CONTROL_FLOW = ("while", "cond", "conditional", "call")


def profile_ops(fn: Callable[[], object]) -> list[tuple[str, float]]:
    """Where XLA:CPU spends the time of ``fn()`` (already compiled): ``[(op name, share of op time)]`` for every
    thunk, heaviest first, from a ``jax.profiler`` trace of one call (op names are the HLO instruction names
    of the compiled module: ``ynn_fusion``/``dot``/``convolution`` are the matrix kernels)."""
    import collections
    import glob
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            fn()
        (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
        total: collections.Counter = collections.Counter()
        for plane in data.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                    continue
                for e in line.events:
                    name = e.name
                    if (name.startswith(("end: ", "Threadpool")) or "::" in name
                            or name.split(".")[0] in _CONTROL_FLOW):  # their time is their bodies' time
                        continue
                    total[name] += e.duration_ns
    s = sum(total.values()) or 1.0
    return [(k, v / s) for k, v in total.most_common()]


def fmt_profile(ops: list[tuple[str, float]], top: int = 8) -> str:
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in ops[:top])
