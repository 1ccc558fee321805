"""Roofline: jaxequiv's dense kernels as a fraction of the f32 GEMM peak measured in the same run, with a
profile of every kernel below half of it.

Flops counted (useful work only; multiply-add = 2 flops; B batch, S IG steps, so S + 1 path points):

* IG on ResNet-18 (width 64, 32x32 inputs, batch 64, 10 steps, 8 blocks): ``B (S+1) (F + G)`` with F the
  forward flops of one image summed over its Conv2d/Linear shapes and G those of the layers after the first
  block's input (the activation gradients; weights need none).
* IG on a GPT-2-small-shaped LM (12 layers, d 768, vocab V 50257, batch 8 x T 128 tokens, 10 steps, 12 residual
  sites, next-token logit at the last position): ``B (S+1) (2 F_lin + 3 F_att + 2 F_head)`` with
  ``F_lin = 24 L T d^2`` (qkv, out, 2 MLP matmuls), ``F_att = 4 L T^2 d`` (scores and mixing; their backward
  is 2 matmuls each) and ``F_head = 2 d V`` (the head at the last position only).
* SAE training steps at GPT-2 width (d 768, K 12288, batch 4096): relu_l1 ``10 B d K`` (5 dense matmuls);
  topk (k 32) ``2 B d K + 10 B k d`` (one dense encoder matmul; the decoder and both gradients touch k latents
  per row); stsae (d 1024, K 3072, h 1024, batch 128) ``3 F - 2 B d h`` with ``F = 2 B (d h + h^2 + h K + K d)``
  (forward, weight gradients, input gradients except the first layer's).
* Pairwise linear CKA of 64 representations (n 2048, d 512): ``2 m n^2 d + 2 m^2 n^2`` (one Gram matrix per
  representation, then all pairs' inner products).

For every kernel below 50 % of the peak, a ``jax.profiler`` trace of one call is summarised: the heaviest XLA
thunks (``ynn_fusion``/``dot``/``conv*`` are the matrix kernels, ``fusion``/``loop_*`` elementwise
fusions, ``gather``/``scatter``/``copy``/``transpose`` data movement, ``sort`` sorting) and the share of time
in matrix kernels.

Last line: ``RESULT roofline min_frac=<lowest fraction of peak over the kernels>``.
"""

from __future__ import annotations

import argparse

import numpy as np

import common

_MATRIX = ("ynn_fusion", "dot", "conv", "onednn", "custom-call")


def _categorise(ops) -> dict[str, float]:
    cats: dict[str, float] = {}
    for name, share in ops:
        base = name.split(".")[0]
        cat = ("matrix" if base.startswith(_MATRIX) else "elementwise" if base.startswith(("fusion", "loop", "wrapped"))
               else "data movement" if base.startswith(("gather", "scatter", "copy", "transpose", "dynamic",
                                                         "concatenate", "pad", "slice", "broadcast"))
               else "sort" if base.startswith("sort") else "other")
        cats[cat] = cats.get(cat, 0.0) + share
    return cats


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--only", nargs="+", choices=("resnet", "lm", "sae", "cka"), default=("resnet", "lm", "sae", "cka"))
    args = p.parse_args(argv)
    s = common.Session("roofline", args)
    import jax
    import torch
    import transformers

    from bench_contributions import BLOCKS, module_flops
    from bench_sae import relu_step_flops
    from jaxequiv import Network, sae
    from jaxequiv import similarity as sim
    from jaxequiv.adapters import torch as adapter
    from jaxequiv.testing.torch_reference import torch_resnet
    from jaxequiv.contributions import contributions
    from jaxequiv.contributions import targets as T

    q = args.quick
    peak = s.peaks()["jax"]
    rng = np.random.default_rng(0)
    kernels = {}  # name -> (callable, flops)

    if "resnet" in args.only:
        B, S, size, width = (4, 2, 16, 8) if q else (64, 10, 32, 64)
        torch.manual_seed(0)
        tm = torch_resnet(18, width=width, num_classes=10).eval()
        net = Network.from_module(adapter.load(tm.state_dict(), "resnet"), (size, size, 3))
        x = jax.device_put(rng.standard_normal((B, size, size, 3), dtype=np.float32))
        fwd, after = module_flops(tm, torch.zeros(1, 3, size, size), after=BLOCKS[0])
        kernels["ig_resnet18"] = (lambda: jax.block_until_ready(contributions(
            net, x, BLOCKS, method="ig", steps=S, target="top1").values), B * (S + 1) * (fwd + after))

    if "lm" in args.only:
        transformers.logging.set_verbosity_error()
        shape = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=64) if q else {}
        B, L, S = (2, 16, 2) if q else (8, 128, 10)
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
        cfg = hf.config
        lm = adapter.load(hf.state_dict(), "gpt2", cfg.to_dict()).network(logits="last")  # the head at the last token
        ids = rng.integers(0, cfg.vocab_size, (B, L))
        target = T.at_position(T.given_class(rng.integers(0, cfg.vocab_size, B)), 0)
        sites = [f"h.{i}" for i in range(cfg.n_layer)]
        d, V = cfg.n_embd, cfg.vocab_size
        lin, att, head = 24 * cfg.n_layer * L * d * d, 4 * cfg.n_layer * L * L * d, 2 * d * V
        kernels["ig_gpt2"] = (lambda: jax.block_until_ready(contributions(
            lm, ids, sites, method="ig", steps=S, input_site="embed", target=target).values),
            B * (S + 1) * (2 * lin + 3 * att + 2 * head))

    if "sae" in args.only:
        d, K, B, k, steps = (64, 512, 256, 8, 2) if q else (768, 12288, 4096, 32, 2)
        data = rng.standard_normal((B * steps, d), dtype=np.float32)

        def train(cfg, x, b, n):
            st = sae.TrainSettings(batch_size=b, steps=n, lr=1e-4, log_every=n, data_seed=0)
            return lambda: jax.block_until_ready(sae.train(cfg, x, seed=0, settings=st).params)

        kernels["sae_relu_l1"] = (train(sae.ReluL1(d_in=d, d_sae=K), data, B, steps), steps * relu_step_flops(B, d, K))
        kernels["sae_topk"] = (train(sae.TopK(d_in=d, d_sae=K, k=k), data, B, steps),
                               steps * (2 * B * d * K + 10 * B * k * d))
        d, K, B, steps = (64, 192, 32, 10) if q else (1024, 3072, 128, 10)
        F = 2 * B * (d * d + d * d + d * K + K * d)
        kernels["sae_stsae"] = (train(sae.STSAE(d_in=d, d_sae=K), rng.standard_normal((B * steps, d), dtype=np.float32),
                                      B, steps), steps * (3 * F - 2 * B * d * d))

    if "cka" in args.only:
        m, n, d = (8, 128, 32) if q else (64, 2048, 512)
        Xs = jax.device_put(rng.standard_normal((m, n, d), dtype=np.float32))
        kernels["pairwise_cka"] = (lambda: jax.block_until_ready(sim.pairwise(sim.LINEAR_CKA, Xs)),
                                   2 * m * n * n * d + 2 * m * m * n * n)

    fracs = {}
    for name, (fn, flops) in kernels.items():
        t = s.time({name: fn}, prefix="kernel/")[name]
        rate = flops / t.median / 1e9
        fracs[name] = rate / peak
        line = (f"{name:13s} {flops / 1e9:9.1f} GFLOP in {t.fmt()} = {rate:6.1f} GFLOP/s = {fracs[name]:.2f} of "
                f"the {peak:.0f} GFLOP/s peak")
        if fracs[name] < 0.5:
            ops = common.profile_ops(fn)
            cats = _categorise(ops)
            line += ("\n    profile (share of XLA op time): " + common.fmt_profile(ops)
                     + "\n    by kind: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(cats.items(),
                                                                                         key=lambda kv: -kv[1])))
            s.values[f"profile_{name}"] = {"ops": ops[:20], "kinds": cats}
        s.note(line)
        s.row(f"roofline: {name} (useful flops / measured f32 GEMM peak)", f"{fracs[name]:.2f}", ">= 0.5",
              fracs[name] >= 0.5, f"frac_{name}")
    s.values["fractions"] = fracs
    s.finish("roofline", min_frac=round(min(fracs.values()), 3))


if __name__ == "__main__":
    main()
