"""CODEC findings (a)-(f) as a function of SAE training budget, SAE hyper-parameters and network width, with PCA /
NMF modes as a non-SAE baseline: ``python experiments/codec_images/sensitivity.py [--quick | --preset P]``.

For every network width the ResNet of ``config.json`` (preset ``base``, with the overrides of ``network``) is
trained and its contributions store written (:func:`network_and_store`). Then, for every block and budget, the
SAE grid (expansion x theta x lambda_D x seeds, on contributions and on activations: CODEC's 81-SAE sweep per
source) trains in one :func:`jaxequiv.sae.train_many` job; widths not in ``grid_widths`` get the paper's slice
(expansion 3, lambda_D 1e-4; every theta and seed). Every SAE gets CODEC's R^2, its alive modes and finding (e)'s
statistic (median top class correlation of its modes); the slice SAEs with a theta in ``intervention_thetas`` at the
largest budget also get finding (f)'s (ablation AUC of each class's top mode, :func:`jaxequiv.codec.mode_intervention`
with the same trials for every SAE). PCA and NMF of the same arrays, with as many components as those SAEs have alive
modes, go through the same statistics. :func:`summarize` turns the records into findings with confidence intervals
over SAE seeds (t intervals; bootstrap over images for the SAE-free (a)-(d)) and into tests of the README's three
explanations of the (e)/(f) misses. Settings: ``sensitivity.json`` (presets ``quick``, ``full``, ``paper``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):  # run as a script: make ``experiments.codec_images`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from experiments.codec_images.paper import e_holds, f_holds  # noqa: E402
from experiments.codec_images.run import CodecConfig, load_dataset  # noqa: E402
from jaxequiv.io.config import from_preset  # noqa: E402

SOURCES = ("contribution", "activation")
DEEP = 2  # the deepest blocks, where (e) reverses in the committed run
NO_MISS = "no deep-block miss here"  # the verdict where the SAEs' deep-block (e) gap is never negative
MIN_R2 = 0.5  # SAEs fitting worse (CODEC R^2) are left out of the mode-count comparison


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """One sweep (see ``sensitivity.json``). Budgets are SAE epochs over the analysed images."""

    base: str = "full"  # preset of config.json: data, network, IG and intervention settings
    network: dict = dataclasses.field(default_factory=dict)  # overrides of the base preset (CodecConfig fields)
    widths: tuple[int, ...] = (8, 16)
    grid_widths: tuple[int, ...] = (8,)  # widths that get the whole grid (others: the slice)
    expansions: tuple[int, ...] = (1, 3, 5)  # K = expansion * C
    thetas: tuple[float, ...] = (0.5, 0.7, 0.9)
    l1s: tuple[float, ...] = (0.0, 1e-4, 1e-2)  # lambda_D
    seeds: tuple[int, ...] = (483, 1001, 2002)  # the paper's sweep seeds
    slice_expansion: int = 3
    slice_l1: float = 1e-4
    budgets: tuple[float, ...] = (20, 80)
    sae_batch: int = 128
    sae_lr: float = 1e-3
    chunk_steps: int = 25  # steps per compiled training chunk (budgets are rounded to a multiple)
    intervention_thetas: tuple[float, ...] = (0.7,)
    trials: int = 10
    images_per_class: int = 10
    percentages: tuple[float, ...] = (5, 10, 25, 50, 80, 99)
    baselines: tuple[str, ...] = ("pca", "nmf")
    bootstrap: int = 200

    @classmethod
    def from_json(cls, path: str, preset: str) -> SensitivityConfig:
        cfg = from_preset(cls, path, preset)
        if not set(cfg.intervention_thetas) <= set(cfg.thetas):
            raise ValueError(f"intervention_thetas {cfg.intervention_thetas} must be among thetas {cfg.thetas}")
        if not set(cfg.grid_widths) <= set(cfg.widths):
            raise ValueError(f"grid_widths {cfg.grid_widths} must be among widths {cfg.widths}")
        if cfg.grid_widths and (cfg.slice_expansion not in cfg.expansions or cfg.slice_l1 not in cfg.l1s):
            raise ValueError(f"the slice (expansion {cfg.slice_expansion}, l1 {cfg.slice_l1}) must be in the grid "
                             f"(expansions {cfg.expansions}, l1s {cfg.l1s}); set slice_expansion / slice_l1")
        return cfg

    def network_config(self, width: int, config_path: str = os.path.join(HERE, "config.json")) -> CodecConfig:
        """The :class:`CodecConfig` of the network of ``width``: the base preset with this sweep's overrides."""
        return from_preset(CodecConfig, config_path, self.base, **{**self.network, "width": width})

    def axes(self, width: int) -> dict[str, tuple]:
        """The SAE grid trained at ``width`` as :func:`jaxequiv.sae.codec_sweep` arguments."""
        grid = width in self.grid_widths
        return dict(expansions=self.expansions if grid else (self.slice_expansion,), thetas=self.thetas,
                    l1s=self.l1s if grid else (self.slice_l1,), seeds=self.seeds)


def network_and_store(cfg: CodecConfig, store_dir: str, stages, progress: bool = False):
    """Train ``cfg``'s ResNet and write the contributions store of its analysed images, as
    :func:`jaxequiv.demo.train_and_analyze` does before the SAEs; returns ``(net, accuracy, x, y, store, dataset)``."""
    from jaxequiv.codec import codec_store
    from jaxequiv.demo import balanced_subset, train_resnet

    with stages("load data"):
        data, used = load_dataset(cfg.dataset)
    demo = cfg.demo(used)
    with stages(f"train classifier (width {cfg.width})"):
        net, acc = train_resnet(data, blocks=demo.blocks, width=demo.width, epochs=demo.epochs,
                                batch_size=demo.batch_size, lr=demo.lr, n_train=demo.n_train, seed=demo.seed,
                                progress=progress)
    ana = balanced_subset(data.y_test, demo.n_analysis, demo.seed + 1)  # the subset analyze() is given
    x, y = data.x_test[ana], data.y_test[ana].astype(np.int64)
    with stages(f"contributions (IG, width {cfg.width})"):
        store = codec_store(net, x, y, "layer*", store_dir, demo.analysis, overwrite=True, progress=progress)
    return net, acc, x, y, store, used


def _steps(cfg: SensitivityConfig, epochs: float, n: int) -> int:
    """SAE steps of a budget of ``epochs`` over ``n`` rows, rounded to whole chunks (at least one)."""
    return max(1, round(epochs * n / cfg.sae_batch / cfg.chunk_steps)) * cfg.chunk_steps


def train_block(cfg: SensitivityConfig, store, site: str, axes: dict[str, tuple], epochs: float) -> list[dict]:
    """The SAE grid ``axes`` (:func:`jaxequiv.sae.codec_sweep`) on both sources of ``site`` in one ``train_many``
    job: one record per SAE with CODEC's R^2, alive modes and the (e) statistic; ``_modes`` (its
    :class:`~jaxequiv.sae.Modes`) and ``_corr`` are kept for the interventions."""
    from jaxequiv.codec import mode_selectivity
    from jaxequiv.codec.modes import SOURCES as VARIANT
    from jaxequiv.contributions.reduce import normalise_global_std
    from jaxequiv.sae import FitWarning, TrainSettings, codec_sweep, evaluate, readout, train_many

    xs = {src: normalise_global_std(np.asarray(store.array(site, VARIANT[src])))[0] for src in SOURCES}
    sweep, seeds = codec_sweep(xs[SOURCES[0]].shape[1], **axes)
    settings = [(n, t, l1, sd) for n in axes["expansions"] for t in axes["thetas"] for l1 in axes["l1s"]
                for sd in axes["seeds"]]  # codec_sweep's order
    jobs = [(src, s) for src in SOURCES for s in settings]
    configs = sweep * len(SOURCES)
    steps = _steps(cfg, epochs, store.n)
    train = TrainSettings(batch_size=cfg.sae_batch, steps=steps, lr=cfg.sae_lr, log_every=cfg.chunk_steps,
                          data_seed=cfg.seeds[0])
    with warnings.catch_warnings():  # poor fits at small budgets are part of what is measured
        warnings.simplefilter("ignore", FitWarning)
        trained = train_many(configs, [xs[src] for src, _ in jobs], seeds=seeds * len(SOURCES), settings=train)
    out = []
    for (src, (n, t, l1, seed)), tr in zip(jobs, trained):
        x = xs[src]
        modes = readout(tr.cfg, tr.params, x, tr.state)
        ev = evaluate(tr.cfg, tr.params, x, tr.state)
        rec = dict(site=site, source=src, epochs=epochs, steps=steps, expansion=n, theta=t, l1=l1, seed=seed,
                   r2_codec=float(ev["r2_codec"]), n_alive=int(np.sum(modes.alive)), top_corr=float("nan"))
        if rec["n_alive"]:
            sel = mode_selectivity({site: modes}, store, VARIANT[src])[site]
            rec.update(top_corr=float(sel.modes.median_top_corr), _modes=modes, _corr=sel.corr)
        out.append(rec)
    return out


def baseline_modes(method: str, x: np.ndarray, k: int, seed: int = 0):
    """Modes (codes (N, k), alive, atoms (k, C)) of a rank-``k`` PCA or NMF of ``x`` (N, C), and CODEC's R^2 of its
    reconstruction. PCA atoms are signed so that their channel sum is positive (CODEC ranks channels by atom value);
    NMF needs ``x >= 0`` (positive contributions, post-ReLU activations)."""
    from sklearn.decomposition import NMF, PCA

    from jaxequiv.sae.metrics import Modes, r2_codec

    if method == "pca":
        model = PCA(n_components=k, random_state=seed).fit(x)
        sign = np.where(model.components_.sum(axis=1) < 0, -1.0, 1.0)
        codes, atoms = model.transform(x) * sign, model.components_ * sign[:, None]
        x_hat = model.inverse_transform(model.transform(x))
    elif method == "nmf":
        if x.min() < 0:
            raise ValueError(f"NMF needs non-negative data, got a minimum of {x.min():g}")
        model = NMF(n_components=k, init="nndsvda", max_iter=500, random_state=seed)
        codes = model.fit_transform(x)
        atoms = model.components_
        x_hat = codes @ atoms
    else:
        raise ValueError(f"baseline method must be 'pca' or 'nmf', got {method!r}")
    codes = np.asarray(codes, np.float32)
    alive = np.any(codes != 0, axis=0)
    return Modes(codes, alive, np.asarray(atoms, np.float32)), float(r2_codec(x, x_hat))


def _ablation(net, x, y, site, modes, corr, cfg: SensitivityConfig, seed: int) -> tuple[float, float]:
    """Finding (f)'s statistics of one mode set: (ablate, preserve) (AUC_target - AUC_off) / AUC_off at top-1."""
    from jaxequiv.codec.interventions import auc_summary, mode_intervention

    r = mode_intervention(net, x, y, site, modes.alive_atoms(), corr, seed, percentages=cfg.percentages,
                          n_trials=cfg.trials, n_images=cfg.images_per_class)
    s = auc_summary(r)
    return float(s[0, 0]), float(s[1, 0])


def bootstrap_ci(stat, n: int, reps: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of ``stat(idx)`` over ``reps`` resamples of ``n`` rows with replacement."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)], np.float64)
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def representation_findings(store, sites, labels, reps: int, seed: int) -> dict[str, Any]:
    """Findings (a)-(d), which need no SAE, with 95 % bootstrap intervals over the analysed images: per block the
    median-Hoyer gap (contributions - activations), Spearman(depth, median Hoyer / median -corr(neg, pos)), and the
    class-mean dimensionalities."""
    from scipy.stats import spearmanr

    from jaxequiv.codec import layer_statistics
    from jaxequiv.codec import metrics as M

    st = layer_statistics(store, sites)
    n = len(labels)
    hc, ha, dec = np.stack(st.hoyer_contrib), np.stack(st.hoyer_act), np.stack(st.decorrelation)  # (B, N)
    gap = lambda i: np.median(hc[:, i], axis=1) - np.median(ha[:, i], axis=1)  # noqa: E731
    rho = lambda v: float(spearmanr(np.arange(len(v)), v)[0])  # noqa: E731
    arrays = {v: [np.asarray(store.array(s, v), np.float32) for s in sites] for v in ("sum", "activations")}
    dims = lambda v, i: [int(M.dimensionality(a[i], labels[i])[0]) for a in arrays[v]]  # noqa: E731
    everything = np.arange(n)
    cis = {
        "hoyer_gap": [bootstrap_ci(lambda i, b=b: gap(i)[b], n, reps, seed) for b in range(len(sites))],
        "spearman_hoyer": bootstrap_ci(lambda i: rho(np.median(hc[:, i], axis=1)), n, reps, seed),
        "spearman_decorrelation": bootstrap_ci(lambda i: rho(np.nanmedian(dec[:, i], axis=1)), n, reps, seed),
    }
    reps_dim = max(reps // 4, 20)  # the dimensionality is an integer; fewer resamples suffice
    rng = np.random.default_rng(seed)
    boot = [(dims("sum", i), dims("activations", i)) for i in (rng.integers(0, n, n) for _ in range(reps_dim))]
    higher = np.mean([[c > a for c, a in zip(bc, ba)] for bc, ba in boot], axis=0)
    return {
        "hoyer_gap": gap(everything).tolist(), "hoyer_gap_ci": cis["hoyer_gap"],
        "hoyer_contrib": np.median(hc, axis=1).tolist(), "hoyer_act": np.median(ha, axis=1).tolist(),
        "spearman_hoyer": rho(np.median(hc, axis=1)), "spearman_hoyer_ci": cis["spearman_hoyer"],
        "decorrelation": np.nanmedian(dec, axis=1).tolist(),
        "spearman_decorrelation": rho(np.nanmedian(dec, axis=1)),
        "spearman_decorrelation_ci": cis["spearman_decorrelation"],
        "dim_contrib": list(st.dim_contrib), "dim_act": list(st.dim_act),
        "dim_contrib_higher_frac": higher.tolist(),  # fraction of resamples with dim contrib > dim act, per block
    }


def channel_selectivity(store, sites, labels, reps: int, seed: int) -> dict[str, Any]:
    """Median top class correlation of the raw channels (no decomposition), per source and block, with 95 %
    bootstrap intervals of the gap contributions - activations over the analysed images."""
    from jaxequiv.codec import metrics as M
    from jaxequiv.codec.modes import SOURCES as VARIANT

    n_classes = int(labels.max()) + 1
    arrays = {src: [np.asarray(store.array(s, VARIANT[src]), np.float32) for s in sites] for src in SOURCES}

    def top(src, b, i):
        return float(np.median(np.nanmax(np.asarray(M.class_correlation(arrays[src][b][i], labels[i], n_classes)),
                                         axis=1)))

    every = np.arange(len(labels))
    out = {src: [top(src, b, every) for b in range(len(sites))] for src in SOURCES}
    out["gap_ci"] = [bootstrap_ci(lambda i, b=b: top("contribution", b, i) - top("activation", b, i), len(labels),
                                  max(reps // 4, 20), seed) for b in range(len(sites))]
    return out


def run_width(cfg: SensitivityConfig, width: int, out_dir: str, stages, config_path: str,
              progress: bool = False) -> dict[str, Any]:
    """Everything measured on the network of ``width``: ``{"network", "representation", "channels", "records",
    "baselines"}`` (records: one per SAE, without the arrays)."""
    before = set(stages.timings)
    ncfg = cfg.network_config(width, config_path)
    net, acc, x, y, store, used = network_and_store(ncfg, os.path.join(out_dir, f"store_w{width}"), stages, progress)
    sites = store.sites
    with stages(f"findings (a)-(d), channels (width {width})"):
        rep = representation_findings(store, sites, y, cfg.bootstrap, ncfg.seed)
        chan = channel_selectivity(store, sites, y, cfg.bootstrap, ncfg.seed)
    axes = cfg.axes(width)
    per_block = len(SOURCES) * math.prod(len(v) for v in axes.values())
    records: list[dict] = []
    for epochs in cfg.budgets:
        with stages(f"SAEs ({per_block} per block x {len(sites)} blocks, {epochs:g} epochs, width {width})"):
            for site in sites:
                records += train_block(cfg, store, site, axes, epochs)
    top_budget = cfg.budgets[-1]
    chosen = [r for r in records if r["epochs"] == top_budget and r["theta"] in cfg.intervention_thetas
              and r["expansion"] == cfg.slice_expansion and r["l1"] == cfg.slice_l1 and "_modes" in r]
    with stages(f"interventions ({len(chosen)} SAEs, width {width})"):
        for r in chosen:
            r["ablate"], r["preserve"] = _ablation(net, x, y, r["site"], r["_modes"], r["_corr"], cfg, ncfg.seed)
    baselines = []
    with stages(f"PCA / NMF baselines (width {width})"):
        from jaxequiv.codec import mode_selectivity
        from jaxequiv.codec.modes import SOURCES as VARIANT
        from jaxequiv.contributions.reduce import normalise_global_std

        for site in sites:
            for src in SOURCES:
                alive = [r["n_alive"] for r in chosen if r["site"] == site and r["source"] == src]
                k = max(1, int(np.median(alive))) if alive else 1  # as many components as alive SAE modes
                xs = normalise_global_std(np.asarray(store.array(site, VARIANT[src])))[0]
                for method in cfg.baselines:
                    modes, r2 = baseline_modes(method, xs, min(k, xs.shape[1]), ncfg.seed)
                    sel = mode_selectivity({site: modes}, store, VARIANT[src])[site]
                    ab, pr = _ablation(net, x, y, site, modes, sel.corr, cfg, ncfg.seed)
                    baselines.append(dict(site=site, source=src, method=method, k=int(modes.atoms.shape[0]),
                                          r2_codec=r2, top_corr=float(sel.modes.median_top_corr), ablate=ab,
                                          preserve=pr))
    for r in records:
        r.pop("_modes", None)
        r.pop("_corr", None)
    return {"network": {"width": width, "dataset": used, "test_accuracy": acc, "parameters": net.param_count(),
                        "n_analysed": int(store.n), "sites": list(sites), "config": dataclasses.asdict(ncfg)},
            "representation": rep, "channels": chan, "records": records, "baselines": baselines,
            "timings_s": {k: v for k, v in stages.timings.items() if k not in before}}


# ---------------------------------------------------------------------------------------------------------
# Summaries: findings with confidence intervals over SAE seeds, and the tests of the explanations


def t_ci(values) -> tuple[float, float, float]:
    """Mean and 95 % t interval of ``values`` (one per seed); the interval is NaN for fewer than 2 values."""
    from scipy.stats import t

    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    h = float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def _paired(records, key: str, sites, **match) -> dict[tuple, dict[str, list[float]]]:
    """``{(expansion, theta, l1, seed): {source: [value per block]}}`` of the records matching ``match``."""
    out: dict[tuple, dict[str, list[float]]] = {}
    index = {s: i for i, s in enumerate(sites)}
    for r in records:
        if any(r[k] != v for k, v in match.items()) or key not in r:
            continue
        row = out.setdefault((r["expansion"], r["theta"], r["l1"], r["seed"]), {}).setdefault(
            r["source"], [float("nan")] * len(sites))
        row[index[r["site"]]] = r[key]
    return {k: v for k, v in out.items() if len(v) == len(SOURCES)}


def _by_seed(pairs: dict[tuple, dict[str, list[float]]], fn) -> list[float]:
    """``fn(contrib, act)`` averaged over the settings of each seed (NaN: an SAE without alive modes is left out):
    one value per seed."""
    seeds = sorted({k[3] for k in pairs})
    out = []
    for s in seeds:
        vals = np.asarray([fn(v["contribution"], v["activation"]) for k, v in pairs.items() if k[3] == s],
                          np.float64)
        out.append(float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else float("nan"))
    return out


def summarize_width(cfg: SensitivityConfig, w: dict[str, Any]) -> dict[str, Any]:
    """Findings (e), (f), fits, baselines and the explanation tests of one width's measurements."""
    sites = w["network"]["sites"]
    nb = len(sites)
    deep = list(range(nb - DEEP, nb))
    rec = w["records"]
    dm = lambda c, a: float(np.mean([c[i] - a[i] for i in deep]))  # noqa: E731  deep-block (e) gap
    out: dict[str, Any] = {"e": [], "f": [], "grid": [], "fit": []}
    # (e) on the slice, per budget and theta: per-block gap contrib - act with a t interval over seeds
    for epochs in cfg.budgets:
        for theta in cfg.thetas:
            pairs = _paired(rec, "top_corr", sites, epochs=epochs, theta=theta, expansion=cfg.slice_expansion,
                            l1=cfg.slice_l1)
            gaps = [t_ci(_by_seed(pairs, lambda c, a, b=b: c[b] - a[b])) for b in range(nb)]
            out["e"].append(dict(
                epochs=epochs, theta=theta, gap=gaps, deep_gap=t_ci(_by_seed(pairs, dm)),
                contrib=[t_ci(_by_seed(pairs, lambda c, a, b=b: c[b]))[0] for b in range(nb)],
                act=[t_ci(_by_seed(pairs, lambda c, a, b=b: a[b]))[0] for b in range(nb)],
                holds=sum(e_holds(v["contribution"], v["activation"]) for v in pairs.values()), n=len(pairs)))
            fits = _paired(rec, "r2_codec", sites, epochs=epochs, theta=theta, expansion=cfg.slice_expansion,
                           l1=cfg.slice_l1)
            alive = _paired(rec, "n_alive", sites, epochs=epochs, theta=theta, expansion=cfg.slice_expansion,
                            l1=cfg.slice_l1)
            out["fit"].append(dict(
                epochs=epochs, theta=theta, steps=next(r["steps"] for r in rec if r["epochs"] == epochs),
                r2={src: [float(np.mean([v[src][b] for v in fits.values()])) for b in range(nb)] for src in SOURCES},
                alive={src: [float(np.mean([v[src][b] for v in alive.values()])) for b in range(nb)]
                       for src in SOURCES}))
    # (f) on the intervened SAEs
    for theta in cfg.intervention_thetas:
        pairs = _paired(rec, "ablate", sites, epochs=cfg.budgets[-1], theta=theta, expansion=cfg.slice_expansion,
                        l1=cfg.slice_l1)
        out["f"].append(dict(
            theta=theta, epochs=cfg.budgets[-1],
            contrib=[t_ci(_by_seed(pairs, lambda c, a, b=b: c[b])) for b in range(nb)],
            act=[t_ci(_by_seed(pairs, lambda c, a, b=b: a[b])) for b in range(nb)],
            holds=sum(f_holds(v["contribution"], v["activation"]) for v in pairs.values()), n=len(pairs)))
    # the grid (grid widths): deep-block alive modes, fit and (e) gap per (budget, expansion, theta), pooled over l1
    grid = w["network"]["width"] in cfg.grid_widths
    if grid:
        for epochs in cfg.budgets:
            for n in cfg.expansions:
                for theta in cfg.thetas:
                    sub = [r for r in rec if (r["epochs"], r["expansion"], r["theta"]) == (epochs, n, theta)
                           and sites.index(r["site"]) in deep]
                    pairs = _paired(rec, "top_corr", sites, epochs=epochs, expansion=n, theta=theta)
                    out["grid"].append(dict(
                        epochs=epochs, expansion=n, theta=theta, deep_gap=t_ci(_by_seed(pairs, dm)),
                        alive={src: float(np.mean([r["n_alive"] for r in sub if r["source"] == src]))
                               for src in SOURCES},
                        r2={src: float(np.mean([r["r2_codec"] for r in sub if r["source"] == src]))
                            for src in SOURCES},
                        holds=sum(e_holds(v["contribution"], v["activation"]) for v in pairs.values()),
                        n=len(pairs)))
    # baselines beside the SAE slice they are matched to
    base = {}
    for method in cfg.baselines:
        rows = {src: {r["site"]: r for r in w["baselines"] if r["method"] == method and r["source"] == src}
                for src in SOURCES}
        c = [rows["contribution"][s]["top_corr"] for s in sites]
        a = [rows["activation"][s]["top_corr"] for s in sites]
        ab_c = [rows["contribution"][s]["ablate"] for s in sites]
        ab_a = [rows["activation"][s]["ablate"] for s in sites]
        base[method] = dict(top_corr={"contribution": c, "activation": a}, ablate={"contribution": ab_c,
                                                                                     "activation": ab_a},
                            k={src: [rows[src][s]["k"] for s in sites] for src in SOURCES},
                            r2={src: [rows[src][s]["r2_codec"] for s in sites] for src in SOURCES},
                            e_holds=e_holds(c, a), f_holds=f_holds(ab_c, ab_a), deep_gap=dm(c, a))
    out["baselines"] = base
    out["explanations"] = explanations(cfg, w, out, deep, grid)
    return out


def explanations(cfg: SensitivityConfig, w: dict[str, Any], s: dict[str, Any], deep: list[int], grid: bool) -> dict:
    """The README's three explanations of the (e) miss at the deep blocks, each tested on this width's data.

    undertrained: more SAE training should move the deep-block (e) gap (contribution - activation top correlation)
    up; refuted when, with 95 % confidence, it moves down, or the largest budget closes less than half the gap the
    smallest leaves.
    more_modes: pairs of a contribution SAE and an activation SAE (same seed, the largest budget, any settings, both
    fitting with CODEC R^2 >= :data:`MIN_R2`) in which the contribution SAE has no more alive modes; if the
    explanation holds, contribution modes win there.
    class_coded: the raw channels (no decomposition) and PCA / NMF modes already show the reversal.
    Where the SAEs' deep-block gap is not negative at any budget there is no miss to explain (:data:`NO_MISS`).
    """
    sites = w["network"]["sites"]
    rec = w["records"]
    dm = lambda c, a: float(np.mean([c[i] - a[i] for i in deep]))  # noqa: E731
    lo_b, hi_b = cfg.budgets[0], cfg.budgets[-1]
    match = {} if grid else {"expansion": cfg.slice_expansion, "l1": cfg.slice_l1}
    p_lo = _paired(rec, "top_corr", sites, epochs=lo_b, **match)
    p_hi = _paired(rec, "top_corr", sites, epochs=hi_b, **match)
    f_lo, f_hi = _paired(rec, "r2_codec", sites, epochs=lo_b, **match), _paired(rec, "r2_codec", sites, epochs=hi_b,
                                                                                 **match)
    both = sorted(set(p_lo) & set(p_hi))
    seeds = sorted({k[3] for k in both})
    delta = [float(np.nanmean([dm(p_hi[k]["contribution"], p_hi[k]["activation"])
                               - dm(p_lo[k]["contribution"], p_lo[k]["activation"]) for k in both if k[3] == sd]))
             for sd in seeds]
    gap_lo = t_ci(_by_seed(p_lo, dm))
    gap_hi = t_ci(_by_seed(p_hi, dm))
    d = t_ci(delta)
    r2_gain = float(np.nanmean([np.mean([f_hi[k]["contribution"][i] - f_lo[k]["contribution"][i] for i in deep])
                             for k in both if k in f_hi and k in f_lo]))
    miss = any(np.isfinite(g[0]) and g[0] < 0 for g in (gap_lo, gap_hi))
    if gap_hi[1] > 0:
        verdict = "supported"
    elif d[2] < 0 or (gap_lo[0] < 0 and d[2] < -gap_lo[0] / 2):
        verdict = "refuted"
    else:
        verdict = "not decided"
    undertrained = dict(budgets=[lo_b, hi_b], gap_lo=gap_lo, gap_hi=gap_hi, delta=d, r2_gain_deep=r2_gain,
                        verdict=verdict if miss else NO_MISS)
    # more modes per class: contribution SAEs with no more alive modes than the activation SAE they are paired with
    by = {}
    for r in rec:
        if (r["epochs"] == hi_b and sites.index(r["site"]) in deep and np.isfinite(r["top_corr"])
                and r["r2_codec"] >= MIN_R2):
            by.setdefault((r["seed"], r["site"], r["source"]), []).append(r)
    per_seed, n_pairs = [], 0
    for sd in sorted({k[0] for k in by}):
        diffs = []
        for site in (sites[i] for i in deep):
            for rc in by.get((sd, site, "contribution"), []):
                for ra in by.get((sd, site, "activation"), []):
                    if rc["n_alive"] <= ra["n_alive"]:
                        diffs.append(rc["top_corr"] - ra["top_corr"])
        n_pairs += len(diffs)
        if diffs:
            per_seed.append(float(np.mean(diffs)))
    fewer = t_ci(per_seed)
    all_alive = {src: [r["n_alive"] for k, v in by.items() if k[2] == src for r in v] for src in SOURCES}
    mm = "supported" if fewer[1] > 0 else "refuted" if fewer[2] < 0 else "not decided"
    more_modes = dict(gap_fewer_or_equal=fewer, pairs=n_pairs, min_r2=MIN_R2,
                      alive_deep={src: float(np.mean(v)) if v else float("nan") for src, v in all_alive.items()},
                      verdict=(mm if n_pairs else "not decided") if miss else NO_MISS)
    # deep activations already class-coded: the reversal without any SAE
    ch = w["channels"]
    ch_gap = [ch["contribution"][i] - ch["activation"][i] for i in deep]
    ch_ci = [ch["gap_ci"][i] for i in deep]
    base_gaps = {m: b["deep_gap"] for m, b in s["baselines"].items()}
    if all(ci[1] < 0 for ci in ch_ci) and all(g < 0 for g in base_gaps.values()):
        cc = "supported"
    elif all(ci[0] > 0 for ci in ch_ci):
        cc = "refuted"
    else:
        cc = "not decided"
    dims = w["representation"]["dim_act"]
    class_coded = dict(channel_gap=ch_gap, channel_gap_ci=ch_ci, baseline_deep_gap=base_gaps,
                       dim_act_deep=[dims[i] for i in deep], verdict=cc if miss else NO_MISS)
    return {"undertrained": undertrained, "more_modes": more_modes, "class_coded": class_coded}


def draw(cfg: SensitivityConfig, widths: list[dict], summaries: list[dict], out_dir: str) -> list[str]:
    """Figures: (e) gap per block vs budget with CI bands, and (f) ablation per block with CI bands and the PCA /
    NMF baselines, one column per width. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxequiv.io.figures import interval_yerr

    names = []
    fig, axes = plt.subplots(2, len(widths), figsize=(5 * len(widths), 7.5), squeeze=False)
    mid = cfg.thetas[len(cfg.thetas) // 2]
    for j, (w, s) in enumerate(zip(widths, summaries)):
        sites = w["network"]["sites"]
        xb = np.arange(len(sites))
        a = axes[0, j]
        for k, e in enumerate(r for r in s["e"] if r["theta"] == mid):
            g = np.asarray(e["gap"], np.float64)
            a.plot(xb, g[:, 0], "o-", color=f"C{k}", label=f"SAE {e['epochs']:g} epochs")
            a.fill_between(xb, g[:, 1], g[:, 2], color=f"C{k}", alpha=0.2)
        for m, (method, b) in enumerate(s["baselines"].items()):
            gap = np.subtract(b["top_corr"]["contribution"], b["top_corr"]["activation"])
            a.plot(xb, gap, "s--", color=f"C{5 + m}", label=method.upper())
        a.axhline(0, color="k", lw=0.5)
        a.set(title=f"(e) width {w['network']['width']}: contrib. - act. mode top corr (theta {mid})",
              xticks=xb, xticklabels=sites, ylabel="gap (95% CI over SAE seeds)")
        a.tick_params(axis="x", rotation=45, labelsize=7)
        a.legend(fontsize=7)
        a = axes[1, j]
        for f in s["f"]:
            for src, color in (("contrib", "C3"), ("act", "C0")):
                v = np.asarray(f[src], np.float64)
                a.plot(xb, v[:, 0], "o-", color=color, label=f"SAE {src}. (theta {f['theta']})")
                a.fill_between(xb, v[:, 1], v[:, 2], color=color, alpha=0.2)
        for m, (method, b) in enumerate(s["baselines"].items()):
            a.plot(xb, b["ablate"]["contribution"], "--", color="C3", alpha=0.5, marker="sD"[m],
                   label=f"{method.upper()} contrib.")
            a.plot(xb, b["ablate"]["activation"], "--", color="C0", alpha=0.5, marker="sD"[m],
                   label=f"{method.upper()} act.")
        a.axhline(0, color="k", lw=0.5)
        a.set(title=f"(f) width {w['network']['width']}: ablating the class's top mode", xticks=xb,
              xticklabels=sites, ylabel="(AUC_target - AUC_off) / AUC_off")
        a.tick_params(axis="x", rotation=45, labelsize=7)
        a.legend(fontsize=6)
    fig.tight_layout()
    names.append("sensitivity_e_f.png")
    fig.savefig(os.path.join(out_dir, names[-1]), dpi=110)
    plt.close(fig)
    grid = [(w, s) for w, s in zip(widths, summaries) if s["grid"]]
    if grid:
        w, s = grid[0]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for k, epochs in enumerate(cfg.budgets):
            rows = [g for g in s["grid"] if g["epochs"] == epochs]
            ratio = [g["alive"]["contribution"] / max(g["alive"]["activation"], 1) for g in rows]
            gap = np.asarray([g["deep_gap"] for g in rows], np.float64)
            axes[0].errorbar(ratio, gap[:, 0], yerr=interval_yerr(gap[:, 0], gap[:, 1:]), fmt="o", color=f"C{k}",
                             label=f"{epochs:g} epochs")
            axes[1].plot([g["r2"]["contribution"] for g in rows], gap[:, 0], "o", color=f"C{k}",
                         label=f"{epochs:g} epochs")
        axes[0].set(xlabel="alive modes, contribution / activation SAE (deep blocks)",
                    ylabel="deep-block (e) gap, contrib. - act.",
                    title=f"width {w['network']['width']}: the grid (expansion x theta, pooled over lambda_D)")
        axes[1].set(xlabel="CODEC R^2 of the contribution SAE (deep blocks)", ylabel="deep-block (e) gap")
        for a in axes:
            a.axhline(0, color="k", lw=0.5)
            a.legend(fontsize=7)
        fig.tight_layout()
        names.append("sensitivity_grid.png")
        fig.savefig(os.path.join(out_dir, names[-1]), dpi=110)
        plt.close(fig)
    return names


def _clean(v):
    """JSON-able copy with floats rounded to 5 significant digits (NaN -> None)."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(f"{float(v):.5g}")
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def run(cfg: SensitivityConfig, out_dir: str, *, config_path: str = os.path.join(HERE, "config.json"),
        progress: bool = False) -> dict[str, Any]:
    """The sweep of ``cfg``; writes ``out_dir/results.json`` and the figures, returns the results."""
    from jaxequiv.codec import Stages
    from jaxequiv.io.files import write_json
    from jaxequiv.io.provenance import provenance

    start, started = time.perf_counter(), time.time()
    stages = Stages(prefix="[codec-sensitivity]")
    os.makedirs(out_dir, exist_ok=True)
    widths, resumed = [], []
    for wd in cfg.widths:  # each width's measurements are kept, so that a rerun resumes after the last one done
        done = os.path.join(out_dir, f"width{wd}.json")
        if os.path.exists(done):
            resumed.append(wd)
        else:
            write_json(done, run_width(cfg, wd, out_dir, stages, config_path, progress))
        with open(done) as f:
            widths.append(json.load(f))
    with stages("summaries and figures"):
        summaries = [summarize_width(cfg, w) for w in widths]
        figures = draw(cfg, widths, summaries, out_dir)
    timings = {k: v for w in widths for k, v in w["timings_s"].items()}
    timings["summaries and figures"] = stages.timings["summaries and figures"]
    # the stage times of every width, also of those measured by an earlier process this run resumed from
    timings["total"] = round(sum(timings.values()), 1)
    res = _clean({"provenance": provenance(cfg, seeds=list(cfg.seeds), started=started), "timings_s": timings,
                  "resumed_widths": resumed, "this_process_s": round(time.perf_counter() - start, 1),
                  "figures": figures,
                  "widths": [{**{k: v for k, v in w.items() if k != "records"}, "summary": s, "records": w["records"]}
                             for w, s in zip(widths, summaries)]})
    write_json(os.path.join(out_dir, "results.json"), res)
    stages.log(f"[codec-sensitivity] stages {timings['total']:.1f} s in all; {out_dir}/results.json")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset (bundled digits, tiny grid)")
    parser.add_argument("--preset", default=None, help="preset of the settings file (default: full, or quick)")
    parser.add_argument("--settings", default=os.path.join(HERE, "sensitivity.json"), help="sweep settings file")
    parser.add_argument("--config", default=os.path.join(HERE, "config.json"), help="network presets (config.json)")
    parser.add_argument("--out", default=None, help="output folder (default: results/sensitivity[_<preset>])")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    cfg = SensitivityConfig.from_json(args.settings, preset)
    out = args.out or os.path.join(HERE, "results", "sensitivity" if preset == "full" else f"sensitivity_{preset}")
    run(cfg, out, config_path=args.config, progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
