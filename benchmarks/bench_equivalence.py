"""Interpretive-equivalence workloads: jaxequiv against what an expert writes with scikit-learn / NumPy.

(a) The reference code's toy grid: 6 interpretations x 5 implementations, n = 1000, d = 256, 36 cells x 40
    rounds x 20 trials x 2 ridge fits (57,600 fits), each ``RidgeCV(alphas=(0.1, 1, 10))`` after
    ``train_test_split(test_size=0.1)``. Two conventions of the reference code:
    * primary (the fair ratio, ``grid_ratio``): a fresh split per fit (its ``left/`` toy code). No fit can
      be shared; jaxequiv's ``distinguishability_grid`` draws one split per trial, so a trial's two fits
      share one decomposition of X, and vmaps the trials.
    * secondary (``grid_fixed_ratio``): ``random_state=0`` for every fit (its ``center/`` code). Every score
      is then a function of the implementation pair, so jaxequiv scores the 30 x 30 pairs once and the
      trials index that matrix, while the reference refits 57,600 times: the ratio measures that reuse.
    The reference is timed on ``--ref-fits`` fits and scaled per fit; jaxequiv on ``--straps`` rounds per
    cell (fresh splits) and scaled per trial, on the whole grid (fixed split).
(b) Pairwise linear CKA over 64 representations (n = 2048, d = 512), all 64 x 64 pairs:
    * primary (``cka_ratio``): NumPy the expert's way: each representation centred and its Gram matrix
      normalised ONCE (``Xc @ Xc.T``, which NumPy computes with syrk), then every pair's HSIC at once as one
      matrix product of the flattened Grams;
    * secondary (``cka_pairloop_ratio``): the loop over pairs i <= j that rebuilds both Gram matrices per pair,
      as common CKA packages do (timed on ``--ref-pairs`` pairs, scaled).
    jaxequiv: ``similarity.pairwise(LINEAR_CKA, Xs)``. The largest difference between the sides is printed.

float32 on every side. Last line: ``RESULT equivalence grid_ratio=<x> grid_fixed_ratio=<y> cka_ratio=<z>
cka_pairloop_ratio=<w>``.
"""

from __future__ import annotations

import argparse

import numpy as np

import common

A, M = 6, 5
ROUNDS, TRIALS = 40, 20


def toy_reprs(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(A, M, n, d): implementations = shared latent of the interpretation, random linear embedding + noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((A, M, n, d), np.float32)
    for a in range(A):
        z = rng.normal(size=(n, 32))
        for m in range(M):
            out[a, m] = z @ rng.normal(size=(32, d)) / np.sqrt(32) + 0.5 * rng.normal(size=(n, d))
    return out


def bench_grid(s: common.Session, reprs, straps: int, ref_fits: int):
    import jax
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    from jaxequiv import similarity as sim
    from jaxequiv.equivalence import distinguishability_grid

    n = reprs.shape[2]
    fits = A * A * ROUNDS * TRIALS * 2
    rng = np.random.default_rng(1)
    pairs = [((rng.integers(A), rng.integers(M)), (rng.integers(A), rng.integers(M))) for _ in range(ref_fits)]

    def reference(random_state):
        def run():
            return [RidgeCV(alphas=(0.1, 1.0, 10.0)).fit(Xtr, Ytr).score(Xte, Yte)
                    for (a, x), (b, y) in pairs
                    for Xtr, Xte, Ytr, Yte in [train_test_split(reprs[a, x], reprs[b, y], test_size=0.1,
                                                                random_state=random_state)]]
        return run

    s.note(f"(a) toy grid: {fits} ridge fits in the reference (n={n}, d={reprs.shape[3]}), float32 inputs "
           "(sklearn computes in float64 internally; jaxequiv in float32)")
    trials_timed = A * A * straps * TRIALS
    t = s.time({"jaxequiv": lambda: jax.block_until_ready(distinguishability_grid(
                    reprs, key=jax.random.key(0), straps=straps, trials=TRIALS)),
                "sklearn": reference(None)}, prefix="grid_fresh/")
    fresh = common.ratio(t["sklearn"], t["jaxequiv"], fits / ref_fits, A * A * ROUNDS * TRIALS / trials_timed)
    s.note(f"    primary, a fresh split per fit (left/ code):\n"
           f"      jaxequiv {t['jaxequiv'].fmt()} for {trials_timed} trials ({2 * trials_timed} fits), scaled "
           f"to the grid: {t['jaxequiv'].median * A * A * ROUNDS * TRIALS / trials_timed:.1f} s\n"
           f"      sklearn  {t['sklearn'].fmt()} for {ref_fits} fits, scaled: "
           f"{t['sklearn'].median * fits / ref_fits:.1f} s\n      ratio    {common.fmt_ratio(fresh)}")
    s.row("toy-grid ridge workload vs sklearn RidgeCV loop, a fresh split per fit (reference `left/` code)",
          f"{fresh[0]:.1f}x", ">= 10x", fresh[0] >= 10, "grid_ratio")

    tr, te = train_test_split(np.arange(n), test_size=0.1, random_state=0)
    fixed = sim.ridge_measure(split=(tr, te))
    t = s.time({"jaxequiv": lambda: jax.block_until_ready(distinguishability_grid(
                    reprs, key=jax.random.key(0), measure=fixed, trials=TRIALS)),
                "sklearn": reference(0)}, prefix="grid_fixed/")
    fixed_r = common.ratio(t["sklearn"], t["jaxequiv"], fits / ref_fits, 1.0)
    S = np.asarray(sim.pairwise(fixed, reprs.reshape(A * M, n, -1)))
    err = max(abs(S[a * M + x, b * M + y] - r) for ((a, x), (b, y)), r in zip(pairs, reference(0)()))
    s.note(f"    secondary, one split random_state=0 (center/ code; jaxequiv scores the {A * M}^2 pairs once):\n"
           f"      jaxequiv {t['jaxequiv'].fmt()} for the whole grid\n"
           f"      sklearn  {t['sklearn'].fmt()} for {ref_fits} fits, scaled: "
           f"{t['sklearn'].median * fits / ref_fits:.1f} s\n      ratio    {common.fmt_ratio(fixed_r)}   "
           f"(max |R^2 jaxequiv - sklearn| over the timed fits: {err:.1e})")
    s.row("the same with one split (`random_state=0`, reference `center/` code: pair scores reused)",
          f"{fixed_r[0]:.0f}x", "-", None, "grid_fixed_ratio")
    return fresh[0], fixed_r[0]


def numpy_cka_all(Xs: np.ndarray) -> np.ndarray:
    """(m, m) linear CKA the expert's way: centre each X and normalise its Gram matrix once, then one product."""
    m = Xs.shape[0]
    G = np.empty((m, Xs.shape[1] ** 2), Xs.dtype)
    for i, X in enumerate(Xs):
        Xc = X - X.mean(0)
        K = Xc @ Xc.T
        G[i] = (K / np.linalg.norm(K)).reshape(-1)
    return G @ G.T


def numpy_cka_pair(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of one pair from its two centred Gram matrices, rebuilt per call (common CKA packages)."""
    def centred_gram(Z):
        K = Z @ Z.T
        mean = K.mean(0)
        return K - mean[None] - mean[:, None] + mean.mean()

    K, L = centred_gram(X), centred_gram(Y)
    return float(np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L)))


def bench_cka(s: common.Session, m: int, n: int, d: int, ref_pairs: int):
    import jax

    from jaxequiv import similarity as sim

    rng = np.random.default_rng(2)
    Xs = rng.standard_normal((m, n, d), dtype=np.float32)
    Xs += rng.standard_normal((1, n, d), dtype=np.float32)  # shared structure: CKA values away from 0
    Xj = jax.device_put(Xs)
    pairs = [(int(rng.integers(m)), int(rng.integers(m))) for _ in range(ref_pairs)]
    t = s.time({"jaxequiv": lambda: jax.block_until_ready(sim.pairwise(sim.LINEAR_CKA, Xj)),
                "numpy_grams_once": lambda: numpy_cka_all(Xs),
                "numpy_pair_loop": lambda: [numpy_cka_pair(Xs[i], Xs[j]) for i, j in pairs]}, prefix="cka/")
    ours, ref = np.asarray(sim.pairwise(sim.LINEAR_CKA, Xj)), numpy_cka_all(Xs)
    err = float(np.abs(ours - ref).max())
    n_pairs = m * (m + 1) // 2
    fair = common.ratio(t["numpy_grams_once"], t["jaxequiv"])
    loop = common.ratio(t["numpy_pair_loop"], t["jaxequiv"], n_pairs / ref_pairs, 1.0)
    s.note(f"(b) pairwise linear CKA, {m} reps (n={n}, d={d}), float32, max |jaxequiv - NumPy| = {err:.1e}:\n"
           f"    jaxequiv pairwise      {t['jaxequiv'].fmt()}\n"
           f"    NumPy, Grams once      {t['numpy_grams_once'].fmt()}\n"
           f"    NumPy, pair loop       {t['numpy_pair_loop'].fmt()} for {ref_pairs} pairs, scaled to {n_pairs}: "
           f"{t['numpy_pair_loop'].median * n_pairs / ref_pairs:.1f} s\n"
           f"    primary (Grams once)   {common.fmt_ratio(fair)}\n    secondary (pair loop)  {common.fmt_ratio(loop)}")
    s.row(f"pairwise linear CKA, {m} representations vs NumPy with each Gram matrix built once", f"{fair[0]:.2f}x",
          "-", None, "cka_ratio")
    s.row("the same vs the NumPy loop that rebuilds both Grams per pair", f"{loop[0]:.0f}x", "-", None,
          "cka_pairloop_ratio")
    return fair[0], loop[0]


def main(argv=None) -> None:
    p = common.add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--straps", type=int, default=1, help="rounds per cell timed for jaxequiv, fresh splits (40 = all)")
    p.add_argument("--ref-fits", type=int, default=8, help="sklearn fits timed (scaled per fit)")
    p.add_argument("--ref-pairs", type=int, default=4, help="NumPy CKA pairs timed in the pair loop (scaled)")
    args = p.parse_args(argv)
    s = common.Session("equivalence", args, torch=False)
    q = args.quick
    s.peaks()
    grid, grid_fixed = bench_grid(s, toy_reprs(*((100, 32) if q else (1000, 256))), args.straps,
                                  2 if q else args.ref_fits)
    cka, cka_loop = bench_cka(s, *((8, 128, 32) if q else (64, 2048, 512)), 2 if q else args.ref_pairs)
    s.finish("equivalence", grid_ratio=round(grid, 2), grid_fixed_ratio=round(grid_fixed, 1),
             cka_ratio=round(cka, 2), cka_pairloop_ratio=round(cka_loop, 1))


if __name__ == "__main__":
    main()
