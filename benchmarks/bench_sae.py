"""SAE training: jaxequiv against the PyTorch a user would write, on equal terms (same dtype float32, same
optimiser Adam, same data and sizes, threads pinned equal; sides timed alternately, see ``common.py``).

(a) TopK (d=512, K=4096, k=32, batch 4096) and (b) CODEC's stsae (d=1024, K=3072, batch 128): ``--steps``
    steps of ``jaxequiv.sae.train`` (the public API: init, shuffled batches, compiled chunk) against the same
    steps of a plain PyTorch module + ``torch.optim.Adam`` (model and optimiser built outside the timing).
(c) CODEC's 27-SAE grid (N=3 x theta x lambda_D x seed, d=64, K=192, batch 128, 200 steps):
    ``train_many`` against the two ways a PyTorch user trains 27 SAEs: one after another (27 modules, 27
    Adams, same batches), and stacked: ``torch.func.stack_module_state`` + ``vmap(grad(functional_call))``
    with one Adam over the stacked parameters (``randomness="different"`` for dropout). ``sweep_ratio`` is
    against the faster of the two; the old comparison (27 sequential jaxequiv ``train`` calls) is printed
    as a secondary line.
(d) A dense relu_l1 step (d=512, K=4096, batch 4096) as a fraction of the f32 GEMM peak measured in this run.
    A step is 5 (B, d, K) matmuls: encoder and decoder forward, the decoder's input and weight gradients
    and the encoder's weight gradient, so 10 B d K flops (the input gradient is not needed); the README's
    earlier ``0.50`` counted 6 B d K.

Last line: ``RESULT sae topk_ratio=<x> stsae_ratio=<y> sweep_ratio=<z> peak_frac=<f>`` (speed-ups over
PyTorch; ``peak_frac`` = achieved / peak GFLOP/s of the relu_l1 step).
"""

from __future__ import annotations

import argparse

import numpy as np

import common


def relu_step_flops(batch: int, d: int, k: int) -> float:
    """Flops of one dense relu_l1 training step: 5 matmuls of (B, d) x (d, K) size = 10 B d K."""
    return 10.0 * batch * d * k


def torch_topk(params, k, lr):
    """A PyTorch TopK SAE step (dense codes, as most PyTorch code writes it) on batch ``x``; returns step()."""
    import torch

    P = {n: torch.nn.Parameter(torch.tensor(np.asarray(v))) for n, v in params.items()}
    opt = torch.optim.Adam(P.values(), lr=lr)

    def step(tx):
        pre = (tx - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
        top = torch.topk(pre, k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = ((z @ P["W_dec"] + P["b_dec"] - tx) ** 2).mean()  # AuxK is 0: no dead latents yet
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)
        return loss

    return step


_STSAE = None


def torch_stsae(d: int, h: int, k: int, dropout: float = 0.05):
    """CODEC's stsae as a PyTorch module (the reference code's layout) whose forward is the training loss:
    ``model(x, theta, l1)`` = MSE of ``z @ D`` with ``z = u * 1[u >= theta]`` (mask detached) + ``l1 * mean|D|``."""
    global _STSAE
    import torch

    if _STSAE is None:
        class STSAE(torch.nn.Module):
            def __init__(self, d, h, k, dropout):
                super().__init__()
                lin, drop, ln = torch.nn.Linear, torch.nn.Dropout, torch.nn.LayerNorm
                self.enc = torch.nn.Sequential(lin(d, h), drop(dropout), torch.nn.ReLU(), ln(h),
                                               lin(h, h), drop(dropout), torch.nn.ReLU(), ln(h),
                                               lin(h, k, bias=False), torch.nn.Sigmoid())
                self.dec = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(k, d)))

            def forward(self, x, theta, l1):
                u = self.enc(x)
                z = u * (u >= theta).to(u.dtype).detach()
                return ((z @ self.dec - x) ** 2).mean() + l1 * self.dec.abs().mean()

        _STSAE = STSAE
    return _STSAE(d, h, k, dropout)


def torch_sequential(models, thetas, l1s, lr):
    """SAEs one after another, each with its own module and Adam, over the same batches; returns run(batches)."""
    import torch

    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in models]

    def run(batches):
        for m, opt, theta, l1 in zip(models, opts, thetas, l1s):
            m.train()
            for xb in batches:
                loss = m(xb, theta, l1)
                opt.zero_grad()
                loss.backward()
                opt.step()

    return run


def torch_stacked(models, thetas, l1s, lr):
    """SAEs stacked: ``vmap(grad(functional_call))`` over ``stack_module_state`` parameters (dropout draws
    differ per SAE), one Adam over the stacked tensors (Adam is elementwise: the same as one Adam per SAE)."""
    import copy

    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta").train()
    theta, l1 = torch.tensor(thetas), torch.tensor(l1s)

    def loss(p, b, th, lam, x):
        return functional_call(base, (p, b), (x, th, lam))

    grads = vmap(grad(loss), in_dims=(0, 0, 0, 0, None), randomness="different")
    opt = torch.optim.Adam(params.values(), lr=lr)

    def run(batches):
        for xb in batches:
            g = grads(params, buffers, theta, l1, xb)
            for name, v in params.items():
                v.grad = g[name]
            opt.step()

    return run


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call in (a) and (b)")
    args = p.parse_args(argv)
    s = common.Session("sae", args)
    import jax
    import torch

    from jaxequiv import sae

    q = args.quick
    steps = 2 if q else args.steps
    peak = s.peaks()["jax"]
    rng = np.random.default_rng(0)
    s.note("dtype: float32 on both sides; optimiser Adam (lr 1e-4, betas 0.9/0.999) on both sides")

    def jax_train(cfg, data, batch, n_steps):
        st = sae.TrainSettings(batch_size=batch, steps=n_steps, lr=1e-4, log_every=n_steps, data_seed=0)
        return lambda: jax.block_until_ready(sae.train(cfg, data, seed=0, settings=st).params)

    # (a) TopK
    d, K, k, B = (64, 512, 8, 256) if q else (512, 4096, 32, 4096)
    data = rng.standard_normal((B * steps, d), dtype=np.float32)
    cfg = sae.TopK(d_in=d, d_sae=K, k=k)
    tstep = torch_topk(cfg.post_update(cfg.init(jax.random.key(0))), k, 1e-4)
    tbatches = [torch.from_numpy(data[i * B:(i + 1) * B]) for i in range(steps)]
    t = s.time({"jaxequiv": jax_train(cfg, data, B, steps), "torch": lambda: [tstep(xb) for xb in tbatches]},
               prefix="topk/")
    topk = common.ratio(t["torch"], t["jaxequiv"])
    s.note(f"(a) topk d={d} K={K} k={k} B={B}, {steps} steps per call:\n"
           f"    jaxequiv train {t['jaxequiv'].fmt(1e3 / steps, 'ms/step')}\n"
           f"    torch          {t['torch'].fmt(1e3 / steps, 'ms/step')}\n    speed-up {common.fmt_ratio(topk)}")
    s.row("topk SAE training step vs PyTorch (same Adam, f32)", f"{topk[0]:.2f}x", ">= 1.3x", topk[0] >= 1.3,
          "topk_ratio")

    # (b) stsae
    d, K, B = (64, 192, 32) if q else (1024, 3072, 128)
    n = 10 * steps
    data = rng.standard_normal((B * n, d), dtype=np.float32)
    cfg = sae.STSAE(d_in=d, d_sae=K, theta=0.8, l1=5e-5)
    one = torch_sequential([torch_stsae(d, d, K)], [0.8], [5e-5], 1e-4)
    tbatches = [torch.from_numpy(data[i * B:(i + 1) * B]) for i in range(n)]
    t = s.time({"jaxequiv": jax_train(cfg, data, B, n), "torch": lambda: one(tbatches)}, prefix="stsae/")
    stsae = common.ratio(t["torch"], t["jaxequiv"])
    s.note(f"(b) stsae d={d} K={K} B={B}, {n} steps per call:\n"
           f"    jaxequiv train {t['jaxequiv'].fmt(1e3 / n, 'ms/step')}\n"
           f"    torch          {t['torch'].fmt(1e3 / n, 'ms/step')}\n    speed-up {common.fmt_ratio(stsae)}")
    s.row("CODEC stsae training step vs PyTorch (same Adam, f32)", f"{stsae[0]:.2f}x", ">= 1.3x", stsae[0] >= 1.3,
          "stsae_ratio")

    # (c) 27 SAEs
    d, B, n = (16, 32, 20) if q else (64, 128, 200)
    data = rng.standard_normal((B * n, d), dtype=np.float32)
    cfgs, seeds = sae.codec_sweep(d, expansions=(3,))
    st = sae.TrainSettings(batch_size=B, steps=n, lr=5e-5, log_every=n, data_seed=0)
    torch.manual_seed(0)
    models = [torch_stsae(d, d, 3 * d) for _ in cfgs]
    thetas, l1s = [c.theta for c in cfgs], [c.l1 for c in cfgs]
    tbatches = [torch.from_numpy(data[i * B:(i + 1) * B]) for i in range(n)]
    seq = torch_sequential(models, thetas, l1s, 5e-5)
    stacked = torch_stacked(models, thetas, l1s, 5e-5)
    t = s.time({"train_many": lambda: jax.block_until_ready([r.params for r in sae.train_many(
                    cfgs, data, seeds=seeds, settings=st)]),
                "torch_sequential": lambda: seq(tbatches),
                "torch_vmap": lambda: stacked(tbatches),
                "jaxequiv_sequential": lambda: jax.block_until_ready([sae.train(c, data, seed=sd, settings=st).params
                                                                     for c, sd in zip(cfgs, seeds)])},
               prefix="sweep/")
    best = min(("torch_sequential", "torch_vmap"), key=lambda k: t[k].median)
    sweep = common.ratio(t[best], t["train_many"])
    old = common.ratio(t["jaxequiv_sequential"], t["train_many"])
    s.note(f"(c) 27 stsae d={d} K={3 * d} B={B} x {n} steps:\n"
           + "".join(f"    {k:20s} {v.fmt()}\n" for k, v in t.items())
           + f"    train_many vs PyTorch ({best}, the faster) {common.fmt_ratio(sweep)}\n"
           f"    secondary: vs 27 sequential jaxequiv train calls {common.fmt_ratio(old)}")
    s.row(f"27 SAEs: train_many vs PyTorch ({best.replace('torch_', '')}, the faster of sequential and vmap)",
          f"{sweep[0]:.2f}x", ">= 3x", sweep[0] >= 3, "sweep_ratio")

    # (d) relu_l1 roofline
    d, K, B = (64, 512, 256) if q else (512, 4096, 4096)
    data = rng.standard_normal((B * steps, d), dtype=np.float32)
    t = s.time({"relu_l1": jax_train(sae.ReluL1(d_in=d, d_sae=K), data, B, steps)}, prefix="relu_l1/")
    achieved = relu_step_flops(B, d, K) * steps / t["relu_l1"].median / 1e9
    frac = achieved / peak
    s.note(f"(d) relu_l1 d={d} K={K} B={B}: {t['relu_l1'].fmt(1e3 / steps, 'ms/step')} = {achieved:.1f} GFLOP/s "
           f"(10BdK per step) = {frac:.2f} of the {peak:.1f} GFLOP/s JAX GEMM peak")
    s.row("dense relu_l1 step, fraction of the measured f32 GEMM peak (10BdK flops)", f"{frac:.2f}", ">= 0.5",
          frac >= 0.5, "peak_frac")
    s.finish("sae", topk_ratio=round(topk[0], 2), stsae_ratio=round(stsae[0], 2), sweep_ratio=round(sweep[0], 2),
             peak_frac=round(frac, 2))


if __name__ == "__main__":
    main()
