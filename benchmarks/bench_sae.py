"""SAE training throughput: jaxequiv vs a straightforward PyTorch implementation, lock-step sweeps, roofline.

One process, same data and initial weights; warm-up, then the median of ``--reps`` (>= 5) timings of each side,
the two sides timed alternately.
(a) topk d=512, K=4096, k=32, batch 4096 train step; (b) stsae d=1024, K=3072, batch 128 train step;
(c) train_many of 27 stsae vs 27 sequential jaxequiv train runs; (d) relu_l1 d=512, K=4096, batch 4096 step
GFLOP/s (6*B*d*K per step) against the f32 matmul peak measured here.
Last line: ``RESULT sae topk_ratio=<x> stsae_ratio=<y> sweep_ratio=<z> peak_frac=<f>`` (ratios = speed-ups).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv import sae
from jaxequiv.sae.train import _chunk_fn, _init_group


def _medians(fa, fb, reps):
    """Median seconds of ``fa()`` and of ``fb()`` after a warm-up (compile) of each; the timed runs alternate
    a, b, a, b, ... so that the shared machine's drifting load affects both alike."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(reps):
        for fn, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _jax_steps(cfg, x, steps, lr=1e-4):
    """The engine's compiled chunk (vmapped group of one SAE), ``steps`` steps on device-resident batches."""
    st = sae.TrainSettings(batch_size=x.shape[0], steps=10**6, lr=lr, log_every=steps)
    tx, chunk = _chunk_fn(st, 10**6, 1)
    c, keys, trio = _init_group([cfg], [0], tx)
    params0 = jax.tree_util.tree_map(lambda a: a[0], trio[0])
    carry = [(c, keys, trio)]
    xs = jnp.broadcast_to(jnp.asarray(x), (steps,) + x.shape)
    bad = jnp.full((1,), -1, jnp.int32)

    def run():
        g, _, m = chunk(carry[0], bad, xs, jnp.arange(steps, dtype=jnp.int32))
        jax.block_until_ready(g)
        carry[0] = g

    return run, params0


def _torch_topk(p, x, k, steps, lr=1e-4):
    import torch

    P = {n: torch.nn.Parameter(torch.tensor(np.asarray(v))) for n, v in p.items()}
    opt = torch.optim.Adam(P.values(), lr=lr)
    tx = torch.tensor(x)

    def run():
        for _ in range(steps):
            pre = (tx - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
            top = torch.topk(pre, k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            loss = ((z @ P["W_dec"] + P["b_dec"] - tx) ** 2).mean()  # AuxK is 0: no dead latents yet
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)

    return run


def _torch_stsae(p, x, theta, l1, steps, lr=1e-4):
    import torch

    d, h = p["W_1"].shape
    K = p["W_enc"].shape[1]
    lin = lambda a, b: torch.nn.Linear(a, b)  # noqa: E731
    enc = torch.nn.Sequential(lin(d, h), torch.nn.Dropout(0.05), torch.nn.ReLU(), torch.nn.LayerNorm(h),
                              lin(h, h), torch.nn.Dropout(0.05), torch.nn.ReLU(), torch.nn.LayerNorm(h),
                              torch.nn.Linear(h, K, bias=False), torch.nn.Sigmoid())
    with torch.no_grad():
        for i, j in ((0, 1), (4, 2)):
            enc[i].weight.copy_(torch.tensor(np.asarray(p[f"W_{j}"]).T))
            enc[i].bias.copy_(torch.tensor(np.asarray(p[f"b_{j}"])))
        enc[8].weight.copy_(torch.tensor(np.asarray(p["W_enc"]).T))
    D = torch.nn.Parameter(torch.tensor(np.asarray(p["W_dec"])))
    opt = torch.optim.Adam(list(enc.parameters()) + [D], lr=lr)
    tx = torch.tensor(x)

    def run():
        for _ in range(steps):
            u = enc(tx)
            z = u * (u >= theta).float().detach()
            loss = ((z @ D - tx) ** 2).mean() + l1 * D.abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import torch

    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)

    # (a) topk
    d, K, k, B = 512, 4096, 32, 4096
    x = rng.normal(size=(B, d)).astype(np.float32)
    cfg = sae.TopK(d_in=d, d_sae=K, k=k)
    jrun, p0 = _jax_steps(cfg, x, 1)
    tj, tt = _medians(jrun, _torch_topk(p0, x, k, 1), args.reps)
    topk_ratio = tt / tj
    print(f"(a) topk d={d} K={K} k={k} B={B}: jaxequiv {tj * 1e3:.1f} ms/step, torch {tt * 1e3:.1f} ms/step, "
          f"speed-up {topk_ratio:.2f}x")

    # (b) stsae
    d, K, B, n = 1024, 3072, 128, 10
    x = rng.normal(size=(B, d)).astype(np.float32)
    cfg = sae.STSAE(d_in=d, d_sae=K, theta=0.8, l1=5e-5)
    jrun, p0 = _jax_steps(cfg, x, n)
    tj, tt = (t / n for t in _medians(jrun, _torch_stsae(p0, x, 0.8, 5e-5, n), args.reps))
    stsae_ratio = tt / tj
    print(f"(b) stsae d={d} K={K} B={B}: jaxequiv {tj * 1e3:.2f} ms/step, torch {tt * 1e3:.2f} ms/step, "
          f"speed-up {stsae_ratio:.2f}x")

    # (c) 27 SAEs in lock-step vs 27 sequential runs (N=3 x theta x lambda x seeds of CODEC's grid)
    d, N = 64, 4096
    data = rng.normal(size=(N, d)).astype(np.float32)
    cfgs, seeds = sae.codec_sweep(d, expansions=(3,))
    st = sae.TrainSettings(batch_size=128, steps=200, lr=5e-5, log_every=100, data_seed=0)
    tm, ts = _medians(lambda: sae.train_many(cfgs, data, seeds=seeds, settings=st),
                      lambda: [sae.train(c, data, seed=s, settings=st) for c, s in zip(cfgs, seeds)], args.reps)
    sweep_ratio = ts / tm
    flops = 27 * 200 * 6 * 128 * (d * d + d * d + d * 3 * d + 3 * d * d)  # ~6 * B * weights per SAE step
    print(f"(c) 27 stsae d={d} K={3 * d} B=128 x 200 steps: train_many {tm:.2f} s, 27 sequential train {ts:.2f} s, "
          f"speed-up {sweep_ratio:.2f}x (~{flops / tm / 1e9:.0f} vs ~{flops / ts / 1e9:.0f} GFLOP/s)")

    # (d) roofline of a dense relu_l1 step vs the measured f32 matmul peak
    n = 4096
    a = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
    mm = jax.jit(lambda u, v: u @ v)
    d, K, B = 512, 4096, 4096
    x = rng.normal(size=(B, d)).astype(np.float32)
    jrun, _ = _jax_steps(sae.ReluL1(d_in=d, d_sae=K), x, 1)
    tpk, tr = _medians(lambda: mm(a, a).block_until_ready(), jrun, args.reps)
    peak = 2 * n**3 / tpk / 1e9
    achieved = 6 * B * d * K / tr / 1e9
    peak_frac = achieved / peak
    # a dense step needs 5 (B, d, K) matmuls = 10*B*d*K flops: peak_frac = 0.6 means those run at the peak
    print(f"(d) relu_l1 d={d} K={K} B={B}: {tr * 1e3:.1f} ms/step = {achieved:.1f} GFLOP/s; matmul peak "
          f"{peak:.1f} GFLOP/s ({n}^2 f32); fraction {peak_frac:.2f} (its 5 matmuls at "
          f"{10 * B * d * K / tr / 1e9 / peak:.2f} of peak)")
    print(f"RESULT sae topk_ratio={topk_ratio:.2f} stsae_ratio={stsae_ratio:.2f} sweep_ratio={sweep_ratio:.2f} "
          f"peak_frac={peak_frac:.2f}")


if __name__ == "__main__":
    main()
