"""``jaxequiv demo``: train a small ResNet on scikit-learn's bundled digits and write a markdown report.

Runs offline on a CPU in well under two minutes (``--quick``: a few seconds, for tests). The report lists the
test accuracy, parameter count, training time and the model's sites with their shapes, the names every later
analysis (contributions, SAEs, equivalence) uses.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

# (layers per stage, width, epochs) for the full and the quick run
_CONFIGS = {"full": ((1, 1, 1), 16, 10), "quick": ((1, 1), 8, 3)}
_BATCH = 64


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small ResNet on the bundled 8x8 digits and write a report",
                              description=__doc__.splitlines()[0].strip("`: "))
    p.add_argument("--out", type=Path, default=Path("reports/demo"), help="output folder (default: reports/demo)")
    p.add_argument("--quick", action="store_true", help="smaller model, 3 epochs (seconds; for tests)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the shuffling")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import time

    import jax
    from flax import nnx

    from jaxequiv.data import load_digits
    from jaxequiv.models.resnet import ResNet
    from jaxequiv.network import Network
    from jaxequiv.train import accuracy, classification_loss, fit

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out must be a folder, but {args.out} is a file; pass a new or existing folder")
    layers, width, epochs = _CONFIGS["quick" if args.quick else "full"]
    data = load_digits(seed=args.seed)
    model = ResNet("basic", layers, width=width, num_classes=data.num_classes, in_channels=data.input_shape[-1],
                   stem="small", rngs=nnx.Rngs(args.seed))
    start = time.perf_counter()
    history = fit(model, classification_loss, (data.x_train, data.y_train), epochs=epochs, batch_size=_BATCH,
                  seed=args.seed)
    train_seconds = time.perf_counter() - start
    net = Network.from_module(model, data.input_shape)
    steps = len(history["loss"]) // epochs  # per epoch
    results = {
        "test accuracy": f"{accuracy(net, data.x_test, data.y_test):.4f} ({len(data.x_test)} images)",
        "training loss / accuracy, last epoch": f"{history['loss'][-steps:].mean():.4f} / "
                                                f"{history['accuracy'][-steps:].mean():.4f}",
        "parameters": f"{_count(nnx.state(model, nnx.Param)):,}",
        "training time": f"{train_seconds:.1f} s including compilation ({len(history['loss'])} steps, {epochs} "
                         f"epochs, batch {_BATCH}, on {jax.devices()[0].platform})",
    }
    config = f"ResNet(basic, layers={layers}, width={width}, stem=small), seed {args.seed}"
    report = _report(config, results, net.sites(batch=1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "report.md"
    _write_atomic(path, report)
    print(f"test accuracy {results['test accuracy']}; report written to {path}")
    return 0


def _count(state) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state))


def _report(config: str, results: dict[str, str], sites) -> str:
    lines = ["# jaxequiv demo: small ResNet on 8x8 digits", "",
             f"Model: {config}. Data: scikit-learn digits, stratified 75/25 split, NHWC, normalised with the "
             "training mean and std.", "", "| result | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results.items()]
    lines += ["", "## Sites", "", "Per-example shapes (the batch axis comes first in every site); use these names with "
              "`jaxequiv.run(..., capture=..., edits=...)`.", "", "| site | shape | axes |", "|---|---|---|"]
    lines += [f"| `{name}` | {tuple(info.shape[1:])} | {', '.join(info.axes[1:])} |"
              for name, info in sites.items()]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
