"""``jaxequiv demo``: what CODEC reveals about a small image ResNet, in pictures and a few numbers.

Trains an 8-block ResNet on scikit-learn's bundled 8x8 digits (on a Fashion-MNIST subset when the Debian
``dataset-fashion-mnist`` files are installed), computes integrated-gradient contributions and activations at
every block, decomposes each with a sparse autoencoder into modes, measures sparsity, dimensionality and class
selectivity, ablates / preserves the channels of each class's top mode, draws mode pictures, and writes
``report.md`` with PNG figures (the CODEC paper's ResNet-50 values beside ours), published together in
``--out`` when the run ends. A few minutes on 2 CPU cores; ``--quick`` is a seconds-scale smoke run for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path


def register(subparsers) -> None:
    from jaxequiv import cliargs

    p = subparsers.add_parser("demo", help="CODEC on a small ResNet: contributions, modes, interventions, report",
                              description=__doc__)
    p.add_argument("--out", type=cliargs.path, default="reports/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run for tests; numbers not meaningful)")
    p.add_argument("--seed", type=cliargs.seed, default=1992, help="seed for the weights, shuffling, SAEs and trials")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run at --out")
    p.set_defaults(func=run_demo)


def demo_config(quick: bool, seed: int):
    """The pipeline settings of the demo: the experiment's quick preset, or a smoke-test version of it."""
    from jaxequiv.codec.pipeline import QUICK

    cfg = dataclasses.replace(QUICK, seed=seed)
    if quick:
        return dataclasses.replace(cfg, blocks=(1, 1), n_train=400, n_analysis=120, width=4, epochs=3, ig_steps=4,
                                   chunk_size=120, sae_steps=100, sae_theta=0.5, sae_batch=64, trials=3,
                                   images_per_class=5, percentages=(10, 50, 100), picture_images=3)
    try:
        from jaxequiv.data.images import load_mnist

        load_mnist("fashion")
    except FileNotFoundError:
        return cfg
    return dataclasses.replace(cfg, dataset="fashion", n_train=6000, n_analysis=1000, epochs=4, batch_size=128,
                               picture_filter=2)


def run_demo(args: argparse.Namespace) -> int:
    from jaxequiv.codec import pipeline
    from jaxequiv.io.files import publishing

    cfg = demo_config(args.quick, args.seed)
    with publishing(args.out, overwrite=args.overwrite, marker="report.md") as build:
        report = pipeline.run_pipeline(cfg, str(build), title="jaxequiv demo: CODEC on a small ResNet")
    print(f"report written to {Path(args.out) / os.path.relpath(report, build)}")
    return 0
