"""Why the README's first PyTorch figures were 3-12x slower than re-measured ones: the same PyTorch and JAX SAE
steps under controlled conditions, each in a fresh process.

Conditions (``--threads`` cores each, default all):
  quiet          nothing else running (as far as this script controls);
  loaded         ``--load`` extra busy processes per core spinning beside it (a shared development machine);
  loaded+passive the same load with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning at
                 barriers: PyTorch and MKL run on OpenMP, XLA on its own work-stealing pool);
  loaded+1thread the same load, one thread per side;
  avx2           quiet, PyTorch's kernels and MKL restricted to AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
                 ``MKL_ENABLE_INSTRUCTIONS=AVX2``): an AVX2-only CPU such as the AMD EPYC the README was
                 first measured on.
Workloads: the topk step (d=512, K=4096, k=32, B=4096) and the stsae step (d=1024, K=3072, B=128) of
``bench_sae.py``, PyTorch and jaxequiv alternately, median of ``--runs``.

Last line: ``RESULT threads torch_loaded_slowdown=<x> jax_loaded_slowdown=<y> torch_avx2_slowdown=<z>
passive_gain=<w>`` (time under the condition / quiet time, topk step; ``passive_gain`` = loaded / loaded+passive
PyTorch time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import common

CONDITIONS = {
    "quiet": ({}, False, None),
    "loaded": ({}, True, None),
    "loaded+passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, True, None),
    "loaded+1thread": ({}, True, 1),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, False, None),
}


def child(args) -> None:
    """Time the two steps on both sides in this process; print one JSON line of median ms per step."""
    s = common.Session("threads-child", args)
    import jax
    import torch

    from bench_sae import torch_sequential, torch_stsae, torch_topk
    from jaxequiv import sae

    rng = np.random.default_rng(0)
    out = {"torch_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    work = {"topk": (64, 512, 8, 256) if args.quick else (512, 4096, 32, 4096),
            "stsae": (64, 192, 0, 32) if args.quick else (1024, 3072, 0, 128)}
    for name, (d, K, k, B) in work.items():
        n = 2 if name == "topk" else 10
        data = rng.standard_normal((B * n, d), dtype=np.float32)
        batches = [torch.from_numpy(data[i * B:(i + 1) * B]) for i in range(n)]
        if name == "topk":
            cfg = sae.TopK(d_in=d, d_sae=K, k=k)
            step = torch_topk(cfg.post_update(cfg.init(jax.random.key(0))), k, 1e-4)
            ref = lambda: [step(xb) for xb in batches]  # noqa: E731
        else:
            cfg = sae.STSAE(d_in=d, d_sae=K, theta=0.8, l1=5e-5)
            run = torch_sequential([torch_stsae(d, d, K)], [0.8], [5e-5], 1e-4)
            ref = lambda: run(batches)  # noqa: E731
        st = sae.TrainSettings(batch_size=B, steps=n, lr=1e-4, log_every=n, data_seed=0)
        t = s.time({"torch": ref, "jax": lambda: jax.block_until_ready(
            sae.train(cfg, data, seed=0, settings=st).params)}, prefix=f"{name}/")
        for side, tm in t.items():
            out[f"{name}/{side}"] = 1e3 * tm.median / n
            out[f"{name}/{side}/cpu"] = tm.cpu_share
    print("CHILD " + json.dumps(out), flush=True)


def _spinners(count: int) -> list[subprocess.Popen]:
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--load", type=int, default=2, help="busy processes per core in the loaded conditions")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    s = common.Session("threads", args)
    results = {}
    for cond, (env, loaded, threads) in CONDITIONS.items():
        spin = _spinners(args.load * s.threads) if loaded else []
        try:
            time.sleep(1.0 if spin else 0.0)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--runs", str(s.runs),
                   "--threads", str(threads or s.threads)] + (["--quick"] if args.quick else [])
            load0 = os.getloadavg()[0]
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=3600)
        finally:
            for sp in spin:
                sp.kill()
                sp.wait()
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
        if proc.returncode or not line:
            raise RuntimeError(f"condition {cond} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[cond] = json.loads(line[0][6:])
        r = results[cond]
        s.note(f"{cond:15s} (load {load0:.1f}, torch kernels {r['torch_capability']}, threads "
               f"{r['torch_threads']}): topk torch {r['topk/torch']:.1f} / jax {r['topk/jax']:.1f} ms/step; stsae "
               f"torch {r['stsae/torch']:.2f} / jax {r['stsae/jax']:.2f} ms/step; cpu share torch "
               f"{100 * r['topk/torch/cpu']:.0f}% jax {100 * r['topk/jax/cpu']:.0f}%")
    s.values["conditions"] = results
    q = results["quiet"]

    def slow(cond, key):
        return results[cond][key] / q[key]

    for cond in CONDITIONS:
        if cond != "quiet":
            s.note(f"  {cond:15s} / quiet: topk torch {slow(cond, 'topk/torch'):.2f}x, jax {slow(cond, 'topk/jax'):.2f}x;"
                   f" stsae torch {slow(cond, 'stsae/torch'):.2f}x, jax {slow(cond, 'stsae/jax'):.2f}x")
    passive = results["loaded"]["topk/torch"] / results["loaded+passive"]["topk/torch"]
    s.finish("threads", torch_loaded_slowdown=round(slow("loaded", "topk/torch"), 2),
             jax_loaded_slowdown=round(slow("loaded", "topk/jax"), 2),
             torch_avx2_slowdown=round(slow("avx2", "topk/torch"), 2), passive_gain=round(passive, 2))


if __name__ == "__main__":
    main()
