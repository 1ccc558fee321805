"""Contributions at every block of a ResNet-18: jaxequiv (one pass per path step for all blocks) against the
way a PyTorch user does it today with Captum (one attribution call per layer, and per class).

Same weights (a torch ResNet-18 converted by ``jaxequiv.adapters.torch``) and the same inputs on both sides.

(a) ``ig`` with 10 steps, top-1 logit target, at all 8 blocks:
    jaxequiv ``contributions(method="ig")`` vs Captum ``LayerConductance`` (n_steps=10) called once per block
    (Captum needs a fixed class, so it gets the prediction at the real input).
(b) ``grad_x_act`` toward all 10 outputs at all 8 blocks:
    jaxequiv ``contributions(method="grad_x_act", outputs="all")`` vs Captum ``LayerGradientXActivation``
    looped over the 10 classes and the 8 blocks.

Runs of the two sides are interleaved; each figure is the median of ``--runs`` runs after one warm-up run.

    python benchmarks/bench_contributions.py [--batch 64] [--runs 5]

Last line: ``RESULT contributions ig_ratio=<x> allclass_ratio=<y>`` (ratio = jaxequiv images/s over Captum's).

XLA:CPU runs padded 3x3 convolutions on 2x2 and 1x1 maps (layer3/layer4 of a ResNet at 32x32 input) 35-40x
slower than the same product as a patch matmul (measured 2026-11-22, jaxlib 0.10.2), so jaxequiv's ResNet computes
convolutions with at most 4 output positions that way (``jaxequiv.models.resnet._conv_general_dilated``).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="image height = width")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage width")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    from captum.attr import LayerConductance, LayerGradientXActivation

    from jaxequiv import Network
    from jaxequiv.adapters.reference_torch import torch_resnet
    from jaxequiv.adapters.torch import load
    from jaxequiv.contributions import contributions

    torch.manual_seed(0)
    tmodel = torch_resnet(18, width=args.width, num_classes=10)
    with torch.no_grad():  # trained-like BatchNorm statistics instead of the identity at init
        for m in tmodel.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    tmodel.eval()
    model = load(tmodel.state_dict(), "resnet")
    net = Network.from_module(model, (args.size, args.size, 3))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]

    x = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        pred = tmodel(tx).argmax(1)
    xj = jax.device_put(x)

    def jax_ig():
        r = contributions(net, xj, blocks, method="ig", steps=args.steps, target="top1")
        jax.block_until_ready(r.values)

    def torch_ig():
        for name in blocks:
            LayerConductance(tmodel, tmodel.get_submodule(name)).attribute(
                tx, baselines=torch.zeros_like(tx), target=pred, n_steps=args.steps)

    def jax_all():
        r = contributions(net, xj, blocks, method="grad_x_act", outputs="all")
        jax.block_until_ready(r.values)

    def torch_all():
        for name in blocks:
            attr = LayerGradientXActivation(tmodel, tmodel.get_submodule(name))
            for k in range(10):
                attr.attribute(tx, target=k)

    # correctness check before timing: same numbers on both sides for (b) at one block and class
    ours = contributions(net, xj, ["layer3.1"], method="grad_x_act", outputs="all").values["layer3.1"][:, 3]
    ref = LayerGradientXActivation(tmodel, tmodel.layer3[1]).attribute(tx, target=3).detach().numpy()
    err = float(np.abs(np.asarray(ours) - ref.transpose(0, 2, 3, 1)).max() / np.abs(ref).max())
    print(f"max relative difference jaxequiv vs Captum grad_x_act (layer3.1, class 3): {err:.2e}")

    sides = {"jax_ig": jax_ig, "torch_ig": torch_ig, "jax_all": jax_all, "torch_all": torch_all}
    times = {k: [] for k in sides}
    for run in range(args.runs + 1):  # run 0 is the warm-up (compilation, allocator), not counted
        for k, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            if run:
                times[k].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    print(f"device: jax {jax.devices()[0].platform}, torch {torch.__version__} threads={torch.get_num_threads()}; "
          f"ResNet-18 width {args.width}, {args.size}x{args.size}, batch {args.batch}, {args.runs} runs")
    print(f"(a) ig {args.steps} steps, 8 blocks: jaxequiv {ips['jax_ig']:.1f} img/s ({med['jax_ig']:.3f} s), "
          f"Captum LayerConductance x8 {ips['torch_ig']:.1f} img/s ({med['torch_ig']:.3f} s)")
    print(f"(b) grad_x_act x 10 classes, 8 blocks: jaxequiv {ips['jax_all']:.1f} img/s ({med['jax_all']:.3f} s), "
          f"Captum LayerGradientXActivation x80 {ips['torch_all']:.1f} img/s ({med['torch_all']:.3f} s)")
    ig_ratio = ips["jax_ig"] / ips["torch_ig"]
    all_ratio = ips["jax_all"] / ips["torch_all"]
    print(f"RESULT contributions ig_ratio={ig_ratio:.2f} allclass_ratio={all_ratio:.2f}")


if __name__ == "__main__":
    main()
