"""Toy n-permutation detection (paper §3.1): congruity of RASP interpretations from two algorithm families.

    python -m experiments.equiv_toy.run [--quick] [--out DIR]

Steps: compile every subroutine with tracr (cached per process) -> the task data and each module's inputs
along each chain -> implementations of every subroutine ((a) function-preserving compiled variants, (b) small
transformers trained to imitate the subroutine's outputs and intermediate variables, all in one vmapped job)
-> representations of implementations of each interpretation (module representations concatenated along the
chain) -> distinguishability grid and CONGRUITY matrix from :mod:`jaxequiv.equivalence` (base model of an
interpretation: its tracr chain), for (a) and (b) separately -> figures and results.json in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from jaxequiv.io.figures import save_figure, subplots
from jaxequiv.io.files import write_json

__all__ = ["ToyConfig", "QUICK", "compile_subroutines", "build_implementations", "sample_implementations",
           "sample_paths", "equal_width", "score", "family_means", "run_experiment", "main"]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Sizes of one run (defaults: the full run; :data:`QUICK` for tests)."""

    n: int = 5  # sequence length; tokens in {0..n-1}, module vocabulary {0..n}
    n_data: int = 100  # task inputs (half permutations): the N stimuli of every representation
    interpretations: tuple[str, ...] | None = None  # default: all of programs.INTERPRETATIONS
    variants: int = 5  # compiled variants per subroutine (variant 0 = tracr's model, the base of congruity)
    seeds: int = 4  # trained models per subroutine
    steps: int = 600  # training steps of the vmapped job
    n_train: int = 2000  # training inputs per subroutine
    batch_size: int = 64
    d_model: int = 32
    impls: int = 16  # implementations sampled per interpretation
    straps: int = 20  # bootstrap rounds of the distinguishability test (reference: 40)
    trials: int = 10  # trials per round (reference: 20)
    rounds: int = 60  # rounds of the congruity estimator
    seed: int = 0


QUICK = ToyConfig(
    n=3, n_data=40, interpretations=("A1 sort>eq_index>all_ones", "A4 hist>all_ones"), variants=3, seeds=2,
    steps=30, n_train=64, batch_size=32, d_model=16, impls=4, straps=4, trials=6, rounds=8,
)


def _task_data(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, n]`` sequences over {0..n-1}: even rows random permutations, odd rows uniform draws."""
    perms = np.stack([rng.permutation(n) for _ in range(size)])
    uniform = rng.integers(0, n, size=(size, n))
    return np.where((np.arange(size) % 2 == 0)[:, None], perms, uniform)


def _names(cfg: ToyConfig) -> tuple[str, ...]:
    from experiments.equiv_toy.programs import INTERPRETATIONS

    names = cfg.interpretations or tuple(INTERPRETATIONS)
    unknown = [a for a in names if a not in INTERPRETATIONS]
    if unknown:
        raise ValueError(f"unknown interpretations {unknown}; choose from {list(INTERPRETATIONS)}")
    return names


def compile_subroutines(cfg: ToyConfig) -> dict:
    """tracr compilations (``TracrModel``) of every subroutine the run's interpretations use, each compiled once
    per process (:func:`jaxequiv.models.tracr.compile_rasp` caches)."""
    from experiments.equiv_toy.programs import INTERPRETATIONS, subroutine
    from jaxequiv.models.tracr import compile_rasp

    subs = sorted({s for a in _names(cfg) for s in INTERPRETATIONS[a]})
    compiled = {s: compile_rasp(subroutine(s, cfg.n), range(cfg.n + 1), cfg.n, name=s) for s in subs}
    values = {m.input_values for m in compiled.values()}
    if len(values) != 1:
        raise AssertionError(f"subroutines encode their inputs differently: {values}")
    return compiled


def build_implementations(cfg: ToyConfig, log=print) -> dict:
    """Compile, vary and train; return the representations of every module implementation along every chain
    (see module docstring)."""
    from experiments.equiv_toy import implementations as impl
    from experiments.equiv_toy.programs import INTERPRETATIONS, evaluate_chain
    from jaxequiv.models.transformer import TransformerConfig

    names = _names(cfg)
    rng = np.random.default_rng(cfg.seed)
    n, V = cfg.n, cfg.variants
    if V < 3 or cfg.seeds < 2:
        raise ValueError(f"need >= 3 compiled variants (variant 0 is the base) and >= 2 seeds, got {V} and {cfg.seeds}")
    data = _task_data(n, cfg.n_data, rng)
    is_perm = np.array([sorted(x) == list(range(n)) for x in data.tolist()])

    timings = {}
    t0 = time.time()
    compiled = compile_subroutines(cfg)
    subs = list(compiled)
    timings["tracr compile"] = round(time.time() - t0, 1)
    log(f"compiled {len(subs)} subroutines with tracr in {timings['tracr compile']:.1f}s")

    # Inputs and outputs of each module along each chain (RASP evaluation: the ground truth).
    chain_io = {}
    for a in names:
        outs = evaluate_chain(INTERPRETATIONS[a], data.tolist(), n)
        final = np.array([o[0] == 1 and len(set(o)) == 1 for o in outs[-1]])
        if not (final == is_perm).all():
            raise AssertionError(f"{a} does not decide the task")
        chain_io[a] = list(zip([data, *(np.array(o) for o in outs[:-1])], (np.array(o) for o in outs)))

    t0 = time.time()
    variants = impl.compiled_variants([compiled[s] for s in subs], V, seed=cfg.seed)
    members = {s: impl.substack(variants, i * V, V) for i, s in enumerate(subs)}

    def decode(s, logits):  # argmax over the subroutine's own output channels -> values
        m = compiled[s]
        return np.array(m.output_values)[logits[..., : len(m.output_values)].argmax(-1)]

    # Training data of the imitators: module inputs along chains + uniform sequences over {0..n}; targets are the
    # outputs and intermediate variables of tracr's model (variant 0).
    train_ids, targets, probe_sets = [], [], []
    for s in subs:
        m = compiled[s]
        pools = [chain_io[a][i][0] for a in names for i, x in enumerate(INTERPRETATIONS[a]) if x == s]
        pool = np.concatenate([*pools, rng.integers(0, n + 1, size=(cfg.n_train, n))])
        ids = m.encode(pool[rng.integers(len(pool), size=cfg.n_train)].tolist())
        logits, resid = impl.forward(members[s], ids)
        y = decode(s, logits[0]).astype(np.int32)
        y[:, 0] = -1
        train_ids.append(ids)
        targets.append(y)
        probe_sets.append(impl.intermediate_targets(resid[0], m.residual_labels, _output_labels(m)))
    n_layer = max(2, max(c.config.n_layer for c in compiled.values()))
    g_max = max(1, max(len(p) for p in probe_sets))
    probes = -np.ones((len(subs), cfg.n_train, g_max, n + 1), np.int32)
    blocks = np.zeros((len(subs), g_max), np.int32)
    for i, ps in enumerate(probe_sets):
        for g, (blk, vals) in enumerate(ps):
            probes[i, :, g], blocks[i, g] = vals, min(blk, n_layer - 1)
    timings["compiled variants and targets"] = round(time.time() - t0, 1)
    log(f"built {len(subs)} x {V} compiled variants and training targets in "
        f"{timings['compiled variants and targets']:.1f}s")
    tcfg = TransformerConfig(
        vocab_size=len(compiled[subs[0]].input_values), n_layer=n_layer, n_head=4, d_model=cfg.d_model,
        n_ctx=n + 1, d_mlp=4 * cfg.d_model, norm="none", activation="gelu", tie_embeddings=False,
        d_vocab_out=n + 1, causal=False,
    )
    t0 = time.time()
    trained, losses = impl.train_imitators(
        np.stack(train_ids), np.stack(targets), probes, blocks, tcfg, cfg.seeds, cfg.steps,
        batch_size=cfg.batch_size, seed=cfg.seed,
    )
    timings["training"] = round(time.time() - t0, 1)
    log(f"trained {len(subs)} x {cfg.seeds} imitators in one vmapped job ({cfg.steps} steps) in "
        f"{timings['training']:.1f}s")

    # Representations of every module implementation on the module's inputs along each chain.
    t0 = time.time()
    reprs = {"base": {}, "compiled": {}, "trained": {}}
    accuracy: dict = {"compiled": {}, "trained": {}}
    for a in names:
        for kind in reprs:
            reprs[kind][a] = []
        for i, s in enumerate(INTERPRETATIONS[a]):
            x, ref = chain_io[a][i]
            ids = compiled[s].encode(x.tolist())
            for kind, net in (("compiled", members[s]), ("trained", impl.substack(trained, subs.index(s) * cfg.seeds, cfg.seeds))):
                logits, resid = impl.forward(net, ids)
                out = decode(s, logits) if kind == "compiled" else logits.argmax(-1)
                accuracy[kind].setdefault(s, []).append((out[:, :, 1:] == ref[None]).mean(axis=(1, 2)).tolist())
                r = resid.mean(3).reshape(*resid.shape[:2], -1)  # [K, N, (L+1) D]: mean over positions
                if kind == "compiled":
                    reprs["base"][a].append(r[0])
                    r = r[1:]  # variant 0 (tracr's model) is the base, not an implementation
                reprs[kind][a].append(r)
        reprs["base"][a] = np.concatenate(reprs["base"][a], -1)
    timings["representations"] = round(time.time() - t0, 1)
    log(f"representations in {timings['representations']:.1f}s")
    return {"names": names, "subroutines": subs, "reprs": reprs, "accuracy": accuracy, "losses": losses,
            "is_perm_rate": float(is_perm.mean()), "timings_s": timings}


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
    paths = sample_paths([r.shape[0] for r in reprs_by_module], count, rng)
    return np.stack([np.concatenate([r[k] for r, k in zip(reprs_by_module, path)], -1) for path in paths])


def sample_paths(sizes: list[int], count: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, len(sizes)]`` implementation indices, one per module of a chain whose module ``i`` has
    ``sizes[i]`` implementations: distinct paths while ``count <= prod(sizes)``."""
    total = int(np.prod(sizes))
    flat = rng.choice(total, size=count, replace=count > total)
    return np.stack(np.unravel_index(flat, sizes), 1)


def equal_width(sets: list[np.ndarray]) -> np.ndarray:
    """Stack representation sets of different widths ``[..., N, D_a]`` into ``[A, ..., N, D]`` without changing
    any ridge score.

    ``D = lcm(D_a)``; set ``a`` is tiled ``D / D_a`` times along features and scaled by ``sqrt(D_a / D)``. As a
    predictor its Gram matrix ``X X'`` is unchanged (so is every ridge fit); as a target each column is repeated
    equally often and uniformly scaled, so the output-averaged held-out R^2 and the leave-one-out choice of alpha
    are unchanged. This lets interpretations whose chains have different lengths share one compiled kernel.
    """
    widths = [x.shape[-1] for x in sets]
    d = int(np.lcm.reduce(widths))
    return np.stack([np.tile(x, (d // w,)) * np.sqrt(w / d, dtype=x.dtype) for x, w in zip(sets, widths)])


def score(sets: dict[str, np.ndarray], bases: dict[str, np.ndarray], cfg: ToyConfig, key: int):
    """Distinguishability grid and congruity matrix of the interpretations through :mod:`jaxequiv.equivalence`.

    Args:
      sets: per interpretation ``[M, N, D_a]`` implementation representations; bases: ``[N, B_a]`` the
        interpretation's tracr model (the "model" of CONGRUITY).

    Returns:
      ``(grid [A, A], fixed-split grid [A, A], congruity [A, A], congruity CI [A, A, 2])``: the grid with a fresh
      ridge split per trial (the reference's toy code) and with one split for every fit (its ``random_state=0``
      convention elsewhere).
    """
    import jax

    from jaxequiv import equivalence as eq
    from jaxequiv import similarity as sim

    names = list(sets)
    reprs = equal_width([sets[a] for a in names]).astype(np.float32)
    base = equal_width([bases[a] for a in names]).astype(np.float32)
    k_grid, k_cong = jax.random.split(jax.random.key(key))
    grids = [np.asarray(eq.distinguishability_grid(reprs, key=k_grid, straps=cfg.straps, trials=cfg.trials,
                                                   distinct=True, measure=m))
             for m in (sim.RIDGE, sim.ridge_measure(split=0))]
    cong, ci = np.zeros((len(names),) * 2), np.zeros((len(names),) * 2 + (2,))
    keys = jax.random.split(k_cong, len(names) ** 2).reshape(len(names), len(names))
    for i in range(len(names)):
        for j in range(i, len(names)):  # Algorithm 1 is symmetric in the two models: score i <= j, mirror
            r = eq.congruity(base[i], reprs[i], base[j], reprs[j], key=keys[i, j], n_rounds=cfg.rounds)
            cong[i, j] = cong[j, i] = r.score
            ci[i, j] = ci[j, i] = (r.ci_low, r.ci_high)
    return *grids, cong, ci


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
    short = [a.split()[0] for a in names]
    fig, axes = subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
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
    save_figure(fig, path, dpi=120)


def run_experiment(cfg: ToyConfig, out_dir: str, log=print) -> dict:
    """Run the whole experiment; write ``results.json``, ``congruity.png`` and ``distinguishability.png`` into
    ``out_dir``; return the results."""
    from experiments.equiv_toy.programs import FAMILIES, INTERPRETATIONS

    from jaxequiv.io.provenance import provenance

    t_start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    built = build_implementations(cfg, log=log)
    timings = built["timings_s"]
    names = built["names"]
    rng = np.random.default_rng(cfg.seed + 1)
    results = {"config": dataclasses.asdict(cfg), "interpretations": {a: list(INTERPRETATIONS[a]) for a in names},
               "families": {a: FAMILIES[a] for a in names}, "kinds": {}}
    panels_c, panels_d = [], []
    for kind in ("compiled", "trained"):
        t0 = time.time()
        sets = {a: sample_implementations(built["reprs"][kind][a], cfg.impls, rng) for a in names}
        grid, grid_fixed, cong, ci = score(sets, built["reprs"]["base"], cfg, cfg.seed + 2)
        acc = {s: float(np.mean(v)) for s, v in built["accuracy"][kind].items()}
        results["kinds"][kind] = {
            "congruity": cong.tolist(), "congruity_ci95": ci.tolist(), "distinguishability": grid.tolist(),
            "congruity_family_means": family_means(cong, names, FAMILIES),
            "distinguishability_family_means": family_means(grid, names, FAMILIES),
            "distinguishability_fixed_split": grid_fixed.tolist(),
            "distinguishability_fixed_split_family_means": family_means(grid_fixed, names, FAMILIES),
            "module_accuracy_vs_tracr": acc, "repr_dims": {a: int(sets[a].shape[-1]) for a in names},
        }
        panels_c.append((f"congruity ({kind} implementations)", cong))
        panels_d.append((f"distinguishability rate ({kind})", grid))
        log(f"[{kind}] representation widths {sorted({v.shape[-1] for v in sets.values()})}")
        timings[f"scoring ({kind})"] = round(time.time() - t0, 1)
        log(f"[{kind}] scored in {timings[f'scoring ({kind})']:.1f}s; congruity family means: "
            f"{results['kinds'][kind]['congruity_family_means']}")
    results["final_training_loss"] = built["losses"][-1].tolist()
    results["seconds"] = round(time.time() - t_start, 1)
    results["timings_s"] = {**timings, "total": results["seconds"]}
    results["provenance"] = provenance(cfg, seeds=[cfg.seed], started=t_start)
    _heatmaps(os.path.join(out_dir, "congruity.png"), panels_c, names)
    _heatmaps(os.path.join(out_dir, "distinguishability.png"), panels_d, names)
    write_json(os.path.join(out_dir, "results.json"), results)
    log(f"done in {results['seconds']}s -> {out_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--out", default=None, help="output folder (default: results/full or results/quick here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(QUICK if args.quick else ToyConfig(), seed=args.seed)
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, "results", "quick" if args.quick else "full")
    run_experiment(cfg, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
