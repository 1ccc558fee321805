"""Checkpoint conversion that scales: jaxequiv's ``adapters.torch.load`` vs ``transformers``' ``from_pretrained``
on GPT-2 shapes of 12, 24, 36 and 48 layers (random weights written by ``transformers`` as a safetensors folder).

Baseline and why it is fair: ``GPT2LMHeadModel.from_pretrained(folder)`` is what a PyTorch user runs to get a
ready model from the same folder; both sides end with a usable model on the CPU (jaxequiv: every parameter a
``jax.Array``, waited for). Both map the safetensors file and share its memory where no conversion is needed.

Time: in one process, warm-up then ``--repeats`` alternating runs of each side; medians and (min-max) spread.
Peak memory: the resident-set high-water mark of one conversion in a fresh child process, above its level after
imports, over the checkpoint's size (``--mem-repeats`` children per side, median). Printed: CPU model, thread
counts and load averages before and after each size. ``--d-model`` reduces the width (default: GPT-2's 768) to
keep the run short on small machines; the depth scaling is what is measured.

Last line: ``RESULT conversion worst_vs_hf=<max jaxequiv/hf time> worst_peak_over_ckpt=<max peak/ckpt>
time_exponent=<fitted slope of log time vs log parameters, jaxequiv>``. Targets: <= 3, <= 2, ~1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from machine import describe, loadavg


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _jax_convert(folder: str):
    import jax
    from flax import nnx

    from jaxequiv.adapters.torch import load

    model = load(folder)
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    return model


def _hf_convert(folder: str):
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(folder)


def _child(side: str, folder: str) -> None:
    """One conversion in this fresh process; print the peak RSS above the post-import level (MB)."""
    import jax
    import torch  # noqa: F401  both sides import the same libraries, so the baselines compare
    import transformers

    import jaxequiv.adapters.torch  # noqa: F401

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    jax.numpy.zeros(1).block_until_ready()
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    (_jax_convert if side == "jax" else _hf_convert)(folder)
    print(f"{_status_mb('VmHWM') - base:.1f}")


def _write_checkpoint(folder: str, n_layer: int, d_model: int, n_head: int) -> tuple[int, int]:
    """Random GPT-2 weights saved by ``transformers``; returns (parameters, bytes of model.safetensors)."""
    import torch
    import transformers

    torch.manual_seed(n_layer)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head)
    model = transformers.GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    return n_params, os.path.getsize(os.path.join(folder, "model.safetensors"))


def _peak_mb(side: str, folder: str, repeats: int) -> float:
    peaks = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", side, folder], check=True, capture_output=True,
                             text=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="12,24,36,48", help="comma-separated depths (default 12,24,36,48)")
    parser.add_argument("--d-model", type=int, default=768, help="residual width (GPT-2: 768)")
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side and size (>= 5)")
    parser.add_argument("--mem-repeats", type=int, default=3, help="child processes per side and size for the peak")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import jax
    import torch  # noqa: F401  (describe() reports its thread count)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    layers = [int(x) for x in args.layers.split(",")]
    print(f"{describe()}; jax {jax.__version__} on {jax.default_backend()}; transformers {transformers.__version__}")
    print(f"GPT-2 shapes: d_model={args.d_model}, n_head={args.n_head}, vocab 50257, n_ctx 1024; "
          f"{args.repeats} alternating timed runs per side, peak RSS median of {args.mem_repeats} fresh processes")
    header = (f"{'layers':>6} {'params':>9} {'ckpt MB':>8} | {'jaxequiv s (spread)':>22} | "
              f"{'from_pretrained s (spread)':>27} | {'ratio':>5} | {'jax peak/ckpt':>13} {'hf peak/ckpt':>12} | load avg")
    print(header)
    rows = []
    root = tempfile.mkdtemp(prefix="bench_conversion_")
    try:
        for n_layer in layers:
            folder = os.path.join(root, f"gpt2_{n_layer}")
            n_params, ckpt = _write_checkpoint(folder, n_layer, args.d_model, args.n_head)
            before = loadavg()
            _jax_convert(folder)  # warm-up: page cache, imports, compiled kernels
            _hf_convert(folder)
            times = {"jax": [], "hf": []}
            for _ in range(args.repeats):
                for side, fn in (("jax", _jax_convert), ("hf", _hf_convert)):
                    t0 = time.perf_counter()
                    fn(folder)
                    times[side].append(time.perf_counter() - t0)
            peaks = {side: _peak_mb(side, folder, args.mem_repeats) for side in ("jax", "hf")}
            ckpt_mb = ckpt / 2**20
            med = {s: statistics.median(t) for s, t in times.items()}
            rows.append((n_params, med["jax"], med["hf"], peaks["jax"] / ckpt_mb))
            print(f"{n_layer:>6} {n_params / 1e6:>8.1f}M {ckpt_mb:>8.0f} | "
                  f"{med['jax']:>7.3f} ({min(times['jax']):.3f}-{max(times['jax']):.3f}) | "
                  f"{med['hf']:>12.3f} ({min(times['hf']):.3f}-{max(times['hf']):.3f}) | "
                  f"{med['jax'] / med['hf']:>5.2f} | {peaks['jax'] / ckpt_mb:>13.2f} {peaks['hf'] / ckpt_mb:>12.2f} | "
                  f"{before} -> {loadavg()}", flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    params, jx, hf, peak = (np.array(c, float) for c in zip(*rows))
    exponent = float(np.polyfit(np.log(params), np.log(jx), 1)[0]) if len(rows) > 1 else float("nan")
    hf_exponent = float(np.polyfit(np.log(params), np.log(hf), 1)[0]) if len(rows) > 1 else float("nan")
    print(f"fitted time exponent vs parameters: jaxequiv {exponent:.2f}, from_pretrained {hf_exponent:.2f} "
          "(1 = linear; the embeddings are a fixed part of every size)")
    print(f"RESULT conversion worst_vs_hf={float(np.max(jx / hf)):.2f} worst_peak_over_ckpt={float(peak.max()):.2f} "
          f"time_exponent={exponent:.2f}")


if __name__ == "__main__":
    main()
