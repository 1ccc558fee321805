"""The CODEC pipeline end to end on an image classifier: train a ResNet, store IG contributions and activations at
every block, train one STSAE per block on each, read out modes, run the analyses, interventions and pictures,
and write a report. Used by ``experiments/codec_images`` (full and ``--quick``) and by ``jaxequiv demo``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxequiv.io.config import from_dict

__all__ = ["CodecConfig", "QUICK", "FULL", "load_dataset", "train_classifier", "run_pipeline"]


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Settings of one pipeline run (see ``experiments/codec_images/config.json``)."""

    dataset: str = "auto"  # "auto" (Fashion-MNIST if installed, else MNIST), "fashion", "mnist", "digits"
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
        with open(path) as f:
            raw = json.load(f)
        if preset not in raw:
            raise ValueError(f"{path} has no preset {preset!r}; it has {sorted(raw)}")
        return from_dict(cls, raw[preset], where=f"{path}[{preset!r}]")


QUICK = CodecConfig(dataset="digits", blocks=(2, 2, 2, 2), width=8, epochs=30, batch_size=64, lr=3e-3,
                    chunk_size=150, sae_steps=600, sae_batch=128, trials=10, images_per_class=10,
                    percentages=(2, 10, 25, 50, 80, 99), picture_filter=1, picture_images=5)
FULL = CodecConfig()


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


def _balanced(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of ``n`` examples with classes as balanced as possible (sorted; all when ``n`` is None)."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = n // len(classes)
    idx = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(idx))


def train_classifier(data, cfg: CodecConfig, progress: bool = False):
    """Train the ResNet; returns ``(Network, test accuracy on the whole test set)``."""
    import optax
    from flax import nnx

    from jaxequiv.models.resnet import ResNet
    from jaxequiv.network import Network
    from jaxequiv.train import accuracy, classification_loss, fit

    idx = _balanced(data.y_train, cfg.n_train, cfg.seed)
    model = ResNet("basic", cfg.blocks, width=cfg.width, num_classes=data.num_classes,
                   in_channels=data.input_shape[-1], stem="small", rngs=nnx.Rngs(cfg.seed))
    steps = cfg.epochs * (len(idx) // min(cfg.batch_size, len(idx)))
    tx = optax.adam(optax.cosine_decay_schedule(cfg.lr, max(steps, 1)))
    fit(model, classification_loss, (data.x_train[idx], data.y_train[idx].astype(np.int32)), epochs=cfg.epochs,
        batch_size=cfg.batch_size, optimizer=tx, seed=cfg.seed, progress=progress)
    net = Network.from_module(model, data.input_shape)
    return net, float(accuracy(net, data.x_test, data.y_test.astype(np.int32)))


def run_pipeline(cfg: CodecConfig, out_dir: str, *, title: str = "CODEC on an image ResNet", progress: bool = False,
                 log: Callable[[str], None] = print) -> str:
    """Run everything and write ``out_dir/report.md`` (+ PNGs, ``results.json``); returns the report's path."""
    import jax

    from jaxequiv.codec import interventions as I
    from jaxequiv.codec import metrics as M
    from jaxequiv.codec.analysis import layer_statistics, mode_selectivity
    from jaxequiv.codec.pictures import mode_picture_maps, picture_mask
    from jaxequiv.codec.report import CodecResults, findings, write_report
    from jaxequiv.io.files import write_json
    from jaxequiv.contributions.driver import build_store
    from jaxequiv.contributions.reduce import normalise_global_std
    from jaxequiv.sae import evaluate, make, readout, train_many
    from jaxequiv.sae.train import TrainSettings

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name):
        timings[name] = round(time.time() - t0 - sum(timings.values()), 1)
        log(f"[codec] {name}: {timings[name]:.1f} s")

    os.makedirs(out_dir, exist_ok=True)
    data, used = load_dataset(cfg.dataset)
    net, acc = train_classifier(data, cfg, progress)
    lap("train classifier")
    log(f"[codec] {used}: test accuracy {acc:.4f}")

    ana = _balanced(data.y_test, cfg.n_analysis, cfg.seed + 1)
    x, y = data.x_test[ana], data.y_test[ana].astype(np.int64)
    store = build_store(net, x, os.path.join(out_dir, "store"), "layer*", labels=y, method="ig",
                        target="top1", steps=cfg.ig_steps, chunk_size=cfg.chunk_size, overwrite=True,
                        progress=progress, variants=("positive", "negative", "sum"),
                        info={"dataset": used, "blocks": list(cfg.blocks), "width": cfg.width})
    sites = store.sites
    lap("contributions (IG)")

    stats = layer_statistics(store, sites)
    lap("layer statistics")

    sources = {"contribution": "positive", "activation": "activations"}
    inputs = {(src, s): normalise_global_std(np.asarray(store.array(s, var)))[0]
              for src, var in sources.items() for s in sites}
    configs = [make("stsae", v.shape[1], expansion=cfg.sae_expansion, theta=cfg.sae_theta, l1=cfg.sae_l1)
               for v in inputs.values()]
    # one job: each SAE trains on its own (source, site) data, SAEs of equal width in one vmapped group
    settings = TrainSettings(batch_size=cfg.sae_batch, steps=cfg.sae_steps, lr=cfg.sae_lr, log_every=200,
                             data_seed=cfg.seed)
    trained = train_many(configs, list(inputs.values()), seeds=[cfg.seed] * len(configs), settings=settings)
    modes, r2 = {}, {}
    for (key, v), tr in zip(inputs.items(), trained):
        modes[key] = readout(tr.cfg, tr.params, v, tr.state)
        r2[key] = evaluate(tr.cfg, tr.params, v, tr.state)["r2_codec"]
    lap(f"SAEs ({len(configs)})")

    sel = {src: mode_selectivity({s: modes[(src, s)] for s in sites}, store, var, n_classes=data.num_classes)
           for src, var in sources.items()}
    lap("class selectivity")

    inter: dict[str, dict[str, Any]] = {}
    for s in sites:
        inter[s] = {}
        for src in sources:
            m = modes[(src, s)]
            corr = sel[src][s].corr
            inter[s][src] = I.mode_intervention(net, x, y, s, m.alive_atoms(), corr, jax.random.key(cfg.seed),
                                                percentages=cfg.percentages, n_trials=cfg.trials,
                                                n_images=cfg.images_per_class)
    lap("interventions")

    concept = np.isin(y, cfg.superclass).astype(np.int64)
    sup_sites = sites[-cfg.superclass_blocks:]
    sup_modes = {s: modes[("contribution", s)] for s in sup_sites}
    concept_corr = {s: np.asarray(M.class_correlation(m.alive_codes(), concept, 2))[:, 1]
                    for s, m in sup_modes.items()}
    sup_atoms = {s: m.alive_atoms() for s, m in sup_modes.items()}
    superclass = {kind: I.superclass_intervention(net, x, y, sup_atoms, concept_corr, pct, kind,
                                                  n_classes=data.num_classes)
                  for kind, pct in zip(I.KINDS, cfg.superclass_pct)}
    lap("superclass interventions")

    pic_site = sites[len(sites) // 2]
    pred = np.asarray(store.predictions)
    good = np.flatnonzero(pred == y)
    chosen = [good[y[good] == c][0] for c in np.unique(y[good])][: cfg.picture_images]
    cm = modes[("contribution", pic_site)]
    top = sel["contribution"][pic_site].modes.top_mode
    atoms = cm.alive_atoms()[np.asarray(top)[y[chosen]]]
    maps = mode_picture_maps(net, x[chosen], pic_site, atoms, y[chosen], n_channels=cfg.picture_channels)
    masks = picture_mask(np.asarray(maps.total), size=cfg.picture_filter, gamma=cfg.picture_gamma)
    pictures = {"images": x[chosen], "masks": masks, "site": pic_site,
                "titles": [f"{data.class_names[c]}: mode {int(top[c])}" for c in y[chosen]]}
    lap("pictures")

    meta = {
        "data set": f"{used}: {len(data.y_train)} train / {len(data.y_test)} test images, "
                    f"{len(y)} analysed (class-balanced test subset)",
        "network": f"ResNet (basic blocks {list(cfg.blocks)} = {sum(cfg.blocks)} residual blocks, width "
                   f"{cfg.width}, small stem), {net.param_count():,} parameters",
        "test accuracy": f"{acc:.4f}",
        "contributions": f"integrated gradients, {cfg.ig_steps} steps, top-1 logit (recomputed at every step), "
                         "zero baseline",
        "SAEs": f"STSAE per block on 'positive' contributions and on activations (global-std normalised), "
                f"K = {cfg.sae_expansion}*C, theta {cfg.sae_theta}, l1 {cfg.sae_l1}, {cfg.sae_steps} steps; "
                "alive modes / R^2 (CODEC's: global-mean, r2_codec): " + ", ".join(
                    f"{s} {modes[('contribution', s)].alive.sum()}/{r2[('contribution', s)]:.2f} (contrib.) "
                    f"{modes[('activation', s)].alive.sum()}/{r2[('activation', s)]:.2f} (act.)" for s in sites),
        "interventions": f"{cfg.trials} trials x {len(cfg.percentages)} percentages {list(cfg.percentages)}, "
                         f"{cfg.images_per_class} images per class, seed {cfg.seed}",
        "config": json.dumps(dataclasses.asdict(cfg)),
    }
    sup = {"classes": [data.class_names[c] for c in range(data.num_classes)], "concept": list(cfg.superclass),
           "sites": sup_sites, "results": {f"{k} {p}%": superclass[k] for k, p in zip(I.KINDS, cfg.superclass_pct)}}
    res = CodecResults(stats, sel, inter, pictures, meta, sup)
    path = write_report(out_dir, res, title)
    timings["report"] = round(time.time() - t0 - sum(timings.values()), 1)
    timings["total"] = round(time.time() - t0, 1)
    summary = {
        "dataset": used, "test_accuracy": acc, "sites": sites, "timings_s": timings,
        "findings": {k: {"holds": bool(v["holds"]), "evidence": v["evidence"]} for k, v in findings(res).items()},
        "hoyer_contrib_median": [float(np.nanmedian(h)) for h in stats.hoyer_contrib],
        "hoyer_act_median": [float(np.nanmedian(h)) for h in stats.hoyer_act],
        "decorrelation_median": [float(np.nanmedian(d)) for d in stats.decorrelation],
        "dim_contrib": stats.dim_contrib, "dim_act": stats.dim_act,
        "median_top_corr": {src: [float(sel[src][s].modes.median_top_corr) for s in sites] for src in sources},
        "ablate_auc": {src: [float(I.auc_summary(inter[s][src])[0, 0]) for s in sites] for src in sources},
        "preserve_auc": {src: [float(I.auc_summary(inter[s][src])[1, 0]) for s in sites] for src in sources},
        "superclass": {kind: {"classes": list(cfg.superclass), "sites": sup_sites,
                              "before": superclass[kind].original[:, 0].tolist(),
                              "after": superclass[kind].perturbed[:, 0].tolist()} for kind in I.KINDS},
        "sae_r2": {f"{src}/{s}": r2[(src, s)] for src, s in r2},
    }
    write_json(os.path.join(out_dir, "results.json"), summary)
    log(f"[codec] total {timings['total']:.1f} s; report: {path}")
    return path
