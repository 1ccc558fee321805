"""Scale-out: the same job on 1 process (one device) and on 2 processes x 2 CPU devices (gloo, localhost).

The job, in order: a contributions store (a small CNN, ig, every example split over ``data``), an SAE sweep on the
stored contributions (stsae SAEs split over ``stack``, each batch over ``data``), and a congruity matrix of four
models of two widths (pairs of models split over every device; ``--quick``: one width, linear CKA). Both runs start
fresh worker processes (:func:`jaxequiv.testing.multiprocess.run_workers`); each stage is timed inside them
(compilation included, the slowest process counted). Reported per stage: wall seconds, per-device resident bytes and
the largest absolute difference from the one-process result. Resident bytes per device: for the store, the bytes of
one chunk's contributions on one device (its addressable shards); for the sweep, the compiled training step's
arguments on one device (SAE parameters, optimiser state, statistics and a chunk of batches: ``memory_analysis``);
the congruity matrix replicates its (small) representations and splits only work, so it is not counted.
``bytes_per_device_ratio`` = per-device bytes with 4 devices / with 1, store and sweep together (0.25 when every
byte is split four ways; the SAEs of a sweep split over ``stack`` = 2 only, each batch over ``data`` = 2).

The sweep's batch sums in another order differ by float32 rounding (parameters within ~2e-7 after 100 steps), and
stsae's threshold can turn such a difference into another active latent: in the full run one of the four SAEs
does so near step 175 (on 4 devices of one process as on 2 processes), after which its loss differs by 1e-5..2e-3
relative and its parameters by ~1e-3; the other three stay within 3e-7 relative in loss over all 400 steps.
On a 2-core machine the 2-process run is slower in wall time: four devices share two cores, and the runs are
dominated by start-up and compilation. The point here is equality and memory; speed needs real devices.
Last line: ``RESULT scaling store_diff=... sweep_diff=... congruity_diff=... bytes_per_device_ratio=...``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(n=32, chunk=16, steps=2, batch=16, sae_steps=10, log_every=10, thetas=(0.5,), widths=(8,), rounds=8,
                    boot=50, measure="linear_cka")
    return dict(n=512, chunk=128, steps=8, batch=64, sae_steps=400, log_every=100, thetas=(0.5, 0.7), widths=(8, 6),
                rounds=64, boot=1000, measure="ridge")


def _network():
    import jax
    from flax import nnx

    from jaxequiv import Network, site

    class CNN(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.c2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.relu(self.c1(x))
            h = site("conv2", jax.nn.relu(self.c2(h)), axes=("batch", "height", "width", "channel"))
            return self.fc(h.mean((1, 2)))

    return Network.from_module(CNN(), (8, 8, 3))


def _models(widths: tuple[int, ...], k: int = 4, n: int = 64, m: int = 4) -> dict:
    """k models (base (n, d), impls (m, n, d)), d cycling through ``widths``: implementations are the base plus
    noise."""
    r = np.random.default_rng(1)
    out = {}
    for i in range(k):
        d = widths[i % len(widths)]
        base = r.normal(size=(n, d)).astype(np.float32)
        out[f"m{i}"] = (base, (base[None] + (0.3 + 0.2 * i) * r.normal(size=(m, n, d))).astype(np.float32))
    return out


def job(root: str, quick: bool) -> dict:
    """The three stages on every device of every process of the run (on one process with one device: the plain
    one-device path); their results, wall seconds and per-device bytes."""
    import jax

    from jaxequiv import equivalence as eq
    from jaxequiv import sae
    from jaxequiv.contributions import build_store, contributions
    from jaxequiv.distributed import barrier, make_mesh
    from jaxequiv.sae.data import Scaled
    from jaxequiv.sae.train import compiled_chunks
    from jaxequiv.similarity import get_measure

    size = _sizes(quick)
    several = jax.device_count() > 1
    times, per_device = {}, {}
    x = np.random.default_rng(0).normal(size=(size["n"], 8, 8, 3)).astype(np.float32)
    net = _network()

    barrier("start")
    t0 = time.perf_counter()
    mesh = make_mesh() if several else None
    store = build_store(net, x, f"{root}/store", "conv2", method="ig", steps=size["steps"], chunk_size=size["chunk"],
                        mesh=mesh, progress=False)
    barrier("store")
    times["store"] = time.perf_counter() - t0
    chunk = contributions(net, x[:size["chunk"]], "conv2", method="ig", steps=size["steps"], mesh=mesh).values["conv2"]
    per_device["store"] = max(s.data.nbytes for s in chunk.addressable_shards)
    stored = {v: np.asarray(store.array("conv2", v)) for v in store.variants}

    data = store.array("conv2", "positive")
    scale = 1.0 / max(float(np.std(data)), 1e-12)
    cfgs, seeds = sae.codec_sweep(data.shape[1], expansions=(2,), thetas=size["thetas"], l1s=(0.0,),
                                   seeds=(1, 2))
    settings = sae.TrainSettings(batch_size=size["batch"], steps=size["sae_steps"], lr=1e-3,
                                 log_every=size["log_every"], data_seed=0)
    scaled = Scaled(data, scale)
    barrier("sweep start")
    t0 = time.perf_counter()
    mesh = make_mesh(stack=2) if several else None
    results = sae.train_many(cfgs, scaled, seeds=seeds, settings=settings, mesh=mesh)
    barrier("sweep")
    times["sweep"] = time.perf_counter() - t0
    step = compiled_chunks(cfgs, scaled, seeds=seeds, settings=settings, mesh=mesh)
    per_device["sweep"] = sum(c.memory_analysis().argument_size_in_bytes for c in step)
    params = [{k: np.asarray(v) for k, v in r.params.items()} for r in results]
    losses = np.array([r.history[-1]["loss"] for r in results])

    barrier("congruity start")
    t0 = time.perf_counter()
    mesh = make_mesh(pairs=-1) if several else None
    cm = eq.congruity_matrix(_models(size["widths"]), key=0, n_rounds=size["rounds"], n_boot=size["boot"],
                             measure=get_measure(size["measure"]), mesh=mesh)
    barrier("congruity")
    times["congruity"] = time.perf_counter() - t0
    return {"times": times, "bytes": per_device, "store": stored, "params": params, "losses": losses,
            "congruity": np.stack([cm.score, cm.ci_low, cm.ci_high])}


def _machine() -> str:
    """Commit, CPU model, cores and load: the 2-process run shares the cores with everything else on the machine."""
    from jaxequiv.io import provenance

    p = provenance()
    cpu, load = p["machine"]["cpu"], " ".join(f"{x:.2f}" for x in p["machine"]["load_avg"])
    return (f"commit {p['git']['short']}{'+dirty' if p['git']['dirty'] else ''}; CPU: {cpu['model']}, "
            f"{cpu['cores']} cores, vector {' '.join(cpu['vector']) or 'none'}; load average {load}")


def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_diff(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return max(_max_diff(u, v) for u, v in zip(a, b, strict=True))
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main() -> None:
    from jaxequiv.testing.multiprocess import run_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each run before it is stopped")
    args = parser.parse_args()
    print(_machine())
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for name, processes, devices in (("1 process x 1 device", 1, 1), ("2 processes x 2 devices", 2, 2)):
            t0 = time.perf_counter()
            # the persistent compilation cache: the sweep's step, compiled again to read its memory use, is loaded
            cache = {"JAX_COMPILATION_CACHE_DIR": f"{tmp}/xla", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
            out = run_workers(job, f"{tmp}/{processes}x{devices}", args.quick, processes=processes, devices=devices,
                              timeout_s=args.timeout, env=cache)
            wall = time.perf_counter() - t0
            runs[name] = {"wall": wall, "times": {s: max(o["times"][s] for o in out) for s in out[0]["times"]},
                          "bytes": out[0]["bytes"], "result": out[0]}
            if processes > 1:  # every process ends with the same whole results
                for other in out[1:]:
                    assert _max_diff(other["params"], out[0]["params"]) == 0.0
    one, many = runs.values()
    diffs = {s: _max_diff(many["result"][s], one["result"][s]) for s in ("store", "params", "congruity")}
    for name, r in runs.items():
        stages = ", ".join(f"{s} {t:.1f} s" for s, t in r["times"].items())
        held = ", ".join(f"{s} {b / 1024:.1f} KiB" for s, b in r["bytes"].items())
        print(f"{name}: {stages}; run {r['wall']:.1f} s with start-up; per device: {held}")
    ratio = sum(many["bytes"].values()) / sum(one["bytes"].values())
    print("per-device bytes, 4 devices / 1: " + ", ".join(f"{s} {many['bytes'][s] / one['bytes'][s]:.3f}"
                                                           for s in one["bytes"]))
    largest = max(float(np.max(np.abs(v))) for p in one["result"]["params"] for v in p.values())
    loss = np.max(np.abs(many["result"]["losses"] / one["result"]["losses"] - 1))
    print(f"largest difference from one process: store {diffs['store']:.3g}, sweep params {diffs['params']:.3g} "
          f"(largest parameter {largest:.3g}; final losses within {loss:.2g} relative), "
          f"congruity {diffs['congruity']:.3g}")
    print(f"RESULT scaling store_diff={diffs['store']:.3g} sweep_diff={diffs['params']:.3g} "
          f"congruity_diff={diffs['congruity']:.3g} bytes_per_device_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
