"""Benchmark: the interpretive-equivalence workloads, jaxequiv vs the reference approach, in one process.

(a) Toy-grid workload of the reference code: 6 interpretations x 5 implementations, n = 1000, d = 256,
    36 cells x 40 rounds x 20 trials x 2 ridge fits (57,600 fits). Reference: scikit-learn
    ``RidgeCV(alphas=(0.1, 1, 10))`` + ``train_test_split(test_size=0.1)`` per fit in a Python loop, under both
    split conventions of the reference code: a fresh split per fit (``left/``) and ``random_state=0`` (``center/``).
    jaxequiv: ``distinguishability_grid``; with fresh splits both fits of a trial share one split and one
    decomposition of X; with the fixed split (``ridge_measure(split=(train, test))``, sklearn's own indices) each
    of the 30 x 30 implementation pairs is scored once and the trials index that matrix (same numbers: the
    benchmark prints the largest difference from sklearn on the timed fits). ``grid_ratio`` is the fixed-split
    figure; the fresh-split ratio is printed above it.
(b) Pairwise linear CKA over 64 representations (n = 2048, d = 512): ``similarity.pairwise`` vs a NumPy loop
    over pairs that builds and centres both Gram matrices per pair, as common CKA packages do.

Both sides are timed on the same inputs after a warm-up, median of ``--repeats`` runs. Because the full
workloads take hours for the reference, each side is timed on a stated slice and scaled linearly:
jaxequiv on a grid with ``--straps`` rounds per cell (720 trials per round over the 36 cells), the reference on
``--ref-fits`` fits and ``--ref-pairs`` CKA pairs. ``--straps 40`` times the full grid.
Last line: ``RESULT equivalence grid_ratio=<x> cka_ratio=<y>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

A, M, N, D = 6, 5, 1000, 256
ROUNDS, TRIALS = 40, 20
FITS = A * A * ROUNDS * TRIALS * 2
CKA_M, CKA_N, CKA_D = 64, 2048, 512


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def toy_reprs(seed: int = 0) -> np.ndarray:
    """(A, M, N, D): implementations = shared latent of the interpretation, random linear embedding + noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((A, M, N, D), np.float32)
    for a in range(A):
        z = rng.normal(size=(N, 32))
        for m in range(M):
            out[a, m] = z @ rng.normal(size=(32, D)) / np.sqrt(32) + 0.5 * rng.normal(size=(N, D))
    return out


def bench_grid(reprs, straps: int, repeats: int, ref_fits: int):
    """Both split conventions of the reference code; returns (fixed-split ratio, per-trial-split ratio)."""
    import jax
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    from jaxequiv import similarity as sim
    from jaxequiv.equivalence import distinguishability_grid

    rng = np.random.default_rng(1)
    pairs = [((rng.integers(A), rng.integers(M)), (rng.integers(A), rng.integers(M))) for _ in range(ref_fits)]

    def reference(random_state):
        def run():
            return [
                RidgeCV(alphas=(0.1, 1.0, 10.0)).fit(Xtr, Ytr).score(Xte, Yte)
                for (a, x), (b, y) in pairs
                for Xtr, Xte, Ytr, Yte in [train_test_split(reprs[a, x], reprs[b, y], test_size=0.1, random_state=random_state)]
            ]

        return run

    print(f"(a) toy grid, {FITS} ridge fits in the reference (n={N}, d={D}):")
    ratios = []
    # 1. a fresh random split per fit (left/encoding.py): jaxequiv draws one split per trial (its two fits share
    #    it and one decomposition of X); timed on `straps` rounds per cell and scaled.
    def per_trial():
        jax.block_until_ready(distinguishability_grid(reprs, key=jax.random.key(0), straps=straps, trials=TRIALS))

    t_ours = _median_time(per_trial, repeats)
    trials_timed = A * A * straps * TRIALS
    ours_full = t_ours * (A * A * ROUNDS * TRIALS) / trials_timed
    t_ref = _median_time(reference(None), repeats)
    ref_full = t_ref / ref_fits * FITS
    ratios.append(ref_full / ours_full)
    print("    fresh split per fit (left/ code):")
    print(f"      jaxequiv  {t_ours:.2f} s for {trials_timed} trials ({2 * trials_timed} fits) -> {ours_full:.1f} s full grid")
    print(f"      sklearn   {t_ref:.2f} s for {ref_fits} fits -> {ref_full:.1f} s full grid ({1e3 * t_ref / ref_fits:.1f} ms/fit)")
    print(f"      ratio     {ratios[-1]:.1f}x")
    # 2. train_test_split(random_state=0) for every fit (center/ code): the same split, so every score is a
    #    function of the pair; jaxequiv scores the 30 x 30 pairs once and runs the full grid on that matrix.
    tr, te = train_test_split(np.arange(N), test_size=0.1, random_state=0)
    fixed = sim.ridge_measure(split=(tr, te))

    def shared():
        jax.block_until_ready(distinguishability_grid(reprs, key=jax.random.key(0), measure=fixed, trials=TRIALS))

    t_ours = _median_time(shared, repeats)
    t_ref = _median_time(reference(0), repeats)
    ref_full = t_ref / ref_fits * FITS
    S = np.asarray(sim.pairwise(fixed, reprs.reshape(A * M, N, D)))
    err = max(abs(S[a * M + x, b * M + y] - r) for ((a, x), (b, y)), r in zip(pairs, reference(0)()))
    ratios.append(ref_full / t_ours)
    print("    one split, random_state=0 (center/ code):")
    print(f"      jaxequiv  {t_ours:.2f} s full grid ({A * M}^2 pair scores, then {ROUNDS * TRIALS * A * A} trials)")
    print(f"      sklearn   {t_ref:.2f} s for {ref_fits} fits -> {ref_full:.1f} s full grid ({1e3 * t_ref / ref_fits:.1f} ms/fit)")
    print(f"      ratio     {ratios[-1]:.1f}x   (max |R^2 jaxequiv - sklearn| over the timed fits: {err:.1e})")
    return ratios[1], ratios[0]


def bench_cka(repeats: int, ref_pairs: int):
    import jax

    from jaxequiv import similarity as sim

    rng = np.random.default_rng(2)
    Xs = rng.normal(size=(CKA_M, CKA_N, CKA_D)).astype(np.float32)
    Xj = jax.device_put(Xs)

    def ours():
        jax.block_until_ready(sim.pairwise(sim.LINEAR_CKA, Xj))

    t_ours = _median_time(ours, repeats)

    def gram_cka(X, Y):
        def centred_gram(Z):
            K = Z @ Z.T
            mean = K.mean(0)
            return K - mean[None] - mean[:, None] + mean.mean()

        K, L = centred_gram(X), centred_gram(Y)
        return np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))

    pairs = [(rng.integers(CKA_M), rng.integers(CKA_M)) for _ in range(ref_pairs)]

    def reference():
        for i, j in pairs:
            gram_cka(Xs[i], Xs[j])

    t_ref = _median_time(reference, max(1, min(repeats, 3)))
    n_pairs = CKA_M * (CKA_M + 1) // 2  # a loop over i <= j
    ref_full = t_ref / ref_pairs * n_pairs
    print(f"(b) pairwise linear CKA, {CKA_M} reps (n={CKA_N}, d={CKA_D}), {n_pairs} pairs:")
    print(f"    jaxequiv  {t_ours:.2f} s (all pairs, one call)")
    print(f"    numpy     {t_ref:.2f} s for {ref_pairs} pairs -> {ref_full:.1f} s for {n_pairs} pairs")
    print(f"    ratio     {ref_full / t_ours:.1f}x")
    return ref_full / t_ours


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--straps", type=int, default=1, help="rounds per cell timed for jaxequiv (40 = full grid)")
    p.add_argument("--ref-fits", type=int, default=8, help="sklearn fits timed (scaled per fit)")
    p.add_argument("--ref-pairs", type=int, default=4, help="NumPy CKA pairs timed (scaled per pair)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    grid_ratio, per_trial_ratio = bench_grid(toy_reprs(), args.straps, args.repeats, args.ref_fits)
    cka_ratio = bench_cka(args.repeats, args.ref_pairs)
    print(f"grid_ratio below is the random_state=0 convention; with a fresh split per fit: {per_trial_ratio:.1f}x")
    print(f"RESULT equivalence grid_ratio={grid_ratio:.1f} cka_ratio={cka_ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
