"""``jaxequiv sae train|sweep``: train SAEs on one site/variant of a contributions store.

Writes one SAELens-layout folder per SAE under ``--out`` (see :mod:`jaxequiv.sae.io`) and ``summary.json``
with the metrics of each, published together when training ends (``--out`` holds the previous complete set or
the new one, never a mix). Until then the run lives in ``<out>.partial/``, whose ``checkpoint/`` holds the
resumable training state: rerun the same command to resume.
"""

from __future__ import annotations

import argparse


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def register(subparsers) -> None:
    p = subparsers.add_parser("sae", help="train sparse autoencoders on a contributions store")
    sub = p.add_subparsers(dest="sae_command", metavar="{train,sweep}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True, help="contributions store folder")
    common.add_argument("--site", required=True, help="site name in the store")
    common.add_argument("--variant", default="positive", help="stored variant (positive, sum, concat, activations, ...)")
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--overwrite", action="store_true", help="replace the SAEs of an earlier run at --out")
    common.add_argument("--normalize", choices=["global_std", "none"], default="global_std",
                        help="divide the data by its global scalar std (CODEC) or use it as is")
    common.add_argument("--batch-size", type=int, default=128)
    length = common.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None)
    length.add_argument("--steps", type=int, default=None)
    common.add_argument("--lr", type=float, default=5e-5)
    common.add_argument("--plateau", action="store_true", help="halve the lr after 10 flat epochs (CODEC)")
    common.add_argument("--log-every", type=int, default=100)
    common.add_argument("--checkpoint-every", type=int, default=None)
    common.add_argument("--data-seed", type=int, default=None)
    common.add_argument("--hidden", type=int, default=0, help="stsae encoder width h (0: d)")
    common.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", parents=[common], help="train one SAE")
    t.add_argument("--arch", default="stsae", help="stsae, relu_l1, topk, matryoshka, batchtopk or jumprelu")
    t.add_argument("--expansion", type=int, default=3, help="K = expansion * d")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--theta", type=float, default=0.8, help="stsae threshold")
    t.add_argument("--l1", type=float, default=None, help="stsae dictionary L1 / relu_l1 code L1")
    t.add_argument("--k", type=int, default=32, help="topk / matryoshka / batchtopk k")
    t.add_argument("--l0", type=float, default=1e-3, help="jumprelu L0 weight")
    t.add_argument("--nonneg", action="store_true", help="stsae non-negative dictionary")
    t.set_defaults(func=_train)

    s = sub.add_parser("sweep", parents=[common], help="CODEC's stsae grid, trained in lock-step")
    s.add_argument("--expansions", type=_ints, default=[1, 3, 5])
    s.add_argument("--thetas", type=_floats, default=[0.5, 0.7, 0.9])
    s.add_argument("--l1s", type=_floats, default=[0.0, 1e-4, 1e-2])
    s.add_argument("--seeds", type=_ints, default=[483, 1001, 2002])
    s.set_defaults(func=_sweep)


def _load(args):
    import math

    from jaxequiv.contributions import open_store
    from jaxequiv.contributions.reduce import global_std
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


def _settings(args):
    from jaxequiv.sae import TrainSettings

    steps, epochs = args.steps, args.epochs
    if steps is None and epochs is None:
        epochs = 300.0
    return TrainSettings(batch_size=args.batch_size, steps=steps, epochs=epochs, lr=args.lr, plateau=args.plateau,
                         log_every=args.log_every, checkpoint_every=args.checkpoint_every, data_seed=args.data_seed)


def _fit(train_fn, *args, **kwargs):
    """``train_fn(*args, **kwargs)``, printing its FitWarnings as plain ``warning:`` lines."""
    import sys
    import warnings

    from jaxequiv.sae import FitWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, FitWarning):
            print(f"jaxequiv sae: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return out


def _run(args, configs, names) -> int:
    """Train the SAEs ``configs(d) -> (cfgs, seeds)`` (``names``: their folders) inside ``<out>.partial``, write
    the SAE folders and summary.json there and publish them at ``--out`` in one folder swap."""
    import os
    import shutil

    from jaxequiv.io.files import check_output, publishing, write_json
    from jaxequiv.sae import evaluate, save_sae, train_many

    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the settings name the same SAE more than once ({twice}); list each value once")
    check_output(args.out, overwrite=args.overwrite, marker="summary.json")
    data, scale = _load(args)
    cfgs, seeds = configs(data.shape[1])
    settings = _settings(args)
    with publishing(args.out, overwrite=args.overwrite, marker="summary.json", resumable=True) as build:
        results = _fit(train_many, cfgs, data, seeds=seeds, settings=settings, checkpoint_dir=build / "checkpoint",
                       progress=not args.no_progress)
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
        shutil.rmtree(build / "checkpoint")  # the finished run needs no resume state
    return 0


def _train(args) -> int:
    from jaxequiv.sae import make

    hyper = {"stsae": {"theta": args.theta, "l1": 5e-5 if args.l1 is None else args.l1, "hidden": args.hidden,
                       "nonneg": args.nonneg},
             "relu_l1": {"l1": 1e-3 if args.l1 is None else args.l1},
             "topk": {"k": args.k}, "matryoshka": {"k": args.k}, "batchtopk": {"k": args.k}, "jumprelu": {"l0": args.l0}}
    if args.arch not in hyper:
        raise ValueError(f"unknown --arch {args.arch!r}; expected one of {sorted(hyper)}")
    return _run(args, lambda d: ([make(args.arch, d, expansion=args.expansion, **hyper[args.arch])], [args.seed]),
                [f"{args.arch}_x{args.expansion}_seed{args.seed}"])


def _sweep(args) -> int:
    from jaxequiv.sae import codec_sweep

    def configs(d):
        return codec_sweep(d, args.expansions, args.thetas, args.l1s, args.seeds, hidden=args.hidden)

    return _run(args, configs, sweep_names(*codec_sweep(1, args.expansions, args.thetas, args.l1s, args.seeds)))


def sweep_names(cfgs, seeds) -> list[str]:
    """Output folder names of a CODEC sweep's SAEs, e.g. ``stsae_x3_theta0.7_l10.0001_seed483``."""
    return [f"stsae_x{c.d_sae // c.d_in}_theta{c.theta:g}_l1{c.l1:g}_seed{s}" for c, s in zip(cfgs, seeds)]
