"""Sensitivity of the toy congruity to the sequence length n and the sample size N, and why the distinguishability
grid does not separate the algorithm families where congruity does.

    python -m experiments.equiv_toy.sensitivity                  # the full sweep -> results/sensitivity/
    python -m experiments.equiv_toy.sensitivity --ns 5 6         # only these n (each n: its own part file)
    python -m experiments.equiv_toy.sensitivity --merge          # results.json + figures from the part files
    python -m experiments.equiv_toy.sensitivity --quick          # tiny run for the tests

One factor at a time around the default (n = 5, N = 100): for each n the trained imitators are built once
(:func:`experiments.equiv_toy.run.build_implementations`, ``n_data`` = the largest N) and each N uses a random
subset of the task inputs. Every score uses one fixed ridge split per setting (``ridge_measure(split=seed)``, the
reference's ``random_state`` convention), so each (predictor, target) pair has one score and the grid's and
congruity's win probabilities are exact averages over the sampled implementations.

The grid explanation, per ordered pair (a, b) of interpretations:

* ``grid_win``: the probability that one trial of the grid finds ``R²(X→X') > R²(X→Y)`` (X ≠ X' of a, Y of b),
  exact over the sampled implementations; the grid's expected rate is then ``P(Binomial(T, grid_win)`` passes the
  one-sided z-test), its power at ``T`` trials.
* ``congruity_win``: the probability that the base (tracr chain) of a predicts its own implementation better than
  one of b; the expected congruity of (a, b) is ``1 - |w_ab + w_ba - 1|``.
* the number of module blocks the grid's two implementations share exactly (the same imitator of the same module
  on the same inputs), and ``grid_win`` over the within-pairs that share none.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from math import comb

import numpy as np

from experiments.equiv_toy import run as toy
from jaxequiv.io.figures import interval_yerr, save_figure, subplots
from jaxequiv.io.files import write_json

__all__ = ["SensitivityConfig", "QUICK", "grid_power", "shared_blocks", "analyse", "run_n", "merge", "main"]

FAMILY_KEYS = ("within sorting", "within counting", "across families")


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """The default point and training sizes (``toy``) and the values of n and N swept one at a time."""

    toy: toy.ToyConfig = toy.ToyConfig()
    ns: tuple[int, ...] = (5, 6, 7, 8, 9)
    sizes: tuple[int, ...] = (100, 300, 1000)  # N < 100: a 10% ridge test split of < 10 inputs (degenerate R²)
    build_size: int = 1000  # task inputs of every build; each N scores a random subset of them
    grid_max_size: int = 300  # the A*M x A*M implementation score matrix only up to this N (cost ~ N^2)
    n_boot: int = 1000


QUICK = SensitivityConfig(
    toy=dataclasses.replace(toy.QUICK, n_data=60, impls=8, rounds=40, straps=100), ns=(3,), sizes=(60,),
    build_size=60, grid_max_size=60, n_boot=200)


def grid_power(win: np.ndarray, trials: int, z: float = 1.96) -> np.ndarray:
    """Expected rejection rate of the grid's z-test when each of ``trials`` trials succeeds with probability
    ``win``: ``P(p - z sqrt(p (1 - p) / T) > 0.5)`` for ``p = Binomial(T, win) / T``."""
    k = np.arange(trials + 1)
    p = k / trials
    passes = p - z * np.sqrt(p * (1 - p) / trials) > 0.5
    win = np.asarray(win, np.float64)[..., None]
    pmf = np.array([comb(trials, int(j)) for j in k]) * win**k * (1 - win) ** (trials - k)
    return (pmf * passes).sum(-1)


def shared_blocks(blocks_x: list[bytes], blocks_y: list[bytes]) -> int:
    """How many module blocks two implementations share exactly (multiset intersection of block digests)."""
    rest = list(blocks_y)
    n = 0
    for b in blocks_x:
        if b in rest:
            rest.remove(b)
            n += 1
    return n


def _wins(a_scores: np.ndarray, b_scores: np.ndarray) -> float:
    """P(a > b) + P(a == b) / 2 over all pairs of the two score lists."""
    d = a_scores[:, None] - b_scores[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def _family_of(names, families):
    fam = [families[a] for a in names]
    return lambda i, j: f"within {fam[i]}" if fam[i] == fam[j] else "across families"


def _boot_family_means(indicators: dict, group, n_boot: int, rng) -> dict:
    """95% bootstrap intervals of congruity's family means (rounds resampled within every pair)."""
    boots = {k: [] for k in FAMILY_KEYS}
    for (i, j), ind in indicators.items():
        r = len(ind)
        idx = rng.integers(r, size=(n_boot, r))
        s = ind[idx].sum((1, 2)) / r
        boots[group(i, j)].append(1 - np.abs(s - 1))
    return {k: [float(np.percentile(np.mean(v, 0), q)) for q in (2.5, 97.5)] if v else [np.nan, np.nan]
            for k, v in boots.items()}


def analyse(reprs: dict, paths: dict, bases: dict, names, families, cfg: toy.ToyConfig, *, grid: bool, n_boot: int,
            seed: int) -> dict:
    """Congruity (with family-mean bootstrap intervals) and, if ``grid``, the distinguishability grid and its
    decomposition, for one setting.

    Args:
      reprs: per interpretation, per module ``[K, N, D_module]`` representations of the K imitators; paths: per
        interpretation ``[M, modules]`` the sampled implementations; bases: per interpretation ``[N, B]``.
    """
    import jax

    from jaxequiv import equivalence as eq
    from jaxequiv import similarity as sim

    measure = sim.ridge_measure(split=seed)
    sets = {a: np.stack([np.concatenate([r[k] for r, k in zip(reprs[a], p)], -1) for p in paths[a]]) for a in names}
    X = toy.equal_width([sets[a] for a in names]).astype(np.float32)  # [A, M, N, D]
    B = toy.equal_width([bases[a] for a in names]).astype(np.float32)  # [A, N, D]
    A, M = X.shape[:2]
    group = _family_of(names, families)
    key = jax.random.key(seed)
    cong = np.eye(A)
    indicators = {}
    for i in range(A):
        for j in range(i + 1, A):
            r = eq.congruity(B[i], X[i], B[j], X[j], key=jax.random.fold_in(key, i * A + j), n_rounds=cfg.rounds,
                             measure=measure)
            cong[i, j] = cong[j, i] = r.score
            indicators[(i, j)] = np.asarray(r.indicators)
    out = {"congruity": cong.tolist(),
           "congruity_family_means": toy.family_means(cong, names, families),
           "congruity_family_ci95": _boot_family_means(indicators, group, n_boot, np.random.default_rng(seed))}
    # congruity's comparison, exactly: base a -> own implementations vs base a -> b's implementations
    base_scores = np.asarray(sim.pairwise(measure, B, X.reshape(A * M, *X.shape[2:]))).reshape(A, A, M)
    w_cong = np.array([[_wins(base_scores[a, a], base_scores[a, b]) for b in range(A)] for a in range(A)])
    out["congruity_win"] = w_cong.tolist()
    out["congruity_expected"] = (1 - np.abs(w_cong + w_cong.T - 1)).tolist()
    if not grid:
        return out
    g = np.asarray(eq.distinguishability_grid(X, key=jax.random.fold_in(key, A * A), straps=cfg.straps,
                                              trials=cfg.trials, distinct=True, measure=measure))
    S = np.asarray(sim.pairwise(measure, X.reshape(A * M, *X.shape[2:]))).reshape(A, M, A, M)
    digests = {a: [[r[k].tobytes() for r, k in zip(reprs[a], p)] for p in paths[a]] for a in names}
    w_grid, w_grid_unshared = np.zeros((A, A)), np.zeros((A, A))
    shared_within, within_by_shared = [], {}
    for a in range(A):
        off = ~np.eye(M, dtype=bool)
        sh = np.array([[shared_blocks(digests[names[a]][x], digests[names[a]][y]) for y in range(M)] for x in range(M)])
        shared_within.append(float(sh[off].mean()))
        for s in np.unique(sh[off]):
            within_by_shared.setdefault(int(s), []).extend(S[a, :, a][off & (sh == s)].tolist())
        for b in range(A):
            wins, wins0 = [], []
            for x in range(M):
                others = np.flatnonzero(off[x])
                d = S[a, x, a, others][:, None] - S[a, x, b][None, :]
                if b == a:  # Y is any implementation of a other than X (the grid draws Y independently of X')
                    d = d[:, others]
                v = (d > 0) + 0.5 * (d == 0)
                wins.append(v.mean())
                unshared = sh[x, others] == 0
                if unshared.any():
                    wins0.append(v[unshared].mean())
            w_grid[a, b] = np.mean(wins)
            w_grid_unshared[a, b] = np.mean(wins0) if wins0 else np.nan
    across_scores = {k: [] for k in FAMILY_KEYS}
    for a in range(A):
        for b in range(A):
            if a != b:
                across_scores[group(a, b)].extend(S[a, :, b].ravel().tolist())
    out.update({
        "distinguishability": g.tolist(),
        "distinguishability_family_means": toy.family_means(g, names, families),
        "grid_win": w_grid.tolist(),
        "grid_win_no_shared_blocks": w_grid_unshared.tolist(),
        "grid_expected": grid_power(w_grid, cfg.trials).tolist(),
        "grid_graded": (1 - np.abs(w_grid + w_grid.T - 1)).tolist(),
        "shared_blocks_within": dict(zip(names, shared_within)),
        "r2_within_by_shared_blocks": {s: [float(np.mean(v)), len(v)] for s, v in sorted(within_by_shared.items())},
        "r2_within": float(np.mean([S[a, x, a, y] for a in range(A) for x in range(M) for y in range(M) if x != y])),
        "r2_across": {k: float(np.mean(v)) for k, v in across_scores.items() if v},
    })
    for k in ("grid_win", "grid_win_no_shared_blocks", "grid_expected", "grid_graded", "congruity_win",
              "congruity_expected"):
        out[f"{k}_family_means"] = toy.family_means(np.array(out[k]), names, families)
    return out


def run_n(cfg: SensitivityConfig, n: int, log=print, built: dict | None = None) -> dict:
    """Build the trained imitators at sequence length ``n`` (``build_size`` task inputs; or take ``built``, the
    output of :func:`experiments.equiv_toy.run.build_implementations` for these settings) and analyse every N of
    the sweep at this n (only the default N away from the default n)."""
    from experiments.equiv_toy.programs import FAMILIES

    t0 = time.time()
    tcfg = dataclasses.replace(cfg.toy, n=n, n_data=cfg.build_size)
    built = built or toy.build_implementations(tcfg, log=log)
    names = built["names"]
    rng = np.random.default_rng(tcfg.seed + 1)
    paths = {a: toy.sample_paths([r.shape[0] for r in built["reprs"]["trained"][a]], tcfg.impls, rng) for a in names}
    sizes = cfg.sizes if n == cfg.toy.n else (cfg.toy.n_data,)
    out = {"n": n, "config": dataclasses.asdict(cfg), "names": list(names), "timings_s": dict(built["timings_s"]),
           "module_accuracy_vs_tracr": {s: float(np.mean(v)) for s, v in built["accuracy"]["trained"].items()},
           "settings": {}}
    for N in sizes:
        t1 = time.time()
        rows = np.sort(rng.choice(tcfg.n_data, size=N, replace=False))
        reprs = {a: [r[:, rows] for r in built["reprs"]["trained"][a]] for a in names}
        bases = {a: built["reprs"]["base"][a][rows] for a in names}
        res = analyse(reprs, paths, bases, names, FAMILIES, tcfg, grid=N <= cfg.grid_max_size, n_boot=cfg.n_boot,
                      seed=tcfg.seed + 2)
        out["settings"][str(N)] = res
        out["timings_s"][f"scoring N={N}"] = round(time.time() - t1, 1)
        log(f"n={n} N={N}: congruity family means {res['congruity_family_means']} "
            f"({out['timings_s'][f'scoring N={N}']:.0f}s)")
    out["timings_s"]["total"] = round(time.time() - t0, 1)
    return out


def _figure(path: str, res: dict) -> None:
    default = res["config"]["toy"]
    by_n = {p["n"]: p for p in res["parts"]}
    fig, axes = subplots(1, 3, figsize=(14, 3.8))
    sweeps = [("n", [(p["n"], p["settings"][str(default["n_data"])]) for p in res["parts"]]),
              ("N", [(int(N), s) for N, s in by_n[default["n"]]["settings"].items()])]
    for ax, (label, pts) in zip(axes[:2], sweeps):
        for k, c in zip(FAMILY_KEYS, ("C0", "C1", "C3")):
            xs = [x for x, _ in pts]
            m = np.array([s["congruity_family_means"][k] for _, s in pts])
            ci = np.array([s["congruity_family_ci95"][k] for _, s in pts])
            ax.errorbar(xs, m, yerr=interval_yerr(m, ci), marker="o", color=c, label=k, capsize=3)
        ax.set_xlabel(label + (" (sequence length)" if label == "n" else " (task inputs)"))
        ax.set_ylabel("mean congruity, trained imitators")
        ax.set_ylim(-0.02, 1.02)
        if label == "N":
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax = axes[2]
    w = np.linspace(0.5, 1, 101)
    ax.plot(w, grid_power(w, default["trials"]), "k-", label=f"grid rate at T={default['trials']} trials")
    ax.plot(w, 2 * (1 - w), "k--", label="congruity 1-|2w-1|")
    s = by_n[default["n"]]["settings"][str(default["n_data"])]
    for k, c in zip(FAMILY_KEYS, ("C0", "C1", "C3")):
        ax.plot(s["grid_win_family_means"][k], s["distinguishability_family_means"][k], "o", color=c,
                label=f"grid, {k}")
        ax.plot(s["congruity_win_family_means"][k], s["congruity_family_means"][k], "s", color=c, mfc="none",
                label=f"congruity, {k}")
    ax.set_xlabel("win probability w (own closer than other)")
    ax.set_ylabel("statistic")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def merge(cfg: SensitivityConfig, out_dir: str, started: float | None = None) -> dict:
    """Combine the part files of ``out_dir`` into ``results.json`` and ``sensitivity.png``."""
    from jaxequiv.io.provenance import provenance

    parts = sorted((json.load(open(f)) for f in glob.glob(os.path.join(out_dir, "part_n*.json"))),
                   key=lambda p: p["n"])
    if not any(p["n"] == cfg.toy.n for p in parts):
        raise SystemExit(f"no part for the default n = {cfg.toy.n} in {out_dir}: run --ns {cfg.toy.n} first")
    res = {"config": dataclasses.asdict(cfg), "ns_run": [p["n"] for p in parts],
           "parts": parts,
           "provenance": provenance(cfg, seeds=[cfg.toy.seed], started=started or time.time()),
           "timings_s": {f"n={p['n']}": p["timings_s"]["total"] for p in parts}}
    write_json(os.path.join(out_dir, "results.json"), res)
    _figure(os.path.join(out_dir, "sensitivity.png"), res)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--ns", type=int, nargs="+", default=None, help="sequence lengths to run (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="N to score at the default n "
                        "(default: all; each a subset of the same build_size task inputs)")
    parser.add_argument("--merge", action="store_true", help="only merge the part files into results.json")
    parser.add_argument("--out", default=None, help="output folder (default: results/sensitivity[_quick] here)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else SensitivityConfig()
    if args.sizes:
        if max(args.sizes) > cfg.build_size:
            raise SystemExit(f"--sizes must be at most build_size = {cfg.build_size}, got {args.sizes}")
        cfg = dataclasses.replace(cfg, sizes=tuple(args.sizes))
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, "results", "sensitivity_quick" if args.quick else "sensitivity")
    os.makedirs(out, exist_ok=True)
    started = time.time()
    if not args.merge:
        for n in args.ns or cfg.ns:
            write_json(os.path.join(out, f"part_n{n}.json"), run_n(cfg, n))
    merge(cfg, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
