"""Contributions at every block of a ResNet-18: jaxequiv against the PyTorch an expert writes, and against Captum.

Same weights (a torchvision-named ResNet-18, converted by ``jaxequiv.adapters.torch``), same inputs, float32 and
the same thread count on both sides, timed alternately (``common.py``).

(a) IG, 10 steps (11 path points, trapezoid conductance form), top-1 logit target recomputed at every point, at
    all 8 blocks:
    * primary (``fair_ratio``): the all-layer PyTorch pass of the CODEC authors' kind: forward hooks on all 8
      blocks, ONE forward and ONE backward per path point (``autograd.grad`` toward the 8 block outputs), the
      weights frozen (``requires_grad_(False)``: no weight gradients; the contributions are unchanged) and the
      graph started at the first block's input (no backward through the stem), exactly jaxequiv's work;
    * secondary (``ig_ratio``): Captum ``LayerConductance`` called once per block (with the prediction at the
      real input as a fixed class, as Captum needs).
(b) grad x act toward all 10 outputs at all 8 blocks:
    * primary (``allclass_fair_ratio``): PyTorch, one forward with the 8 hooks and one batched backward of the
      10 one-hot cotangents (``autograd.grad(..., is_grads_batched=True)``);
    * secondary (``allclass_ratio``): Captum ``LayerGradientXActivation`` looped over 10 classes x 8 blocks.
The IG work (forward + activation gradients, counted from the convolution shapes) is printed as GFLOP/s and
as a fraction of the f32 GEMM peak measured in the same run.

Last line: ``RESULT contributions fair_ratio=<x> ig_ratio=<y> allclass_fair_ratio=<z> allclass_ratio=<w>``
(jaxequiv images/s over the other side's).
"""

from __future__ import annotations

import argparse

import numpy as np

import common

BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def module_flops(model, *inputs, after=None) -> tuple[float, float]:
    """Forward flops of one call counted over ``Conv2d`` and ``Linear`` modules (2 x multiply-adds): (all,
    those running after the module named ``after`` starts, i.e. the ones an activation-gradient pass goes
    back through)."""
    import torch

    counts, started = [0.0, 0.0], [after is None]
    hooks = []
    if after is not None:
        hooks.append(model.get_submodule(after).register_forward_pre_hook(lambda m, a: started.__setitem__(0, True)))

    def count(m, args, out):
        if isinstance(m, torch.nn.Conv2d):
            f = 2.0 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            f = 2.0 * out.numel() * m.in_features
        counts[0] += f
        counts[1] += f if started[0] else 0.0

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return counts[0], counts[1]


class AllLayerIG:
    """IG at several modules of a PyTorch model from one forward + one backward per path point (frozen weights,
    forward hooks, the graph started at the input of module ``start``); ``target(out) -> [B]`` per point."""

    def __init__(self, model, names, start, target):
        import torch

        self.model, self.names, self.target, self.acts = model, names, target, {}
        for p in model.parameters():
            p.requires_grad_(False)
        for n in names:
            model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: self.acts.__setitem__(n, o))
        model.get_submodule(start).register_forward_pre_hook(
            lambda m, a: (a[0].detach().requires_grad_(True),) + tuple(a[1:]))
        self.torch = torch

    def __call__(self, x, baseline, steps):
        torch = self.torch
        total = {n: 0.0 for n in self.names}
        prev = None
        for i in range(steps + 1):
            xi = baseline + (i / steps) * (x - baseline)
            out = self.model(xi)
            grads = torch.autograd.grad(self.target(out).sum(), [self.acts[n] for n in self.names])
            cur = {n: (self.acts[n].detach(), g) for n, g in zip(self.names, grads)}
            if prev is not None:
                for n in self.names:
                    (a0, g0), (a1, g1) = prev[n], cur[n]
                    total[n] = total[n] + (a1 - a0) * (g0 + g1) * 0.5
            prev = cur
            self.acts.clear()
        return total


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image height = width")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage width")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    s = common.Session("contributions", args)
    import jax
    import torch
    from captum.attr import LayerConductance, LayerGradientXActivation

    from jaxequiv import Network
    from jaxequiv.testing.torch_reference import torch_resnet
    from jaxequiv.adapters.torch import load
    from jaxequiv.contributions import contributions

    batch, width = (4, 8) if args.quick else (args.batch, args.width)
    steps, size = (2, 16) if args.quick else (args.steps, args.size)
    peak = s.peaks()["jax"]
    torch.manual_seed(0)
    tmodel = torch_resnet(18, width=width, num_classes=10)
    with torch.no_grad():  # trained-like BatchNorm statistics instead of the identity at init
        for m in tmodel.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    tmodel.eval()
    net = Network.from_module(load(tmodel.state_dict(), "resnet"), (size, size, 3))
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        pred = tmodel(tx).argmax(1)
    xj = jax.device_put(x)
    fwd, after = module_flops(tmodel, tx[:1], after=BLOCKS[0])
    ig_flops = batch * (steps + 1) * (fwd + after)
    s.note(f"ResNet-18 width {width}, {size}x{size}, batch {batch}, float32 on both sides; IG work "
           f"{ig_flops / 1e9:.1f} GFLOP per batch ({steps + 1} points x (forward {fwd / 1e6:.1f} + activation "
           f"gradients {after / 1e6:.1f} MFLOP per image))")

    def jax_ig():
        return jax.block_until_ready(contributions(net, xj, BLOCKS, method="ig", steps=steps, target="top1").values)

    def jax_all():
        return jax.block_until_ready(contributions(net, xj, BLOCKS, method="grad_x_act", outputs="all").values)

    # the all-layer PyTorch passes run on their own copy, whose weights are frozen
    fmodel = torch_resnet(18, width=width, num_classes=10)
    fmodel.load_state_dict(tmodel.state_dict())
    fmodel.eval()
    all_ig = AllLayerIG(fmodel, BLOCKS, BLOCKS[0], lambda out: out.max(1).values)
    zero = torch.zeros_like(tx)

    def torch_fair_ig():
        return all_ig(tx, zero, steps)

    def torch_fair_all():
        out = fmodel(tx)
        acts = [all_ig.acts[n] for n in BLOCKS]
        eye = torch.eye(out.shape[1]).unsqueeze(1).expand(-1, out.shape[0], -1)
        grads = torch.autograd.grad(out, acts, grad_outputs=eye, is_grads_batched=True)
        res = [a.detach().unsqueeze(0) * g for a, g in zip(acts, grads)]
        all_ig.acts.clear()
        return res

    def captum_ig():
        for name in BLOCKS:
            LayerConductance(tmodel, tmodel.get_submodule(name)).attribute(
                tx, baselines=torch.zeros_like(tx), target=pred, n_steps=steps)

    def captum_all():
        for name in BLOCKS:
            attr = LayerGradientXActivation(tmodel, tmodel.get_submodule(name))
            for k in range(10):
                attr.attribute(tx, target=k)

    t = s.time({"jaxequiv_ig": jax_ig, "torch_all_layer_ig": torch_fair_ig, "captum_ig": captum_ig}, prefix="ig/")
    fair, capt = (common.ratio(t[k], t["jaxequiv_ig"]) for k in ("torch_all_layer_ig", "captum_ig"))
    gf = {k: ig_flops / v.median / 1e9 for k, v in t.items() if k != "captum_ig"}
    s.note(f"(a) IG {steps} steps, 8 blocks ({batch} images per call):\n"
           + "".join(f"    {k:20s} {v.fmt()} = {batch / v.median:.1f} img/s"
                     + (f", {gf[k]:.0f} GFLOP/s = {gf[k] / peak:.2f} of peak\n" if k in gf else "\n")
                     for k, v in t.items())
           + f"    vs the all-layer PyTorch pass (primary) {common.fmt_ratio(fair)}\n"
           f"    vs Captum LayerConductance x8           {common.fmt_ratio(capt)}")
    s.row("IG, 10 steps, 8 ResNet-18 blocks vs the all-layer PyTorch pass (frozen weights)", f"{fair[0]:.2f}x",
          ">= 1.1x", fair[0] >= 1.1, "fair_ratio")
    s.row("the same vs Captum LayerConductance per layer", f"{capt[0]:.1f}x", ">= 5x", capt[0] >= 5, "ig_ratio")
    s.values["ig_gflops"] = gf
    s.values["ig_peak_frac"] = gf["jaxequiv_ig"] / peak

    t = s.time({"jaxequiv_all": jax_all, "torch_batched_backward": torch_fair_all, "captum_all": captum_all},
               prefix="allclass/")
    afair, acapt = (common.ratio(t[k], t["jaxequiv_all"]) for k in ("torch_batched_backward", "captum_all"))
    s.note("(b) grad x act toward 10 outputs, 8 blocks:\n"
           + "".join(f"    {k:22s} {v.fmt()} = {batch / v.median:.1f} img/s\n" for k, v in t.items())
           + f"    vs PyTorch batched backward (primary) {common.fmt_ratio(afair)}\n"
           f"    vs Captum x80                         {common.fmt_ratio(acapt)}")
    s.row("grad x act toward 10 outputs at 8 blocks vs PyTorch (one forward, one batched backward)",
          f"{afair[0]:.2f}x", "-", None, "allclass_fair_ratio")
    s.row("the same vs Captum looped over classes and layers", f"{acapt[0]:.1f}x", ">= 10x", acapt[0] >= 10,
          "allclass_ratio")
    # correctness (after the timings, so that the first timed call shows the compile time)
    ours, ref = jax_ig(), torch_fair_ig()
    worst, flips = 0.0, 0.0
    for n in BLOCKS:
        r = ref[n].numpy().transpose(0, 2, 3, 1)
        diff = np.abs(np.asarray(ours[n]) - r) / np.abs(r).max()
        worst, flips = max(worst, float(diff.max())), max(flips, float(np.mean(diff > 1e-3)))
    s.note(f"IG jaxequiv vs the all-layer PyTorch pass: max relative difference {worst:.1e}; at most "
           f"{100 * flips:.3f}% of a block's elements differ by > 1e-3 of its max (float32 ReLU-kink flips)")
    allj, allt = jax_all(), torch_fair_all()
    err = max(float(np.abs(np.asarray(allj[n]) - allt[i].permute(1, 0, 3, 4, 2).numpy()).max()
                    / np.abs(allt[i].numpy()).max()) for i, n in enumerate(BLOCKS))
    s.note(f"grad x act (10 outputs) jaxequiv vs PyTorch: max relative difference {err:.1e}")

    s.finish("contributions", fair_ratio=round(fair[0], 2), ig_ratio=round(capt[0], 2),
             allclass_fair_ratio=round(afair[0], 2), allclass_ratio=round(acapt[0], 2))


if __name__ == "__main__":
    main()
