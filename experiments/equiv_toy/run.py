"""Toy n-permutation detection (paper §3.1): congruity of RASP interpretations from two algorithm families.

    python -m experiments.equiv_toy.run [--quick] [--out DIR]

Steps: compile every subroutine with tracr (cached per process) -> the task data and each module's inputs
along each chain -> implementations of every subroutine ((a) function-preserving compiled variants, (b) small
transformers trained to imitate the subroutine's outputs and intermediate variables, all in one vmapped job)
-> representations of implementations of each interpretation (module representations concatenated along the
chain) -> congruity matrix and distinguishability grid, for (a) and (b) separately -> figures, results.json and
README.md in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

__all__ = ["ToyConfig", "QUICK", "run_experiment", "main"]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Sizes of one run (defaults: the full run; :data:`QUICK` for tests)."""

    n: int = 5  # sequence length; tokens in {0..n-1}, module vocabulary {0..n}
    n_data: int = 1000  # task inputs (half permutations)
    interpretations: tuple[str, ...] | None = None  # default: all of programs.INTERPRETATIONS
    variants: int = 4  # compiled variants per subroutine
    seeds: int = 4  # trained models per subroutine
    steps: int = 1500  # training steps of the vmapped job
    n_train: int = 3000  # training inputs per subroutine
    d_model: int = 32
    impls: int = 16  # implementations sampled per interpretation
    rounds: int = 40  # bootstrap rounds of the distinguishability test
    trials: int = 20  # trials per round
    repeats: int = 50  # n of the congruity estimator
    seed: int = 0


QUICK = ToyConfig(
    n=3, n_data=120, interpretations=("A1 sort>eq_index>all_ones", "A4 hist>all_ones"), variants=3, seeds=2,
    steps=100, n_train=300, d_model=16, impls=6, rounds=8, trials=10, repeats=10,
)


def _task_data(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, n]`` sequences over {0..n-1}: even rows random permutations, odd rows uniform draws."""
    perms = np.stack([rng.permutation(n) for _ in range(size)])
    uniform = rng.integers(0, n, size=(size, n))
    return np.where((np.arange(size) % 2 == 0)[:, None], perms, uniform)


def build_implementations(cfg: ToyConfig, log=print) -> dict:
    """Compile, vary and train; return the representation sets of every interpretation (see module docstring)."""
    import jax  # noqa: F401  (heavy imports stay inside the runner)

    from experiments.equiv_toy import implementations as impl
    from experiments.equiv_toy.programs import INTERPRETATIONS, evaluate_chain, subroutine
    from jaxequiv.models.tracr import compile_rasp
    from jaxequiv.models.transformer import TransformerConfig

    names = cfg.interpretations or tuple(INTERPRETATIONS)
    unknown = [a for a in names if a not in INTERPRETATIONS]
    if unknown:
        raise ValueError(f"unknown interpretations {unknown}; choose from {list(INTERPRETATIONS)}")
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n
    data = _task_data(n, cfg.n_data, rng)
    is_perm = np.array([sorted(x) == list(range(n)) for x in data.tolist()])
    subs = sorted({s for a in names for s in INTERPRETATIONS[a]})

    t0 = time.time()
    compiled = {s: compile_rasp(subroutine(s, n), range(n + 1), n, name=s) for s in subs}
    log(f"compiled {len(subs)} subroutines with tracr in {time.time() - t0:.1f}s")

    # Inputs of each module along each chain (ground-truth outputs of the previous module).
    chain_inputs = {}
    for a in names:
        outs = evaluate_chain(INTERPRETATIONS[a], data.tolist(), n)
        final = np.array([o[0] == 1 and len(set(o)) == 1 for o in outs[-1]])
        if not (final == is_perm).all():
            raise AssertionError(f"{a} does not decide the task")
        chain_inputs[a] = [data, *(np.array(o) for o in outs[:-1])]

    # (a) compiled variants and their outputs on the task's module inputs.
    variants, variant_acc = {}, {}
    for s in subs:
        variants[s] = impl.compiled_variants(compiled[s], cfg.variants, seed=cfg.seed + subs.index(s))

    # (b) trained imitators: training inputs = the module's inputs along chains + uniform sequences over {0..n}.
    train_ids, targets, probe_sets = [], [], []
    for s in subs:
        m = compiled[s]
        pools = [chain_inputs[a][i] for a in names for i, x in enumerate(INTERPRETATIONS[a]) if x == s]
        pool = np.concatenate([*pools, rng.integers(0, n + 1, size=(cfg.n_train, n))])
        xs = pool[rng.integers(len(pool), size=cfg.n_train)]
        ids = m.encode(xs.tolist())
        y = np.asarray(m(ids)).argmax(-1)
        y = np.array(m.output_values)[y].astype(np.int32)
        y[:, 0] = -1
        out_labels = _output_labels(m)
        train_ids.append(ids)
        targets.append(y)
        probe_sets.append(impl.intermediate_targets(m, ids, out_labels))
    n_layer = max(2, max(c.config.n_layer for c in compiled.values()))
    g_max = max(1, max(len(p) for p in probe_sets))
    probes = -np.ones((len(subs), g_max, cfg.n_train, n + 1), np.int32)
    blocks = np.zeros((len(subs), g_max), np.int32)
    for i, ps in enumerate(probe_sets):
        for g, (blk, vals) in enumerate(ps):
            probes[i, g], blocks[i, g] = vals, min(blk, n_layer - 1)
    tcfg = TransformerConfig(
        vocab_size=len(compiled[subs[0]].input_values), n_layer=n_layer, n_head=4, d_model=cfg.d_model,
        n_ctx=n + 1, d_mlp=4 * cfg.d_model, norm="none", activation="gelu", tie_embeddings=False,
        d_vocab_out=n + 1, causal=False,
    )
    t0 = time.time()
    trained, curve = impl.train_imitators(
        np.stack(train_ids), np.stack(targets), probes, blocks, tcfg, cfg.seeds, cfg.steps, seed=cfg.seed
    )
    log(f"trained {len(subs)} x {cfg.seeds} imitators in one vmapped job ({cfg.steps} steps) in {time.time() - t0:.1f}s")

    # Representations of every module implementation on the module's inputs along each chain.
    reprs = {"compiled": {}, "trained": {}}
    for a in names:
        for kind in reprs:
            reprs[kind][a] = []
        for i, s in enumerate(INTERPRETATIONS[a]):
            m = compiled[s]
            ids = m.encode(chain_inputs[a][i].tolist())
            ref = np.array(m.output_values)[np.asarray(m(ids)).argmax(-1)][:, 1:]
            for kind, net in (("compiled", variants[s]), ("trained", impl.substack(trained, subs.index(s) * cfg.seeds, cfg.seeds))):
                r, out = impl.reprs_and_outputs(net, ids)
                if kind == "compiled":
                    out = np.array(m.output_values)[out]
                acc = (out[:, :, 1:] == ref[None]).mean(axis=(1, 2))
                variant_acc.setdefault(kind, {}).setdefault(s, []).append(acc.tolist())
                reprs[kind][a].append(r)
    return {"names": names, "subroutines": subs, "reprs": reprs, "accuracy": variant_acc, "loss_curve": curve,
            "is_perm_rate": float(is_perm.mean())}


def _output_labels(m) -> set[str]:
    """Residual labels of the program's output space (the channels the unembedding reads)."""
    w = np.asarray(m.model.lm_head.kernel[...])
    return {m.residual_labels[j] for j in np.flatnonzero(np.abs(w).sum(1))}


def sample_implementations(reprs_by_module: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` implementations of one interpretation: each picks one implementation per module (a consistent
    path through the chain, distinct paths while there are enough) and concatenates the module representations.

    Args:
      reprs_by_module: per module of the chain, ``[K, N, D_module]`` representations of its ``K`` implementations.

    Returns:
      ``[count, N, sum(D_module)]``.
    """
    sizes = [r.shape[0] for r in reprs_by_module]
    total = int(np.prod(sizes))
    flat = rng.choice(total, size=count, replace=count > total)
    paths = np.stack(np.unravel_index(flat, sizes), 1)
    return np.stack([np.concatenate([r[k] for r, k in zip(reprs_by_module, path)], -1) for path in paths])


def ridge_matrix(sets: dict[str, np.ndarray], seed: int) -> dict[tuple[str, str], np.ndarray]:
    """``R2[(a, b)][i, j]`` = held-out ridge R^2 of implementation ``i`` of ``a`` predicting implementation ``j``
    of ``b`` (sklearn-RidgeCV-equivalent score; one 90/10 split per predicting implementation, shared by all its
    targets so within- and across-interpretation fits are paired)."""
    import jax

    from jaxequiv import similarity as sim

    key = jax.random.PRNGKey(seed)
    return {(a, b): np.asarray(sim.pairwise(sim.RIDGE, sets[a], sets[b], key=key)) for a in sets for b in sets}


def distinguishability_grid(r2, names, rounds: int, trials: int, rng: np.random.Generator, z: float = 1.96):
    """Fig. 2 (left) test, as in the reference ``point_test``: per ordered pair (a, b), ``rounds`` rounds of
    ``trials`` draws of implementations X != X' of ``a`` and Y of ``b``; a round rejects "indistinguishable" when
    ``p - z sqrt(p (1 - p) / trials) > 0.5`` with ``p`` the fraction of trials where R2(X->X') > R2(X->Y).
    Returns the fraction of rejecting rounds, ``[A, A]``."""
    grid = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        m = r2[(a, a)].shape[0]
        x = rng.integers(m, size=(rounds, trials))
        x2 = (x + rng.integers(1, m, size=(rounds, trials))) % m  # a different implementation of a
        for j, b in enumerate(names):
            y = rng.integers(r2[(a, b)].shape[1], size=(rounds, trials))
            if a == b:
                y = np.where(y == x, (y + 1) % m, y)  # compare with a third implementation, not X itself
            p = (r2[(a, a)][x, x2] > r2[(a, b)][x, y]).mean(1)
            grid[i, j] = (p - z * np.sqrt(p * (1 - p) / trials) > 0.5).mean()
    return grid


def congruity_matrix(r2, names, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """CONGRUITY (Algorithm 1) with sampled implementations: per repeat, draw h1, h1* of ``a`` and h2, h2* of
    ``b``; s += [R2(h1->h1*) <= R2(h1->h2)] + [R2(h2->h2*) <= R2(h2->h1)] (the other model's representation is at
    least as predictable as one's own implementation's); score ``1 - |s/n - 1|``. ``[A, A]``, symmetric."""
    out = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ma, mb = r2[(a, a)].shape[0], r2[(b, b)].shape[0]
            h1, h2 = rng.integers(ma, size=repeats), rng.integers(mb, size=repeats)
            h1s = (h1 + rng.integers(1, ma, size=repeats)) % ma
            h2s = (h2 + rng.integers(1, mb, size=repeats)) % mb
            if a == b:  # h2 must differ from h1 for a meaningful comparison
                h2 = np.where(h2 == h1, (h2 + 1) % ma, h2)
                h2s = np.where(h2s == h2, (h2s + 1) % mb, h2s)
            s = (r2[(a, a)][h1, h1s] <= r2[(a, b)][h1, h2]).sum() + (r2[(b, b)][h2, h2s] <= r2[(b, a)][h2, h1]).sum()
            out[i, j] = 1 - abs(s / repeats - 1)
    return out


def family_means(matrix: np.ndarray, names, families: dict[str, str]) -> dict[str, float]:
    """Mean off-diagonal value within the sorting family, within the counting family and across families."""
    fam = [families[a] for a in names]
    cells = {"within sorting": [], "within counting": [], "across families": []}
    for i in range(len(names)):
        for j in range(len(names)):
            if i == j:
                continue
            key = f"within {fam[i]}" if fam[i] == fam[j] else "across families"
            cells[key].append(matrix[i, j])
    return {k: (float(np.mean(v)) if v else float("nan")) for k, v in cells.items()}


def _heatmaps(path: str, panels: list[tuple[str, np.ndarray]], names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = [a.split()[0] for a in names]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (title, mat) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(short)), short)
        ax.set_yticks(range(len(short)), short)
        for i in range(len(short)):
            for j in range(len(short)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.6 else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_experiment(cfg: ToyConfig, out_dir: str, log=print) -> dict:
    """Run the whole experiment; write ``results.json``, ``congruity.png``, ``distinguishability.png`` and
    ``README.md`` (numbers beside the paper's) into ``out_dir``; return the results."""
    from experiments.equiv_toy.programs import FAMILIES, INTERPRETATIONS

    t_start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    built = build_implementations(cfg, log=log)
    names = built["names"]
    rng = np.random.default_rng(cfg.seed + 1)
    results = {"config": dataclasses.asdict(cfg), "interpretations": {a: list(INTERPRETATIONS[a]) for a in names},
               "families": {a: FAMILIES[a] for a in names}, "kinds": {}}
    panels_c, panels_d = [], []
    for kind, by_module in built["reprs"].items():
        sets = {a: sample_implementations(by_module[a], cfg.impls, rng) for a in names}
        r2 = ridge_matrix(sets, cfg.seed)
        grid = distinguishability_grid(r2, names, cfg.rounds, cfg.trials, rng)
        cong = congruity_matrix(r2, names, cfg.repeats, rng)
        acc = {s: float(np.mean(v)) for s, v in built["accuracy"][kind].items()}
        results["kinds"][kind] = {
            "congruity": cong.tolist(), "distinguishability": grid.tolist(),
            "congruity_family_means": family_means(cong, names, FAMILIES),
            "distinguishability_family_means": family_means(grid, names, FAMILIES),
            "mean_r2_within": float(np.mean([r2[(a, a)][~np.eye(cfg.impls, dtype=bool)].mean() for a in names])),
            "module_accuracy_vs_tracr": acc, "repr_dims": {a: int(sets[a].shape[-1]) for a in names},
        }
        panels_c.append((f"congruity ({kind} implementations)", cong))
        panels_d.append((f"distinguishability rate ({kind})", grid))
        log(f"[{kind}] congruity family means: {results['kinds'][kind]['congruity_family_means']}")
    results["final_training_loss"] = np.asarray(built["loss_curve"][-1]).tolist()
    results["seconds"] = round(time.time() - t_start, 1)
    _heatmaps(os.path.join(out_dir, "congruity.png"), panels_c, names)
    _heatmaps(os.path.join(out_dir, "distinguishability.png"), panels_d, names)
    _write_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    log(f"done in {results['seconds']}s -> {out_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (~1 min) for tests")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(QUICK if args.quick else ToyConfig(), seed=args.seed)
    run_experiment(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
