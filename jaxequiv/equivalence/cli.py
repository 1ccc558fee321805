"""``jaxequiv equiv``: congruity and pairwise similarity matrices from stored representations, with heatmaps.

Examples::

    jaxequiv equiv pairwise reps.npz --measure linear_cka --out results/cka
    jaxequiv equiv congruity gpt2.npz pythia.npz --rounds 100 --out results/congruity

Representation files: ``.npz`` / ``.safetensors`` (one (N, D) array per name, or an (M, N, D) stack) or ``.npy``
(an (M, N, D) stack). A congruity model file holds ``base`` (N, D) and ``impls`` (M, N, D).
Each command's files are published together as one folder (``--out``): the old set or the new one, never a mix.
``--mesh`` and the multi-process flags split the pairs (or the pairs of models) over devices and processes;
only process 0 prints and writes.
"""

from __future__ import annotations

from pathlib import Path

from jaxequiv.io.arrays import read_arrays
from jaxequiv.io.files import check_output, publishing, write_json

__all__ = ["register"]


def _stack(arrays: dict, path: str):
    """(names, (M, N, D)) from one stack or several (N, D) arrays."""
    import numpy as np

    if not arrays:
        raise ValueError(f"{path} holds no arrays; save (N, D) representations in it with numpy.savez")
    for name, v in arrays.items():
        if v.dtype.kind in "fc" and not np.isfinite(v).all():
            raise ValueError(f"{path}: {name!r} contains NaN or Inf; clean or drop those rows first")
    if len(arrays) == 1 and next(iter(arrays.values())).ndim == 3:
        name, X = next(iter(arrays.items()))
        return [f"{name}[{i}]" for i in range(X.shape[0])], X
    bad = {k: v.shape for k, v in arrays.items() if v.ndim != 2}
    if bad:
        raise ValueError(f"{path}: expected (N, D) arrays or one (M, N, D) stack, got shapes {bad}")
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) > 1:
        raise ValueError(f"{path}: representations must share one (N, D) shape for a stacked run, got {sorted(shapes)}")
    return list(arrays), np.stack(list(arrays.values()))


def _heatmap(path: Path, matrix, names, title: str, vmin=None, vmax=None) -> None:
    from jaxequiv.io.figures import save_figure, subplots

    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, format="png")


def _measure(name: str, fixed_split: int | None):
    from jaxequiv.similarity import get_measure

    if fixed_split is not None and name not in ("ridge", "ridge_sqrt"):
        raise ValueError(f"--fixed-split applies to the ridge measures (ridge, ridge_sqrt), not {name!r}")
    return get_measure(name) if fixed_split is None else get_measure(name, split=fixed_split)


def _pairwise(args) -> int:
    import jax
    import numpy as np

    from jaxequiv.distributed import from_args, is_writer
    from jaxequiv.similarity import pairwise

    mesh = from_args(args)  # first: a run of several processes starts before any JAX work
    measure = _measure(args.measure, args.fixed_split)
    check_output(args.out, overwrite=args.overwrite, marker="similarity.json")
    names, Xs = _stack(read_arrays(args.reps), args.reps)
    matrix = np.asarray(pairwise(measure, Xs, key=jax.random.key(args.seed), chunk=args.chunk, mesh=mesh))
    if not is_writer():  # every process has the matrix; one writes it
        return 0
    doc = {"measure": measure.name, "higher_is_similar": measure.higher_is_similar, "names": names,
           "matrix": matrix.tolist(), "seed": args.seed, "fixed_split": args.fixed_split}
    with publishing(args.out, overwrite=args.overwrite, marker="similarity.json") as tmp:
        np.save(tmp / "similarity.npy", matrix)
        write_json(tmp / "similarity.json", doc)
        _heatmap(tmp / "similarity.png", matrix, names,
                 f"{measure.name} (row predicts column)" if not measure.symmetric else measure.name)
    print(f"{len(names)} x {len(names)} {measure.name} matrix -> {args.out}/similarity.{{npy,json,png}}")
    return 0


def _labels(paths: list[str]) -> list[str]:
    """Model names from file paths: the file stems, or the shortest path suffixes that tell them apart."""
    parts = [Path(p).resolve().with_suffix("").parts for p in paths]
    if len(set(parts)) < len(parts):
        raise ValueError(f"a model file is given more than once: {paths}")
    depth = next(t for t in range(1, max(map(len, parts)) + 1) if len({q[-t:] for q in parts}) == len(parts))
    return ["/".join(q[-depth:]) for q in parts]


def _congruity(args) -> int:
    import jax

    from jaxequiv.distributed import from_args, is_writer
    from jaxequiv.equivalence import congruity_matrix

    mesh = from_args(args)  # first: a run of several processes starts before any JAX work

    if len(args.models) < 2:
        raise ValueError("congruity needs at least 2 model files (each with 'base' and 'impls')")
    measure = _measure(args.measure, args.fixed_split)
    labels = _labels(args.models)
    check_output(args.out, overwrite=args.overwrite, marker="congruity.json")
    models = {}
    for name, path in zip(labels, args.models):
        arrays = read_arrays(path)
        missing = {"base", "impls"} - set(arrays)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; a model file holds 'base' (N, D) and 'impls' (M, N, D)")
        models[name] = (arrays["base"], arrays["impls"])
    result = congruity_matrix(models, key=jax.random.key(args.seed), n_rounds=args.n_rounds, measure=measure,
                              n_boot=args.n_boot, ci=args.ci, mesh=mesh)
    if not is_writer():  # every process has the matrix; one writes it
        return 0
    names, score, lo, hi = list(result.names), result.score, result.ci_low, result.ci_high
    for i in range(len(names)):
        for j in range(i, len(names)):
            print(f"{names[i]} vs {names[j]}: {result.pair(i, j)}")
    doc = {"measure": measure.name, "rounds": args.n_rounds, "seed": args.seed, "fixed_split": args.fixed_split,
           "names": names, "congruity": score.tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist()}
    with publishing(args.out, overwrite=args.overwrite, marker="congruity.json") as tmp:
        write_json(tmp / "congruity.json", doc)
        _heatmap(tmp / "congruity.png", score, names, f"congruity ({measure.name}, {args.n_rounds} rounds)", 0.0, 1.0)
    print(f"congruity matrix -> {args.out}/congruity.{{json,png}}")
    return 0


FIXED_SPLIT_HELP = ("ridge only: one train/test split drawn from SEED for every fit (the reference's random_state "
                    "convention) (default: a fresh split per fit)")


def register(subparsers) -> None:
    from jaxequiv import cliargs
    from jaxequiv.distributed import add_distributed_args
    from jaxequiv.equivalence import congruity_matrix
    from jaxequiv.similarity import MEASURES, pairwise

    p = subparsers.add_parser("equiv", help="congruity and similarity matrices from stored representations",
                              description=__doc__)
    sub = p.add_subparsers(dest="equiv_command", metavar="WHAT", required=True)
    pw = sub.add_parser("pairwise", help="all-pairs similarity matrix + heatmap", description=__doc__)
    pw.add_argument("reps", type=cliargs.path, help=".npz/.safetensors of (N, D) arrays, or an (M, N, D) stack (.npy too)")
    pw.add_argument("--measure", default="linear_cka", choices=sorted(MEASURES), metavar="MEASURE",
                    help="similarity measure: %(choices)s")
    pw.add_argument("--out", required=True, type=cliargs.path, help="output folder (similarity.npy, .json, .png)")
    pw.add_argument("--overwrite", action="store_true", help="replace the matrix of an earlier run at --out")
    pw.add_argument("--seed", type=cliargs.seed, default=0, help="seed for randomised measures (ridge splits)")
    pw.add_argument("--fixed-split", type=cliargs.seed, metavar="SEED", help=FIXED_SPLIT_HELP)
    cliargs.add_options(pw, pairwise, only=("chunk",), help={"chunk": "pairs (or CKA sample rows) per step: the "
                                                                      "memory knob"})
    add_distributed_args(pw)
    pw.set_defaults(func=_pairwise)

    cg = sub.add_parser("congruity", help="congruity of every pair of models + heatmap", description=__doc__)
    cg.add_argument("models", nargs="+", type=cliargs.path, help="model files (.npz/.safetensors with 'base' and 'impls')")
    cg.add_argument("--measure", default="ridge", choices=sorted(MEASURES), metavar="MEASURE",
                    help="similarity measure (ridge as the reference code): %(choices)s")
    cg.add_argument("--seed", type=cliargs.seed, default=0, help="seed of the implementation draws and bootstrap")
    cg.add_argument("--out", required=True, type=cliargs.path, help="output folder (congruity.json, .png)")
    cg.add_argument("--overwrite", action="store_true", help="replace the matrix of an earlier run at --out")
    cg.add_argument("--fixed-split", type=cliargs.seed, metavar="SEED", help=FIXED_SPLIT_HELP)
    cliargs.add_options(cg, congruity_matrix, only=("n_rounds", "n_boot", "ci"), flags={"n_rounds": "--rounds",
                                                                                "n_boot": "--boot"},
                        help={"n_rounds": "rounds: draws of one implementation of each model",
                              "n_boot": "bootstrap resamples of the rounds for the confidence interval",
                              "ci": "coverage of the percentile confidence interval"})
    add_distributed_args(cg)
    cg.set_defaults(func=_congruity)
