"""``jaxequiv demo``: what CODEC reveals about a small image ResNet, in pictures and a few numbers.

Trains an 8-block ResNet on scikit-learn's bundled 8x8 digits (on a Fashion-MNIST subset when the Debian
``dataset-fashion-mnist`` files are installed), then runs :func:`jaxequiv.codec.analyze` on every block:
integrated-gradient contributions and activations, one sparse autoencoder per block on each (modes), sparsity,
dimensionality and class selectivity, ablation / preservation of each class's top mode, mode pictures. Writes
``report.md`` with PNG figures and ``results.json``, published together in ``--out`` when the run ends. Each stage
is announced as it starts and timed as it ends. A few minutes on 2 CPU cores; ``--quick`` is a seconds-scale
smoke run for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from jaxequiv.codec import AnalysisSettings, CodecAnalysis, Stages
    from jaxequiv.data.images import Dataset
    from jaxequiv.network import Network

__all__ = ["DemoConfig", "demo_config", "balanced_subset", "train_resnet", "train_and_analyze", "run", "register"]

TITLE = "jaxequiv demo: CODEC on a small ResNet"


def register(subparsers) -> None:
    from jaxequiv import cliargs

    p = subparsers.add_parser("demo", help="CODEC on a small ResNet: contributions, modes, interventions, report",
                              description=__doc__)
    p.add_argument("--out", type=cliargs.path, default="reports/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run for tests; numbers not meaningful)")
    p.add_argument("--seed", type=cliargs.seed, default=1992, help="seed for the weights, shuffling, SAEs and trials")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run at --out")
    p.set_defaults(func=run_demo)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and analyses."""

    dataset: str  # "digits" or "fashion"
    n_train: int | None  # class-balanced training subset (None: all)
    n_analysis: int | None  # class-balanced test examples analysed (None: all)
    blocks: tuple[int, ...]  # residual blocks per stage
    width: int
    epochs: int
    batch_size: int
    lr: float  # Adam, cosine decay to 0
    seed: int
    analysis: AnalysisSettings


def demo_config(quick: bool, seed: int) -> DemoConfig:
    """The demo's settings: 8 blocks on digits (Fashion-MNIST when installed), or a smoke-test version."""
    from jaxequiv.codec import AnalysisSettings

    analysis = AnalysisSettings(chunk_size=150, sae_steps=600, sae_batch=128, percentages=(2, 10, 25, 50, 80, 99),
                                trials=10, superclass=(5, 7, 9), picture_images=5, picture_filter=1, seed=seed)
    cfg = DemoConfig("digits", None, None, (2, 2, 2, 2), width=8, epochs=30, batch_size=64, lr=3e-3, seed=seed,
                     analysis=analysis)
    if quick:
        return dataclasses.replace(
            cfg, blocks=(1, 1), n_train=400, n_analysis=120, width=4, epochs=3,
            analysis=dataclasses.replace(analysis, ig_steps=4, chunk_size=120, sae_steps=100, sae_theta=0.5,
                                         sae_batch=64, trials=3, images_per_class=5, percentages=(10, 50, 100),
                                         picture_images=3))
    try:
        from jaxequiv.data.images import load_mnist

        load_mnist("fashion")
    except FileNotFoundError:
        return cfg
    return dataclasses.replace(cfg, dataset="fashion", n_train=6000, n_analysis=1000, epochs=4, batch_size=128,
                               analysis=dataclasses.replace(analysis, picture_filter=2))


def balanced_subset(y, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` examples of ``y`` (N,) with classes as balanced as possible (all when ``n`` is None)."""
    import numpy as np

    if n is None or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = n // len(classes)
    idx = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(idx))


def train_resnet(data: Dataset, *, blocks: tuple[int, ...], width: int, epochs: int, batch_size: int, lr: float,
                 n_train: int | None = None, seed: int = 0, progress: bool = False) -> tuple[Network, float]:
    """Train a small-stem basic-block ResNet on a class-balanced subset of ``data``'s training images with Adam and
    cosine decay; returns ``(Network, accuracy on the whole test set)``."""
    import numpy as np
    import optax
    from flax import nnx

    from jaxequiv.models.resnet import ResNet
    from jaxequiv.network import Network
    from jaxequiv.train import accuracy, classification_loss, fit

    idx = balanced_subset(data.y_train, n_train, seed)
    model = ResNet("basic", blocks, width=width, num_classes=data.num_classes, in_channels=data.input_shape[-1],
                   stem="small", rngs=nnx.Rngs(seed))
    steps = epochs * (len(idx) // min(batch_size, len(idx)))
    tx = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))
    fit(model, classification_loss, (data.x_train[idx], data.y_train[idx].astype(np.int32)), epochs=epochs,
        batch_size=batch_size, optimizer=tx, seed=seed, progress=progress)
    net = Network.from_module(model, data.input_shape)
    return net, float(accuracy(net, data.x_test, data.y_test.astype(np.int32)))


def train_and_analyze(data: Dataset, cfg: DemoConfig, store_dir: str, *, stages: Stages | None = None,
                      progress: bool = False) -> tuple[Network, float, CodecAnalysis]:
    """Train the ResNet of ``cfg`` on ``data``, then :func:`jaxequiv.codec.analyze` every block on a class-balanced
    subset of the test images; returns ``(network, test accuracy, analysis)``."""
    import numpy as np

    from jaxequiv.codec import Stages, analyze

    stages = Stages(prefix="[demo]") if stages is None else stages
    with stages("train classifier"):
        net, acc = train_resnet(data, blocks=cfg.blocks, width=cfg.width, epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, n_train=cfg.n_train, seed=cfg.seed,
                                progress=progress)
    stages.log(f"{stages.prefix} {data.name}: test accuracy {acc:.4f}")
    ana = balanced_subset(data.y_test, cfg.n_analysis, cfg.seed + 1)
    x, y = data.x_test[ana], data.y_test[ana].astype(np.int64)
    res = analyze(net, x, y, "layer*", store_dir, cfg.analysis, class_names=data.class_names, overwrite=True,
                  progress=progress, stages=stages)
    return net, acc, res


def run(cfg: DemoConfig, out_dir: str, *, stages: Stages | None = None, progress: bool = False) -> str:
    """Train the demo's network, analyse it and write ``report.md``, its figures and ``results.json`` to
    ``out_dir``; returns the report's path."""
    from jaxequiv.codec import Stages, write_report
    from jaxequiv.data.images import load_digits, load_mnist
    from jaxequiv.io.files import write_json

    start = time.perf_counter()
    stages = Stages(prefix="[demo]") if stages is None else stages
    with stages(f"load {cfg.dataset}"):
        data = load_digits() if cfg.dataset == "digits" else load_mnist(cfg.dataset)
    net, acc, res = train_and_analyze(data, cfg, os.path.join(out_dir, "store"), stages=stages, progress=progress)
    with stages("report"):
        meta = {"data set": f"{cfg.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images, "
                            f"{res.n_examples} analysed (class-balanced test subset)",
                "network": f"ResNet (basic blocks {list(cfg.blocks)}, width {cfg.width}, small stem), "
                           f"{net.param_count():,} parameters, test accuracy {acc:.4f}",
                "settings": json.dumps(dataclasses.asdict(cfg))}
        path = write_report(out_dir, res, TITLE, meta=meta)
    timings = {**stages.timings, "total": round(time.perf_counter() - start, 1)}
    write_json(os.path.join(out_dir, "results.json"), {"dataset": cfg.dataset, "test_accuracy": acc,
                                                       "timings_s": timings, **res.summary()})
    return path


def run_demo(args: argparse.Namespace) -> int:
    print(f"[demo] CODEC on a small ResNet{' (--quick)' if args.quick else ''}; report in {args.out}", flush=True)
    from jaxequiv.codec import Stages
    from jaxequiv.io.files import publishing

    stages = Stages(prefix="[demo]")
    with publishing(args.out, overwrite=args.overwrite, marker="report.md") as build:
        with stages("settings"):
            cfg = demo_config(args.quick, args.seed)
        report = run(cfg, str(build), stages=stages, progress=sys.stderr.isatty())
    print(f"report written to {Path(args.out) / os.path.relpath(report, build)}")
    return 0
