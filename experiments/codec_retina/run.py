"""CODEC's retina case study on simulated ganglion cells: ``python experiments/codec_retina/run.py [--quick]``.

Simulates four types of LN ganglion cells (:mod:`cells`), trains the deep-retina CNN (:mod:`model`) on their Poisson
spike counts to white-noise and 1/f movies, then runs CODEC's retina pipeline (spec ``papers/codec.md`` §6, Figure 8)
on held-out 1/f movies: integrated gradients (20 steps) of every conv unit toward the surprisal of the predicted
rates, the [negative | positive] sign split summed over space, one STSAE per conv layer (K = 10 d, theta 0.9), each
cell's mode usage (correlation of mode loadings with its predicted rate), k-means of the cells by usage and the
adjusted Rand index of the clusters against the true types, beside baselines (activation modes, raw contribution
channels, the cells' responses, the spike-triggered average). Writes ``results.json`` and PNGs to the output
folder. Settings: ``config.json`` next to this file (presets ``quick`` and ``full``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a script: make ``experiments.codec_retina`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxequiv.io.config import from_preset  # noqa: E402

SITES = ("conv1", "conv2")
SOURCES = {"contribution": "concat", "activation": "activations"}  # CODEC source -> store variant


@dataclasses.dataclass(frozen=True)
class RetinaConfig:
    """Settings of one run (see ``config.json``)."""

    size: int = 18  # stimulus side (pixels)
    lags: int = 20  # frames of stimulus history the cells and the CNN see
    per_type: int = 8  # cells of each of the 4 types
    pink_contrast: float = 0.3
    train_frames: int = 10000  # training movie: white-noise and 1/f segments alternating
    segment: int = 500
    test_frames: int = 2000  # each held-out movie (white noise; 1/f, the one CODEC analyses)
    channels: tuple[int, int] = (8, 8)
    kernels: tuple[int, int] = (7, 5)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    ig_steps: int = 20
    chunk_size: int = 128
    sae_expansion: int = 10
    sae_theta: float = 0.7
    sae_l1: float = 1e-4
    sae_steps: int = 3000
    sae_batch: int = 128
    sae_lr: float = 1e-3
    sae_seeds: int = 3
    null_rounds: int = 2000
    seed: int = 0

    @classmethod
    def from_json(cls, path: str, preset: str) -> RetinaConfig:
        """The ``preset`` ("quick" or "full") entry of a JSON config file."""
        return from_preset(cls, path, preset)


@dataclasses.dataclass
class Data:
    """The simulated experiment: cells, and per movie (``train``, ``white``, ``pink``) the stimulus histories
    ``[N, H, W, L]``, true rates and spike counts ``[N, n_cells]``."""

    cells: object
    x: dict
    rate: dict
    counts: dict


def simulate(cfg: RetinaConfig) -> Data:
    """Cells and movies, all drawn from ``cfg.seed`` (one NumPy generator per purpose)."""
    from experiments.codec_retina import cells as C

    cells = C.make_cells(cfg.seed, cfg.size, cfg.lags, cfg.per_type)
    stim = np.random.default_rng([cfg.seed, 1])
    noise = np.random.default_rng([cfg.seed, 2])
    segments = [C.white_noise(stim, cfg.segment, cfg.size) if i % 2 == 0 else
                C.pink_noise(stim, cfg.segment, cfg.size, contrast=cfg.pink_contrast)
                for i in range(-(-cfg.train_frames // cfg.segment))]
    movies = {"train": np.concatenate(segments)[:cfg.train_frames],
              "white": C.white_noise(stim, cfg.test_frames, cfg.size),
              "pink": C.pink_noise(stim, cfg.test_frames, cfg.size, contrast=cfg.pink_contrast)}
    x, rate, counts = {}, {}, {}
    for name, movie in movies.items():
        rate[name] = C.rates(cells, movie)[cfg.lags - 1:]  # bins with a full history
        counts[name] = C.spikes(noise, rate[name])
        x[name] = C.windows(movie, cfg.lags)
    return Data(cells, x, rate, counts)


@jax.jit
def _predict(net, x):
    return net.apply(net.params, x)


def predict(net, x: np.ndarray, chunk: int = 512) -> np.ndarray:
    """``[N, n_cells]`` predicted rates for stimulus histories ``x [N, H, W, L]``."""
    return np.concatenate([np.asarray(_predict(net, np.asarray(x[i:i + chunk]))) for i in range(0, len(x), chunk)])


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[n]`` Pearson correlation of each column of ``a [N, n]`` with the same column of ``b``."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def train_model(cfg: RetinaConfig, data: Data):
    """The fitted :class:`model.RetinaCNN` as a :class:`jaxequiv.Network`, and the training loss history."""
    import optax
    from flax import nnx

    from experiments.codec_retina.model import RetinaCNN, poisson_loss
    from jaxequiv.network import Network
    from jaxequiv.train import fit

    model = RetinaCNN(cfg.size, cfg.lags, len(data.cells.labels), tuple(cfg.channels), tuple(cfg.kernels),
                      rngs=nnx.Rngs(cfg.seed))
    hist = fit(model, poisson_loss, [data.x["train"], data.counts["train"]], epochs=cfg.epochs,
               batch_size=cfg.batch_size, optimizer=optax.adam(cfg.lr), seed=cfg.seed, progress=False)
    return Network.from_module(model, (cfg.size, cfg.size, cfg.lags)), hist["loss"]


def surprisal_target(rates: np.ndarray):
    """CODEC's retina target ``0.5 (y - mu)^T Sigma^-1 (y - mu)`` with the mean and covariance of the predicted
    rates ``[N, n_cells]`` over the analysed set (a 1e-6 x mean-variance ridge keeps Sigma invertible)."""
    from jaxequiv.contributions import targets

    sigma = np.cov(rates.astype(np.float64), rowvar=False)
    sigma += 1e-6 * np.trace(sigma) / len(sigma) * np.eye(len(sigma))
    return targets.surprisal(rates.mean(0), sigma)


def negative_first(concat: np.ndarray) -> np.ndarray:
    """The store's ``concat`` rows ``[positive | negative]`` reordered to the retina SAE's ``[negative |
    positive]`` (for pictures and channel features)."""
    c = concat.shape[1] // 2
    return np.concatenate([concat[:, c:], concat[:, :c]], axis=1)


def run(cfg: RetinaConfig, out_dir: str) -> dict:
    """The whole case study; writes ``out_dir/results.json`` and the figures and returns the results."""
    from experiments.codec_retina import analysis as A
    from experiments.codec_retina import figures
    from experiments.codec_retina.cells import TYPES
    from jaxequiv.codec import Stages, fit_modes
    from jaxequiv.contributions import build_store
    from jaxequiv.io.files import write_json
    from jaxequiv.io.provenance import provenance
    from jaxequiv.sae import TrainSettings, make

    started, start = time.time(), time.perf_counter()
    stages = Stages(prefix="[retina]")
    os.makedirs(out_dir, exist_ok=True)
    with stages("simulate cells and movies"):
        data = simulate(cfg)
    truth = data.cells.labels
    with stages("train CNN"):
        net, loss = train_model(cfg, data)
    with stages("held-out prediction"):
        pred = {m: predict(net, data.x[m]) for m in ("white", "pink")}
        corr = {m: {"counts": pearson_columns(pred[m], data.counts[m]),
                    "true_rate": pearson_columns(pred[m], data.rate[m]),
                    "ceiling": pearson_columns(data.rate[m], data.counts[m])} for m in pred}
    x, rates = data.x["pink"], pred["pink"]
    target = surprisal_target(rates)
    with stages("contributions (IG toward surprisal)"):
        store = build_store(net, x, os.path.join(out_dir, "store"), list(SITES), target=target,
                            steps=cfg.ig_steps, variants=("concat",), chunk_size=cfg.chunk_size, overwrite=True,
                            progress=False)
        t_real = np.asarray(target(jax.numpy.asarray(rates)))
        t_base = float(target(_predict(net, np.zeros((1, *x.shape[1:]), np.float32)))[0])
        gaps = {s: np.abs(np.asarray(store.array(s, "concat")).sum(1) - (t_real - t_base)) for s in SITES}
        completeness = {s: float(np.median(g) / np.std(t_real)) for s, g in gaps.items()}
    with stages(f"SAEs ({len(SITES) * len(SOURCES)} x {cfg.sae_seeds} seeds)"):
        settings = TrainSettings(batch_size=cfg.sae_batch, steps=cfg.sae_steps, lr=cfg.sae_lr)
        sae = functools.partial(make, "stsae", expansion=cfg.sae_expansion, theta=cfg.sae_theta, l1=cfg.sae_l1)
        fits = [fit_modes(store, list(SITES), settings, sae=lambda d: sae(d, hidden=d), sources=SOURCES, seed=s)
                for s in range(cfg.sae_seeds)]
    with stages("mode usage, k-means, ARI"):
        k = len(TYPES)
        channel = {(src, s): negative_first(np.asarray(store.array(s, v))) if v == "concat" else
                   np.asarray(store.array(s, v)) for src, v in SOURCES.items() for s in SITES}
        feats: dict[str, list[np.ndarray]] = {}
        for src in SOURCES:
            for s in SITES:
                feats[f"{src} modes, {s}"] = [A.usage(f[src][s].modes.alive_codes(), rates) for f in fits]
                feats[f"{src} channels, {s}"] = [A.usage(channel[(src, s)], rates)]
            feats[f"{src} modes, conv1+conv2"] = [np.concatenate(u, 1) for u in
                                                  zip(feats[f"{src} modes, conv1"], feats[f"{src} modes, conv2"])]
        feats["predicted rates (time series)"] = [rates.T]
        feats["STA temporal filter (white noise)"] = [A.sta_temporal(data.x["train"], data.counts["train"])]
        halves = {"polarity": np.array([TYPES[t][1] > 0 for t in truth], int),
                  "kinetics": np.array([TYPES[t][2] == "sustained" for t in truth], int)}
        methods = {}
        for name, runs in feats.items():
            rows = []
            for i, f in enumerate(runs):
                labels = A.cluster(f, k, cfg.seed)
                ari, p = A.ari_test(truth, labels, cfg.null_rounds, cfg.seed + i)
                k_sil, labels_sil = A.choose_k(f, cfg.seed)
                two = A.cluster(f, 2, cfg.seed)  # which split dominates: ON/OFF or sustained/transient
                rows.append({"ari": ari, "p": p, "k_silhouette": k_sil,
                             "ari_silhouette": float(A.adjusted_rand(truth, labels_sil)),
                             **{f"ari_k2_{h}": float(A.adjusted_rand(v, two)) for h, v in halves.items()},
                             "labels": labels.tolist(), "n_features": int(f.shape[1])})
            methods[name] = {"runs": rows, "ari_mean": float(np.mean([r["ari"] for r in rows])),
                             "ari_min": float(np.min([r["ari"] for r in rows])),
                             "ari_max": float(np.max([r["ari"] for r in rows])),
                             "p_max": float(np.max([r["p"] for r in rows]))}
    with stages("figures"):
        primary = "contribution modes, conv2"
        figures.draw_all(out_dir, data, corr, fits[0], feats[primary][0], methods, primary)
    sae_fit = {src: {s: {"r2_codec": [f[src][s].r2 for f in fits],
                         "n_alive": [int(f[src][s].modes.alive.sum()) for f in fits]} for s in SITES}
               for src in SOURCES}
    timings = {**stages.timings, "total": round(time.perf_counter() - start, 1)}
    res = {
        "provenance": provenance(cfg, seeds={"simulation, CNN, k-means": cfg.seed,
                                             "SAEs": list(range(cfg.sae_seeds))}, started=started),
        "types": [t[0] for t in TYPES], "cell_types": truth.tolist(), "n_cells": int(len(truth)),
        "frames": {m: int(len(v)) for m, v in data.x.items()},
        "mean_rate": {m: float(v.mean()) for m, v in data.rate.items()},
        "parameters": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(net.params))),
        "train_loss": {"first": float(loss[0]), "last": float(np.mean(loss[-20:]))},
        "heldout_corr": {m: {k2: v.tolist() for k2, v in c.items()} for m, c in corr.items()},
        "heldout_corr_median": {m: {k2: float(np.median(v)) for k2, v in c.items()} for m, c in corr.items()},
        "completeness_median_rel_gap": completeness,
        "sae_fit": sae_fit, "clustering": methods, "primary": primary, "timings_s": timings}
    write_json(os.path.join(out_dir, "results.json"), res)
    stages.log(f"[retina] total {timings['total']:.1f} s; results: {os.path.join(out_dir, 'results.json')}")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    parser.add_argument("--out", default=None, help="output folder (default: results/<preset> next to this file)")
    parser.add_argument("--config", default=os.path.join(HERE, "config.json"), help="settings file (presets)")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    cfg = RetinaConfig.from_json(args.config, preset)
    run(cfg, args.out or os.path.join(HERE, "results", preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
