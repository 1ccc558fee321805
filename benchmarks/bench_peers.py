"""jaxequiv against the tools users actually run, on their own terms (``common.py``: float32 on every side,
threads pinned equal, sides timed alternately, median and spread of ``--runs``).

(a) SAE training at GPT-2-small width (d = 768, K = 16 x 768, batch 4096), tokens/s, TopK (k = 32) and ReLU-L1:
    SAELens's own training step (``SAETrainer.step``: ``training_forward_pass``, backward, grad-norm clip,
    Adam, schedulers, firing statistics; its default dense TopK) against ``jaxequiv.sae.train`` (the public
    API: init, shuffled batches, compiled chunk) running the same number of steps; Adam (lr 1e-4, betas
    0.9/0.999) on both sides. Targets >= 1.5x.
(b) Similarity over 64 representations (n = 2048, d = 512), all pairs, against ``similarity.pairwise``:
    * RSA (correlation-distance RDMs, Spearman): rsatoolbox ``calc_rdm`` of the 64 datasets + ``compare``
      (``method="spearman"``, all pairs at once);
    * linear CKA: repsim ``cka(kernel_type="linear", estimator="gretton")``;
    * CCA: repsim ``cca`` (Yanai's summary, the mean squared canonical correlation; jaxequiv's CCA reports the
      mean canonical correlation: the same decompositions);
    * Procrustes: repsim has none (the similarity-repository package, which has, does not install: it needs
      a git URL), so it is printed against a SciPy loop (``orthogonal_procrustes`` per pair) but is not a
      library peer and is left out of ``sim_ratio``.
    Every side is timed on the first ``m`` representations for two sizes ``--sizes m1 m2`` and extrapolated
    to 64 with the same rule, ``t(m) = a m + b m^2`` (per-representation plus per-pair work), because the
    slow sides would take hours at full size; ``--sizes 64`` times the full size directly. repsim's CCA takes
    ~110 s for 2 representations, so it is timed once at ``m1`` and extrapolated linearly (a lower bound on its
    time, and on the ratio). Targets >= 10x.
(c) A GPT-2-small-shaped LM (12 layers, d = 768, 50257-token vocabulary, random weights from ``transformers``
    converted by ``jaxequiv.adapters.torch``), batch 8 x 128 tokens: IG with 10 steps (11 path points) from
    zero embeddings to the embeddings (wte + wpe), at the 12 residual-stream sites (after each block),
    toward the logit of the next token predicted at the last position (fixed class):
    * jaxequiv ``contributions(..., input_site="embed", target=at_position(pred, 0))`` on
      ``network(logits="last")`` (the LM head at the last position only, as the PyTorch side);
    * the all-layer PyTorch pass (primary, target >= 1.1x): weights frozen, hooks on the 12 residual streams,
      one forward (``logits_to_keep=1``: the LM head at the last position only) and one backward per point;
    * Captum ``LayerConductance`` per layer (target >= 10x) on the same forward function, its default
      n_steps + 1 points batched, with the riemann_trapezoid alphas; one IG pass per layer takes minutes, so it
      is timed once on the first and the last layer and scaled to 12 (its backward grows linearly with depth).
    The jaxequiv and PyTorch passes are medians of min(--runs, 3) (each call is ~30 s).

Last line: ``RESULT peers saelens_topk_ratio=<x> saelens_relu_ratio=<x> rsa_ratio=<x> sim_ratio=<x>
lm_ig_ratio=<x>`` (jaxequiv throughput / peer throughput; ``sim_ratio`` the smallest over the repsim measures,
``lm_ig_ratio`` against the all-layer PyTorch pass; Captum's ratio is printed and kept in the results).
"""

from __future__ import annotations

import argparse

import numpy as np

import common

REPRS, N, D = 64, 2048, 512


# ---------------------------------------------------------------------------------------------------------
# (a) SAELens


def bench_saelens(s: common.Session, quick: bool, steps: int) -> dict[str, float]:
    import jax
    import torch
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, \
        TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    from jaxequiv import sae

    d, K, B, k = (64, 256, 256, 8) if quick else (768, 16 * 768, 4096, 32)
    data = np.random.default_rng(0).standard_normal((B * steps, d), dtype=np.float32)
    batches = [torch.from_numpy(data[i * B:(i + 1) * B]) for i in range(steps)]
    st = sae.TrainSettings(batch_size=B, steps=steps, lr=1e-4, log_every=steps, data_seed=0)
    kinds = {"topk": (TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=K, k=k)), sae.TopK(d_in=d, d_sae=K, k=k)),
             "relu": (StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=K, l1_coefficient=1e-3)),
                      sae.ReluL1(d_in=d, d_sae=K, l1=1e-3))}
    s.note(f"(a) SAE training, d={d} K={K} batch {B}, {steps} steps per call, float32, Adam lr 1e-4 on both sides")
    ratios = {}
    for name, (lens_sae, cfg) in kinds.items():
        trainer = SAETrainer(SAETrainerConfig(total_training_samples=10**12, train_batch_size_samples=B, lr=1e-4,
                                             lr_end=1e-5),  # constant schedule; SAELens runners fill lr_end
                             lens_sae, data_provider=iter(()))

        def lens():
            for xb in batches:
                trainer.step(xb)
                trainer.n_training_steps += 1

        t = s.time({"jaxequiv": lambda: jax.block_until_ready(sae.train(cfg, data, seed=0, settings=st).params),
                    "saelens": lens}, prefix=f"saelens_{name}/")
        r = common.ratio(t["saelens"], t["jaxequiv"])
        ratios[name] = r[0]
        s.note(f"    {name}: jaxequiv {t['jaxequiv'].fmt(1e3 / steps, 'ms/step')} = "
               f"{B * steps / t['jaxequiv'].median:.0f} tokens/s\n"
               f"          SAELens  {t['saelens'].fmt(1e3 / steps, 'ms/step')} = "
               f"{B * steps / t['saelens'].median:.0f} tokens/s\n          ratio {common.fmt_ratio(r)}")
        label = "TopK (k=32)" if name == "topk" else "ReLU-L1"
        s.row(f"{label} SAE training at GPT-2 width (d=768, K=12288, batch 4096) vs SAELens's trainer step, tokens/s",
              f"{r[0]:.2f}x", ">= 1.5x", r[0] >= 1.5, f"saelens_{name}_ratio")
    return ratios


# ---------------------------------------------------------------------------------------------------------
# (b) similarity


def extrapolate(t1: float, t2: float, m1: int, m2: int, m: int) -> float:
    """``t(m)`` from ``t(m1)``, ``t(m2)`` under ``t = a m + b m^2`` (a, b >= 0)."""
    if m1 == m2:
        return t1 * m / m1
    b = (t2 / m2 - t1 / m1) / (m2 - m1)
    b = max(b, 0.0)
    a = max(t1 / m1 - b * m1, 0.0)
    return a * m + b * m * m


def _rsatoolbox_rsa(Xs):
    import rsatoolbox

    data = [rsatoolbox.data.Dataset(X) for X in Xs]
    rdms = rsatoolbox.rdm.calc_rdm(data, method="correlation")
    return rsatoolbox.rdm.compare(rdms, rdms, method="spearman")


def _scipy_procrustes(Xs):
    """Procrustes distance of centred unit-norm representations, per pair with SciPy (no library peer)."""
    from scipy.linalg import orthogonal_procrustes

    Z = [(X - X.mean(0)) / np.linalg.norm(X - X.mean(0)) for X in Xs]
    out = np.empty((len(Z), len(Z)))
    for i, X in enumerate(Z):
        for j, Y in enumerate(Z):
            R, _ = orthogonal_procrustes(Y, X)
            out[i, j] = np.linalg.norm(X - Y @ R)
    return out


def bench_similarity(s: common.Session, quick: bool, sizes: list[int]) -> dict[str, float]:
    import jax
    import repsim

    from jaxequiv import similarity as sim

    m_full, n, d = (8, 128, 32) if quick else (REPRS, N, D)
    rng = np.random.default_rng(3)
    Xs = rng.standard_normal((m_full, n, d), dtype=np.float32)
    Xs += rng.standard_normal((1, n, d), dtype=np.float32)  # shared structure, so scores are not all ~0
    Xj = jax.device_put(Xs)
    X64 = Xs.astype(np.float64)
    peers = {
        "rsa": ("rsatoolbox", sim.RSA, _rsatoolbox_rsa, lambda v: v),
        "linear_cka": ("repsim", sim.LINEAR_CKA, lambda A: repsim.cka(list(A), kernel_type="linear",
                                                                      estimator="gretton"), lambda v: v),
        "cca": ("repsim", sim.CCA, lambda A: repsim.cca(list(A), summary_type="yanai"), None),
        "procrustes": ("scipy loop", sim.PROCRUSTES, _scipy_procrustes, lambda v: v),
    }
    sizes = [min(m, m_full) for m in sizes]
    s.note(f"(b) similarity, {m_full} representations n={n} d={d}: every side timed on the first m of them for m in "
           f"{sizes}, extrapolated to {m_full} with t = a m + b m^2 (float32 jaxequiv; the peers run in float64, "
           "as they convert)")
    ratios = {}
    for name, (peer, measure, ref, same) in peers.items():
        times = {}
        # repsim's CCA takes ~110 s for 2 representations here: one size, one run, extrapolated linearly (a lower
        # bound on its time at 64, whose work grows with the pairs, so the ratio printed is a lower bound too)
        slow = name == "cca" and not quick
        for m in sizes[:1] if slow else sizes:
            sub, sub64 = Xj[:m], X64[:m]
            t = s.time({"jaxequiv": lambda: jax.block_until_ready(sim.pairwise(measure, sub)),
                        peer: lambda: ref(sub64)}, runs=1 if slow else None, prefix=f"{name}@{m}/")
            times[m] = t
        m1, m2 = sizes[0], sizes[0] if slow else sizes[-1]
        full = {k: extrapolate(times[m1][k].median, times[m2][k].median, m1, m2, m_full) for k in ("jaxequiv", peer)}
        r = full[peer] / full["jaxequiv"]
        ours = np.asarray(sim.pairwise(measure, Xj[:m1]))
        theirs = np.asarray(ref(X64[:m1]))
        if same is None:  # CCA: compare canonical correlations through their squares' mean (Yanai)
            agree = "summaries differ by definition (mean rho vs mean rho^2)"
        else:
            agree = f"max |jaxequiv - {peer}| = {np.abs(ours - same(theirs)).max():.1e}"
        ratios[name] = r
        s.values[f"{name}_extrapolated_s"] = full
        s.note(f"    {name:11s} " + "; ".join(f"m={m}: jaxequiv {times[m]['jaxequiv'].fmt()}, {peer} "
                                              f"{times[m][peer].fmt()}" for m in times)
               + (" (one run, linear extrapolation: a lower bound)" if slow else "")
               + f"\n                -> {m_full} reps: jaxequiv {full['jaxequiv']:.3g} s, {peer} {full[peer]:.3g} s, "
               f"ratio {r:.2f}x ({agree})")
        label = {"rsa": "RSA (correlation RDMs, Spearman) vs rsatoolbox", "linear_cka": "linear CKA vs repsim",
                 "cca": "CCA vs repsim", "procrustes": "Procrustes vs a SciPy loop (no library peer installs)"}[name]
        s.row(f"{label}, all pairs of 64 representations (n=2048, d=512)", f"{r:.2f}x",
              ">= 10x" if name != "procrustes" else "-", r >= 10 if name != "procrustes" else None, f"{name}_ratio")
    return ratios


# ---------------------------------------------------------------------------------------------------------
# (c) language-model IG


def _residual_modules(n_layer: int) -> list[str]:
    """The HF modules whose INPUT is the residual stream after block i (block i+1's ln_1, then ln_f)."""
    return [f"transformer.h.{i + 1}.ln_1" for i in range(n_layer - 1)] + ["transformer.ln_f"]


def bench_lm(s: common.Session, quick: bool, steps: int, chunk: int | None) -> dict[str, float]:
    import jax
    import torch
    import transformers
    from captum.attr import LayerConductance

    from jaxequiv.adapters import torch as adapter
    from jaxequiv.contributions import contributions
    from jaxequiv.contributions import targets as T

    transformers.logging.set_verbosity_error()
    shape = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=64) if quick else {}
    B, L = (2, 16) if quick else (8, 128)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).eval()
    cfg = hf.config
    net = adapter.load(hf.state_dict(), "gpt2", cfg.to_dict()).network(logits="last")  # as logits_to_keep=1
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (B, L))
    tids = torch.from_numpy(ids)
    with torch.no_grad():
        pred = hf(tids, logits_to_keep=1).logits[:, -1].argmax(-1)
        emb = hf.transformer.wte(tids) + hf.transformer.wpe(torch.arange(L))[None]
    sites = [f"h.{i}" for i in range(cfg.n_layer)]
    modules = _residual_modules(cfg.n_layer)
    target = T.at_position(pred.numpy(), 0)  # the one position the network unembeds
    d, V = cfg.n_embd, cfg.vocab_size
    lin, att, head = 24 * cfg.n_layer * L * d * d, 4 * cfg.n_layer * L * L * d, 2 * d * V
    flops = (steps + 1) * B * (2 * lin + 3 * att + 2 * head)
    s.note(f"(c) GPT-2-shaped LM: {cfg.n_layer} layers, d={d}, vocab {V}, batch {B} x {L} tokens, IG {steps} steps "
           f"at {len(sites)} residual sites, float32; work {flops / 1e9:.0f} GFLOP per call (forward + activation "
           "gradients, LM head at the last position only)")

    def ours():
        return jax.block_until_ready(contributions(net, ids, sites, method="ig", steps=steps, step_chunk=chunk,
                                                   input_site="embed", target=target).values)

    # the all-layer PyTorch pass on a frozen copy
    frozen = transformers.GPT2LMHeadModel(cfg).eval()
    frozen.load_state_dict(hf.state_dict())
    for p in frozen.parameters():
        p.requires_grad_(False)
    acts, point = {}, {}
    for name, mod in zip(sites, modules):
        frozen.get_submodule(mod).register_forward_pre_hook(lambda m, a, n=name: acts.__setitem__(n, a[0]))
    frozen.transformer.drop.register_forward_hook(lambda m, a, o: point["e"])  # the residual stream before block 0
    rows = torch.arange(B)

    def all_layer():
        total, prev = {n: 0.0 for n in sites}, None
        for i in range(steps + 1):
            point["e"] = ((i / steps) * emb).requires_grad_(True)
            logit = frozen(tids, logits_to_keep=1).logits[rows, -1, pred]
            grads = torch.autograd.grad(logit.sum(), [acts[n] for n in sites])
            cur = {n: (acts[n].detach(), g) for n, g in zip(sites, grads)}
            if prev is not None:
                for n in sites:
                    (a0, g0), (a1, g1) = prev[n], cur[n]
                    total[n] = total[n] + (a1 - a0) * (g0 + g1) * 0.5
            prev = cur
        return total

    def lens_forward(e):  # Captum's forward: the residual stream before block 0 replaced by its input
        handle = hf.transformer.drop.register_forward_hook(lambda m, a, o: e)
        try:
            copies = e.shape[0] // B
            return hf(tids.repeat(copies, 1), logits_to_keep=1).logits[:, -1]
        finally:
            handle.remove()

    timed = [modules[0], modules[-1]]  # one IG pass per layer; the backward's length grows linearly with depth

    def captum():
        return [LayerConductance(lens_forward, hf.get_submodule(mod)).attribute(
            emb, baselines=torch.zeros_like(emb), target=pred, n_steps=steps, method="riemann_trapezoid",
            attribute_to_layer_input=True) for mod in timed]

    runs = min(s.runs, 3)
    t = s.time({"jaxequiv": ours, "torch_all_layer": all_layer}, runs=runs, prefix="lm_ig/")
    tc = s.time({"captum_2_layers": captum}, runs=1, prefix="lm_ig/")["captum_2_layers"]
    per_layer = tc.median / len(timed)
    fair = common.ratio(t["torch_all_layer"], t["jaxequiv"])
    capt = (per_layer * len(sites) / t["jaxequiv"].median,)
    mine, ref = ours(), all_layer()
    err = max(float(np.abs(np.asarray(mine[n]) - ref[n].numpy()).max() / np.abs(ref[n].numpy()).max()) for n in sites)
    s.note(f"    median of {runs} (Captum: one run on the first and last layer, x {len(sites) / len(timed):g} for "
           f"all {len(sites)}: {len(sites) * per_layer:.0f} s)\n"
           + "".join(f"    {k:17s} {v.fmt()} = {B / v.median:.2f} seq/s, {flops / v.median / 1e9:.0f} GFLOP/s\n"
                     for k, v in t.items())
           + f"    vs the all-layer PyTorch pass {common.fmt_ratio(fair)} (max relative difference {err:.1e})\n"
           f"    vs Captum LayerConductance x{len(sites)} {capt[0]:.1f}x")
    s.row("IG, 10 steps, 12 residual sites of a GPT-2-small-shaped LM (8 x 128 tokens), next-token logit, vs the "
          "all-layer PyTorch pass", f"{fair[0]:.2f}x", ">= 1.1x", fair[0] >= 1.1, "lm_ig_ratio")
    s.row("the same vs Captum LayerConductance per layer", f"{capt[0]:.1f}x", ">= 10x", capt[0] >= 10,
          "lm_captum_ratio")
    s.values["lm_captum_ratio"] = capt[0]
    s.values["lm_ig_gflops"] = {k: flops / v.median / 1e9 for k, v in t.items()}
    return {"fair": fair[0], "captum": capt[0]}


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=2, help="SAE training steps per timed call")
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--ig-chunk", type=int, default=5,
                   help="jaxequiv's step_chunk for (c): path points per pass (all 10 at once peak at ~15 GB at 8 x 128 "
                        "tokens, which with the rest of this process outgrows a 24 GB machine; 5: ~9 GB)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4],
                   help="representation counts timed for (b), extrapolated to 64 (64 alone: the full size)")
    p.add_argument("--only", choices=("sae", "sim", "lm"), nargs="+", default=("sae", "sim", "lm"))
    args = p.parse_args(argv)
    s = common.Session("peers", args)
    q = args.quick
    s.peaks()
    nan = float("nan")
    lens = bench_saelens(s, q, args.steps) if "sae" in args.only else {"topk": nan, "relu": nan}
    simr = bench_similarity(s, q, args.sizes) if "sim" in args.only else {}
    lm = bench_lm(s, q, 2 if q else args.ig_steps, args.ig_chunk) if "lm" in args.only else {"fair": nan}
    sim_ratio = min((simr[k] for k in ("linear_cka", "cca") if k in simr), default=nan)
    s.finish("peers", saelens_topk_ratio=round(lens["topk"], 2), saelens_relu_ratio=round(lens["relu"], 2),
             rsa_ratio=round(simr.get("rsa", nan), 3), sim_ratio=round(sim_ratio, 3), lm_ig_ratio=round(lm["fair"], 2))


if __name__ == "__main__":
    main()
