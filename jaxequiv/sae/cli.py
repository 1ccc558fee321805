"""``jaxequiv sae train|sweep``: train SAEs on one site/variant of a contributions store.

Writes one SAELens-layout folder per SAE under ``--out`` (see :mod:`jaxequiv.sae.io`) and ``summary.json``
with the metrics of each, published together when training ends (``--out`` holds the previous complete set or
the new one, never a mix). Until then the run lives in ``<out>.partial/``, whose ``checkpoint/`` holds the
resumable training state: rerun the same command to resume. ``--mesh`` and the multi-process flags split the
SAEs over ``stack`` and each batch over ``data``, across devices and processes (all of them train into process
0's ``<out>.partial/checkpoint``, on a file system they share; process 0 prints and publishes).

The training options are the fields of :class:`jaxequiv.sae.TrainSettings`, the SAE options those of the
variant configs (:data:`jaxequiv.sae.VARIANTS`), the sweep's grid the arguments of
:func:`jaxequiv.sae.codec_sweep`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

from jaxequiv import cliargs

__all__ = ["register", "sweep_names"]

CODEC_EPOCHS = 300.0  # the run length when neither --steps nor --epochs is given (CODEC's)


def register(subparsers) -> None:
    from jaxequiv.contributions import VARIANTS as STORED
    from jaxequiv.distributed import add_distributed_args
    from jaxequiv.sae import STSAE, VARIANTS, TrainSettings, codec_sweep

    p = subparsers.add_parser("sae", help="train sparse autoencoders on a contributions store", description=__doc__)
    sub = p.add_subparsers(dest="sae_command", metavar="{train,sweep}", required=True)
    common = cliargs.Parser(add_help=False)
    io = common.add_argument_group("data and output")
    io.add_argument("--store", required=True, type=cliargs.path, help="contributions store folder (written by jaxequiv contributions)")
    io.add_argument("--site", required=True, help="site name in the store")
    io.add_argument("--variant", default="positive", choices=(*STORED, "activations"), help="stored variant")
    io.add_argument("--normalize", choices=("global_std", "none"), default="global_std",
                    help="divide the data by its global scalar std (CODEC) or use it as is")
    io.add_argument("--out", required=True, type=cliargs.path, help="output folder (SAE folders + summary.json)")
    io.add_argument("--overwrite", action="store_true", help="replace the SAEs of an earlier run at --out")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_args(common)
    training = common.add_argument_group("training (jaxequiv.sae.TrainSettings)")
    settings = cliargs.add_options(training, TrainSettings, help={
        "epochs": f"run length in passes over the data, may be fractional (default: {CODEC_EPOCHS:g} unless "
                  "--steps is given)",
        "steps": "run length in steps (default: set by --epochs)"})

    t = sub.add_parser("train", parents=[common], help="train one SAE",
                       description="Train one SAE of any variant on one site of a store.\n\n" + __doc__.split("\n\n")[1])
    t.add_argument("--arch", choices=sorted(VARIANTS), default="stsae", help="SAE variant")
    t.add_argument("--expansion", type=int, default=3, metavar="INT", help="dictionary size K = expansion * d")
    t.add_argument("--seed", type=cliargs.seed, default=0, help="initialisation (and dropout) seed")
    hyper = cliargs.add_options(t.add_argument_group("SAE variant settings (each applies to the variants named)"),
                                *VARIANTS.values(), skip=("d_in", "d_sae"))
    t.set_defaults(func=functools.partial(_train, settings=settings, hyper=hyper))

    s = sub.add_parser("sweep", parents=[common], help="CODEC's stsae grid, trained in lock-step",
                       description="Train CODEC's grid of stsae SAEs (every expansion x theta x l1 x seed) in "
                       "lock-step.\n\n" + __doc__.split("\n\n")[1])
    grid = cliargs.add_options(s.add_argument_group("grid (jaxequiv.sae.codec_sweep)"), codec_sweep,
                               only=("expansions", "thetas", "l1s", "seeds"))
    shared = cliargs.add_options(s.add_argument_group("stsae settings shared by the grid"), STSAE,
                                 only=("hidden", "nonneg", "dropout"))
    s.set_defaults(func=functools.partial(_sweep, settings=settings, grid=grid, shared=shared))


def _load(args):
    import math

    from jaxequiv.contributions import global_std, open_store
    from jaxequiv.sae.data import Scaled, check_finite, check_rows

    data = open_store(args.store).array(args.site, args.variant)
    check_rows(data, f"{args.site}/{args.variant}")
    scale = 1.0
    if args.normalize == "global_std":
        std = global_std(data)
        if not math.isfinite(std):
            check_finite(data, f"{args.site}/{args.variant}")  # raises, naming the first NaN/Inf
        if std == 0:
            raise ValueError(f"{args.site}/{args.variant} is constant (std 0); use --normalize none")
        scale = 1.0 / std
        data = Scaled(data, scale)
    return data, scale


def _settings(args, names):
    from jaxequiv.sae import TrainSettings

    values = {n: getattr(args, n) for n in names}
    if values["steps"] is None and values["epochs"] is None:
        values["epochs"] = CODEC_EPOCHS
    return TrainSettings(**values)


def _fit(train_fn, *args, **kwargs):
    """``train_fn(*args, **kwargs)``, printing its FitWarnings as plain ``warning:`` lines."""
    import sys
    import warnings

    from jaxequiv.distributed import is_writer
    from jaxequiv.sae import FitWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, FitWarning):
            if is_writer():  # once per run of several processes
                print(f"jaxequiv sae: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return out


@contextlib.contextmanager
def _build_folder(args):
    """``<out>.partial``: process 0 publishes it at ``--out`` when the block succeeds (removing an earlier run's
    SAEs first; its checkpoint may be resumed); the other processes of a run train into it too. Every process
    leaves the block only after all have trained (``__exit__`` of the writer's publication comes after that)."""
    import shutil
    from pathlib import Path

    from jaxequiv.distributed import barrier, is_writer
    from jaxequiv.io.files import publishing

    if not is_writer():
        barrier("sae: build folder")
        out = os.path.abspath(args.out)
        yield Path((os.path.realpath(out) if os.path.islink(out) else out) + ".partial")  # as the writer's
        return
    with publishing(args.out, overwrite=args.overwrite, marker="summary.json", resumable=True) as build:
        for stale in build.iterdir():  # an earlier run's SAEs (killed before its publication): only its
            if stale.name != "checkpoint":  # checkpoint may be resumed, and train_many checks that it is this run's
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        barrier("sae: build folder")
        yield build


def _run(args, settings, configs, names) -> int:
    """Train the SAEs ``configs(d) -> (cfgs, seeds)`` (``names``: their folders) inside ``<out>.partial``, write
    the SAE folders and summary.json there and publish them at ``--out`` in one folder swap."""
    import shutil

    from jaxequiv.distributed import barrier, from_args, is_writer
    from jaxequiv.io.files import check_output, write_json
    from jaxequiv.sae import evaluate, save_sae, train_many

    mesh = from_args(args)  # first: a run of several processes starts before any JAX work
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{len(twice)} SAE folder name(s) would hold more than one SAE (e.g. {twice[0]}): values "
                         "that differ only beyond 6 significant digits share a name; list each value once")
    settings = _settings(args, settings)  # before any file is touched: a bad setting leaves nothing behind
    check_output(args.out, overwrite=args.overwrite, marker="summary.json")
    data, scale = _load(args)
    cfgs, seeds = configs(data.shape[1])
    with _build_folder(args) as build:
        results = _fit(train_many, cfgs, data, seeds=seeds, settings=settings, checkpoint_dir=build / "checkpoint",
                       progress=not args.no_progress, mesh=mesh)
        barrier("sae: trained")  # every process is done with the checkpoint
        if not is_writer():  # every process has the SAEs; one writes them
            return 0
        summary = []
        for name, r in zip(names, results):
            meta = {"hook_name": args.site, "store": os.path.abspath(args.store), "store_variant": args.variant,
                    "seed": r.seed, "steps": r.step}
            save_sae(build / name, r.cfg, r.params, r.state, metadata=meta, input_scale=scale)
            ev = evaluate(r.cfg, r.params, data, r.state)
            summary.append({"name": name, "variant": r.cfg.name, "seed": r.seed, **r.cfg.config_dict(),
                            **{k: v for k, v in ev.items() if k not in ("density", "alive")}})
            print(f"{name}: r2_codec={ev['r2_codec']:.4f} l0={ev['l0']:.2f} alive={ev['n_alive']}/{r.cfg.d_sae}")
        write_json(build / "summary.json", summary, indent=2)
        # the finished run needs no resume state; renamed first, so that a kill while deleting it leaves either the
        # whole checkpoint or none (a half-deleted one would stop the rerun), and the rerun drops the rest
        os.rename(build / "checkpoint", build / ".checkpoint.deleting")
        shutil.rmtree(build / ".checkpoint.deleting")
    return 0


def _train(args, settings, hyper) -> int:
    from jaxequiv.sae import VARIANTS, make

    chosen = cliargs.given(args, hyper)
    fields = {f.name for f in dataclasses.fields(VARIANTS[args.arch])}
    foreign = [n for n in chosen if n not in fields]
    if foreign:
        flag = "--" + foreign[0].replace("_", "-")
        owners = [v for v, cls in VARIANTS.items() if foreign[0] in {f.name for f in dataclasses.fields(cls)}]
        raise ValueError(f"{flag} does not apply to --arch {args.arch} (it sets {', '.join(owners)}); drop it or "
                         "choose one of those variants")
    _check_expansions([args.expansion], "--expansion")
    return _run(args, settings, lambda d: ([make(args.arch, d, expansion=args.expansion, **chosen)], [args.seed]),
                [f"{args.arch}_x{args.expansion}_seed{args.seed}"])


def _sweep(args, settings, grid, shared) -> int:
    from jaxequiv.sae import codec_sweep

    lists, fixed = cliargs.given(args, grid), cliargs.given(args, shared)
    _check_expansions(lists.get("expansions", ()), "--expansions")
    return _run(args, settings, lambda d: codec_sweep(d, **lists, **fixed),
                sweep_names(*codec_sweep(1, **lists)))


def _check_expansions(values, flag: str) -> None:
    if any(v < 1 for v in values):
        raise ValueError(f"{flag} must be >= 1 (K = expansion * d), got {','.join(map(str, values))}")


def sweep_names(cfgs, seeds) -> list[str]:
    """Output folder names of a CODEC sweep's SAEs, e.g. ``stsae_x3_theta0.7_l10.0001_seed483``."""
    return [f"stsae_x{c.d_sae // c.d_in}_theta{c.theta:g}_l1{c.l1:g}_seed{s}" for c, s in zip(cfgs, seeds)]
