"""Checkpoint conversion: jaxequiv's ``adapters.torch.load`` vs PyTorch's own loaders, on GPT-2 shapes of 12, 24,
36 and 48 layers (random weights written by ``transformers`` as a safetensors folder) and on a ResNet-50 ``.pth``.

Baselines and why they are fair: ``GPT2LMHeadModel.from_pretrained(folder)`` is what a PyTorch user runs to get a
ready model from the same folder, and ``ResNet.load_state_dict(torch.load(.pth))`` into a module built once is
what they run for a torchvision checkpoint (only the loading is timed, as for jaxequiv). Both sides end with a
usable model on the CPU (jaxequiv: every parameter a ``jax.Array``, waited for); both map the safetensors file and
share its memory where no conversion is needed. Timings alternate between the sides (``common.Session``).
Peak memory: the resident-set high-water mark of one conversion in a fresh child process, above its level after
imports, over the checkpoint's size (``--mem-repeats`` children per side, median). ``--d-model`` reduces the
width (default GPT-2's 768) to keep a run short on small machines; the depth scaling is what is measured.

Last line: ``RESULT conversion worst_vs_hf=<max jaxequiv/hf time> worst_peak_over_ckpt=<max peak/ckpt>
time_exponent=<fitted slope of log time vs log parameters, jaxequiv> resnet50_vs_torch=<jaxequiv/torch time>``.
Targets: <= 3, <= 2, ~1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import common


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _jax_convert(path: str, arch: str | None = None):
    import jax
    from flax import nnx

    from jaxequiv.adapters.torch import load

    model = load(path, arch)
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    return model


def _child(side: str, path: str) -> None:
    """One conversion in this fresh process; print the peak RSS above the post-import level (MB)."""
    import jax
    import torch
    import transformers

    import jaxequiv.adapters.torch  # noqa: F401  both sides import the same libraries, so the baselines compare

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    jax.numpy.zeros(1).block_until_ready()
    resnet = path.endswith(".pth")
    target = None
    if side == "torch" and resnet:
        from jaxequiv.testing.torch_reference import torch_resnet

        target = torch_resnet(50)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    if side == "jax":
        _jax_convert(path, "resnet" if resnet else None)
    elif resnet:
        target.load_state_dict(torch.load(path, weights_only=True))
    else:
        transformers.GPT2LMHeadModel.from_pretrained(path)
    print(f"{_status_mb('VmHWM') - base:.1f}")


def _peak_mb(side: str, path: str, repeats: int) -> float:
    peaks = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", side, path], check=True, capture_output=True,
                             text=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(peaks)


def _gpt2_checkpoint(folder: str, n_layer: int, d_model: int, n_head: int) -> int:
    """Random GPT-2 weights saved by ``transformers``; returns the parameter count."""
    import torch
    import transformers

    torch.manual_seed(n_layer)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head))
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--layers", default="12,24,36,48", help="comma-separated depths (default 12,24,36,48)")
    parser.add_argument("--d-model", type=int, default=768, help="residual width (GPT-2: 768)")
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--mem-repeats", type=int, default=3, help="child processes per side and size for the peak")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.quick:
        args.layers, args.d_model, args.n_head, args.mem_repeats = "2,4", 64, 4, 1
    s = common.Session("conversion", args)
    import torch
    import transformers

    from jaxequiv.testing.torch_reference import torch_resnet

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    s.note(f"GPT-2 shapes: d_model={args.d_model}, n_head={args.n_head}, vocab 50257, n_ctx 1024; peak RSS: median "
           f"of {args.mem_repeats} fresh processes; transformers {transformers.__version__}")
    rows = []
    root = tempfile.mkdtemp(prefix="bench_conversion_")
    try:
        for n_layer in (int(x) for x in args.layers.split(",")):
            folder = os.path.join(root, f"gpt2_{n_layer}")
            n_params = _gpt2_checkpoint(folder, n_layer, args.d_model, args.n_head)
            ckpt_mb = os.path.getsize(os.path.join(folder, "model.safetensors")) / 2**20
            t = s.time({"jaxequiv": lambda: _jax_convert(folder),
                        "from_pretrained": lambda: transformers.GPT2LMHeadModel.from_pretrained(folder)},
                       prefix=f"gpt2_{n_layer}/")
            peak = {side: _peak_mb(side, folder, args.mem_repeats) / ckpt_mb for side in ("jax", "torch")}
            r = common.ratio(t["jaxequiv"], t["from_pretrained"])
            rows.append((n_params, t["jaxequiv"].median, t["from_pretrained"].median, peak["jax"]))
            s.note(f"{n_layer} layers ({n_params / 1e6:.1f}M params, {ckpt_mb:.0f} MB): jaxequiv "
                   f"{t['jaxequiv'].fmt()}; from_pretrained {t['from_pretrained'].fmt()}; jaxequiv/hf "
                   f"{common.fmt_ratio(r)}; peak RSS / checkpoint: jaxequiv {peak['jax']:.2f}, hf {peak['torch']:.2f}")
            s.row(f"GPT-2 shape, {n_layer} layers (d {args.d_model}): conversion time vs `from_pretrained`; peak "
                  "memory over the checkpoint", f"{r[0]:.2f}x the time; {peak['jax']:.2f}x the checkpoint",
                  "<= 3x; <= 2x", r[0] <= 3 and peak["jax"] <= 2)
            shutil.rmtree(folder)

        resnet_path = os.path.join(root, "resnet50.pth")
        torch.manual_seed(0)
        torch.save(torch_resnet(50).eval().state_dict(), resnet_path)
        target = torch_resnet(50)  # built once: only the loading is timed, as for jaxequiv
        t = s.time({"jaxequiv": lambda: _jax_convert(resnet_path, "resnet"),
                    "load_state_dict": lambda: target.load_state_dict(torch.load(resnet_path, weights_only=True))},
                   prefix="resnet50/")
        r50 = common.ratio(t["jaxequiv"], t["load_state_dict"])
        peak50 = _peak_mb("jax", resnet_path, args.mem_repeats) / (os.path.getsize(resnet_path) / 2**20)
        s.note(f"ResNet-50 .pth: jaxequiv {t['jaxequiv'].fmt()}; load_state_dict {t['load_state_dict'].fmt()}; "
               f"jaxequiv/torch {common.fmt_ratio(r50)}; jaxequiv peak RSS / checkpoint {peak50:.2f}")
        s.row("ResNet-50 `.pth`: conversion time vs `load_state_dict` into a built module", f"{r50[0]:.2f}x the time",
              "-")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    params, jx, hf, peak = (np.array(c, float) for c in zip(*rows))
    exponent = float(np.polyfit(np.log(params), np.log(jx), 1)[0]) if len(rows) > 1 else float("nan")
    hf_exponent = float(np.polyfit(np.log(params), np.log(hf), 1)[0]) if len(rows) > 1 else float("nan")
    s.note(f"fitted time exponent vs parameters: jaxequiv {exponent:.2f}, from_pretrained {hf_exponent:.2f} "
           "(1 = linear; the embeddings are a fixed part of every size)")
    s.row("conversion time vs parameters, fitted exponent (GPT-2 shapes)", f"{exponent:.2f}", "~1 (linear)",
          exponent <= 1.2)
    s.finish("conversion", worst_vs_hf=float(np.max(jx / hf)), worst_peak_over_ckpt=float(peak.max()),
             time_exponent=exponent, resnet50_vs_torch=r50[0])


if __name__ == "__main__":
    main()
