"""CODEC interventions and mode pictures: jaxequiv vs the PyTorch procedure of the reference code (bscope).

One process, same weights (a torchvision-named ResNet-18 loaded into jaxequiv with the torch adapter), same
images and masks, float32 and equal thread counts on both sides, timed alternately (``common.py``).
(a) Ablation/preservation protocol at one block: T trials x (1 + 2P) channel masks x 20 images. Reference: a
    forward hook zeroing channels, one forward pass per (trial, mask), as ``bscope.Disruptor``. jaxequiv:
    :func:`jaxequiv.codec.interventions.mode_intervention` (one vmapped evaluation).
(b) Mode picture of one image: reference, one backward pass to the input per unit (k, p) of the channel set;
    jaxequiv :func:`jaxequiv.codec.pictures.mode_picture_maps` (one linearisation, 1 JVP + 2 transposed passes).
Last line: ``RESULT codec interventions_ratio=<x> pictures_ratio=<y>`` (ratio = torch time / jaxequiv time).
"""

from __future__ import annotations

import argparse

import numpy as np

import common


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--site", default="layer3.1")
    p.add_argument("--picture-site", default="layer2.1")
    args = p.parse_args(argv)
    s = common.Session("codec", args)
    if args.quick:
        args.size, args.width, args.trials = 32, 8, 2
    import jax
    import torch

    from jaxequiv import Network
    from jaxequiv.testing.torch_reference import torch_resnet
    from jaxequiv.adapters.torch import load
    from jaxequiv.codec import interventions as I
    from jaxequiv.codec.pictures import mode_picture_maps

    torch.manual_seed(0)
    tmodel = torch_resnet(18, width=args.width, num_classes=10).eval()
    net = Network.from_module(load(tmodel.state_dict(), "resnet"), (args.size, args.size, 3))
    r = np.random.default_rng(0)
    n = 400
    x = r.normal(size=(n, args.size, args.size, 3)).astype(np.float32)
    y = np.arange(n) % 10
    c = net.sites()[args.site].shape[-1]
    atoms = r.normal(size=(30, c)).astype(np.float32)
    corr = r.uniform(-1, 1, (30, 10)).astype(np.float32)
    pct = I.PAPER_PERCENTAGES
    key = jax.random.key(1992)

    # (a) interventions
    def jax_inter():
        return I.mode_intervention(net, x, y, args.site, atoms, corr, key, percentages=pct, n_trials=args.trials)

    res = jax_inter()
    draw = res.trials
    top = atoms[np.argmax(corr[:, draw.target], axis=0)]
    masks = np.concatenate([np.ones((args.trials, 1, c), np.float32)]
                           + [np.asarray(I.channel_masks(top, pct, k)) for k in I.KINDS], axis=1)
    stage, block = args.site.split(".")
    module = getattr(tmodel, stage)[int(block)]
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    current = {}
    module.register_forward_hook(lambda m, i, o: o * current["mask"])

    def torch_inter():
        hits = np.zeros((args.trials, masks.shape[1], 2 * draw.index.shape[2], 2), bool)
        with torch.no_grad():
            for t in range(args.trials):
                idx = draw.index[t].reshape(-1)
                xt, yt = tx[idx], torch.from_numpy(y[idx])
                for m in range(masks.shape[1]):
                    current["mask"] = torch.from_numpy(masks[t, m]).view(1, -1, 1, 1)
                    out = tmodel(xt)
                    rank = (out > out.gather(1, yt[:, None])).sum(1)
                    hits[t, m, :, 0], hits[t, m, :, 1] = (rank < 1).numpy(), (rank < 5).numpy()
        return hits

    hits = torch_inter()
    acc = hits.reshape(args.trials, masks.shape[1], 2, -1, 2).mean(3)
    agree = np.mean(np.isclose(acc[:, 0], res.original)) * 0.5 + 0.5 * np.mean(
        np.isclose(np.moveaxis(acc[:, 1:].reshape(args.trials, 2, len(pct), 2, 2), 1, 0), res.perturbed))
    t = s.time({"jaxequiv": jax_inter, "torch": torch_inter}, prefix="interventions/")
    inter = common.ratio(t["torch"], t["jaxequiv"])
    s.note(f"(a) interventions, {args.trials} trials x {masks.shape[1]} masks x 20 images at {args.site}:\n"
           f"    jaxequiv {t['jaxequiv'].fmt()}\n    torch    {t['torch'].fmt()}\n"
           f"    ratio {common.fmt_ratio(inter)}; accuracies agree on {agree:.1%} of entries")
    s.row("mode ablation/preservation trials vs the same loop in PyTorch", f"{inter[0]:.1f}x", "-", None,
          "interventions_ratio")
    current["mask"] = torch.ones(1)

    # (b) pictures
    psite = args.picture_site
    pc = net.sites()[psite].shape[-1]
    patom = r.normal(size=(pc,)).astype(np.float32)
    chans = np.argsort(-patom, kind="stable")[:3]
    xi = x[:1]

    def jax_pic():
        return jax.block_until_ready(mode_picture_maps(net, xi, psite, patom, 3, n_channels=3))

    pstage, pblock = psite.split(".")
    pmod = getattr(tmodel, pstage)[int(pblock)]
    grab = {}
    pmod.register_forward_hook(lambda m, i, o: grab.__setitem__("h", o))

    def torch_pic():
        xt = torch.from_numpy(xi.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        out = torch.softmax(tmodel(xt), -1)[0, 3]
        h = grab["h"]
        (j,) = torch.autograd.grad(out, h, retain_graph=True)
        g = torch.zeros_like(xt)
        for k in chans:
            for a in range(h.shape[2]):
                for b in range(h.shape[3]):
                    (rf,) = torch.autograd.grad(h[0, k, a, b], xt, retain_graph=True)
                    g += j[0, k, a, b] * rf
        return (g * xt).detach().numpy()

    ref = torch_pic()[0].transpose(1, 2, 0)
    ours = np.asarray(jax_pic().total[0])
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30)
    t = s.time({"jaxequiv": jax_pic, "torch": torch_pic}, prefix="pictures/")
    pic = common.ratio(t["torch"], t["jaxequiv"])
    units = 3 * net.sites()[psite].shape[1] * net.sites()[psite].shape[2]
    s.note(f"(b) mode picture at {psite}, {units} units:\n    jaxequiv {t['jaxequiv'].fmt()}\n"
           f"    torch per-unit backward {t['torch'].fmt()}\n    ratio {common.fmt_ratio(pic)}; max relative "
           f"difference {err:.1e}")
    s.row("mode pictures vs per-unit backward loop (PyTorch)", f"{pic[0]:.1f}x", "-", None, "pictures_ratio")
    s.finish("codec", interventions_ratio=round(inter[0], 2), pictures_ratio=round(pic[0], 2))


if __name__ == "__main__":
    main()
