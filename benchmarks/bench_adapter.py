"""Checkpoint conversion: jaxequiv's adapter vs PyTorch's own loading, on random ResNet-50 and GPT-2-small weights.

jaxequiv: ``jaxequiv.adapters.torch.load`` (read file -> mapping table -> nnx model on device).
Reference: what a PyTorch user runs: ``ResNet.load_state_dict(torch.load(.pth))`` (torchvision-named module) and
``GPT2LMHeadModel.from_pretrained(folder)``. Warm-up, then the median (and min-max spread) of ``--repeats`` runs
each; the CPU, threads and load averages are printed. Peak memory is the resident-set high-water mark of one
jaxequiv conversion in a fresh child process, above its level after imports. Depth scaling: bench_conversion.py.
Last line: ``RESULT adapter resnet50_s=<seconds> gpt2_s=<seconds> peak_mb=<MB>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machine import describe, loadavg


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(path: str, arch: str) -> None:
    """Convert once in this process; print the peak RSS above the post-import level (MB)."""
    import jax

    from jaxequiv.adapters import torch as ad

    jax.numpy.zeros(1).block_until_ready()
    base = _rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark
        f.write("5")
    model = ad.load(path, arch or None)
    jax.block_until_ready(jax.tree_util.tree_leaves(__import__("flax").nnx.state(model)))
    print(f"{_rss_mb('VmHWM') - base:.1f}")


def _median_time(fn, repeats: int) -> tuple[float, str]:
    """Median seconds of ``repeats`` runs after a warm-up, and their spread as text."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), f"{min(times):.3f}-{max(times):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "ARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import jax
    import torch
    import transformers
    from flax import nnx

    from jaxequiv.adapters import torch as ad
    from jaxequiv.testing.torch_reference import torch_resnet

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    print(describe())

    def jax_load(path, arch=None):
        def go():
            model = ad.load(path, arch)
            jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
        return go

    with tempfile.TemporaryDirectory() as tmp:
        resnet_path = os.path.join(tmp, "resnet50.pth")
        resnet = torch_resnet(50).eval()
        torch.save(resnet.state_dict(), resnet_path)
        gpt2_dir = os.path.join(tmp, "gpt2")
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(gpt2_dir)
        n_resnet = sum(p.numel() for p in resnet.parameters())

        jx_resnet, jx_resnet_spread = _median_time(jax_load(resnet_path, "resnet"), args.repeats)
        target = torch_resnet(50)  # built once: only the loading is timed, as for jaxequiv
        pt_resnet, pt_resnet_spread = _median_time(
            lambda: target.load_state_dict(torch.load(resnet_path, weights_only=True)), args.repeats)
        jx_gpt2, jx_gpt2_spread = _median_time(jax_load(gpt2_dir), args.repeats)
        pt_gpt2, pt_gpt2_spread = _median_time(lambda: transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir),
                                               args.repeats)

        peaks = []
        for path, arch in ((resnet_path, "resnet"), (gpt2_dir, "")):
            out = subprocess.run([sys.executable, __file__, "--child", path, arch], check=True,
                                 capture_output=True, text=True)
            peaks.append(float(out.stdout.strip().splitlines()[-1]))

    print(f"ResNet-50 ({n_resnet / 1e6:.1f}M params, .pth): jaxequiv {jx_resnet:.3f} s ({jx_resnet_spread}), "
          f"torch load_state_dict {pt_resnet:.3f} s ({pt_resnet_spread}), ratio jaxequiv/torch "
          f"{jx_resnet / pt_resnet:.2f}")
    print(f"GPT-2 small (124M params, HF safetensors folder): jaxequiv {jx_gpt2:.3f} s ({jx_gpt2_spread}), "
          f"transformers from_pretrained {pt_gpt2:.3f} s ({pt_gpt2_spread}), ratio jaxequiv/torch "
          f"{jx_gpt2 / pt_gpt2:.2f}")
    print(f"load average after: {loadavg()}")
    print(f"peak RSS above imports: ResNet-50 {peaks[0]:.0f} MB, GPT-2 {peaks[1]:.0f} MB")
    print(f"RESULT adapter resnet50_s={jx_resnet:.3f} gpt2_s={jx_gpt2:.3f} peak_mb={max(peaks):.0f}")


if __name__ == "__main__":
    main()
