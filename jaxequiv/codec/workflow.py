"""CODEC on a user's network in one call: :func:`analyze` chains the steps, each of which also works alone.

::

    store = build_store(net, x, "store", "layer*", labels=y, variants=("positive", "negative", "sum"))
    stats = layer_statistics(store, store.sites)                         # sparsity, decorrelation, dimensionality
    fits = fit_modes(store, store.sites, TrainSettings(steps=3000, lr=1e-3))   # {source: {site: ModeFit}}
    modes = {src: {s: f.modes for s, f in by_site.items()} for src, by_site in fits.items()}
    sel = {src: mode_selectivity(m, store, SOURCES[src]) for src, m in modes.items()}
    ctl = {src: mode_interventions(net, x, y, modes[src], sel[src], key=0) for src in modes}
    sup = superclass_interventions(net, x, y, {s: modes["contribution"][s] for s in store.sites[-2:]}, [5, 7, 9])
    pics = mode_pictures(net, x, y, site, modes["contribution"][site], sel["contribution"][site])

The result, :class:`CodecAnalysis`, is what :func:`jaxequiv.codec.report.write_report` shows and
:meth:`CodecAnalysis.summary` writes as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxequiv.codec.analysis import LayerStats, ModeSelectivity, layer_statistics, mode_selectivity
from jaxequiv.codec.interventions import (
    KINDS,
    PAPER_PERCENTAGES,
    InterventionResult,
    Superclass,
    auc_summary,
    mode_interventions,
    superclass_interventions,
)
from jaxequiv.codec.metrics import check_labels
from jaxequiv.codec.modes import SOURCES, ModeFit, fit_modes
from jaxequiv.codec.pictures import ModePictures, mode_pictures
from jaxequiv.network import Network

__all__ = ["AnalysisSettings", "CodecAnalysis", "Stages", "codec_store", "analyze"]


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """Settings of :func:`analyze` (defaults: CODEC's protocol where the paper fixes one)."""

    ig_steps: int = 10  # integrated-gradient steps of the contributions (target: the top-1 logit)
    chunk_size: int = 250  # examples per contributions kernel call
    sae_expansion: int = 3  # STSAE with K = sae_expansion * C modes per site
    sae_theta: float = 0.7
    sae_l1: float = 1e-4
    sae_steps: int = 3000
    sae_batch: int = 256
    sae_lr: float = 1e-3
    percentages: tuple[float, ...] = PAPER_PERCENTAGES  # of channels ablated / preserved per trial
    trials: int = 20
    images_per_class: int = 10
    superclass: tuple[int, ...] | None = None  # the concept's classes (None: no superclass variant)
    superclass_sites: int = 2  # the last sites perturbed together (paper: the last 4 of 16 layers)
    superclass_pct: tuple[float, float] = (9, 37)  # ablate / preserve percentages (paper's values)
    picture_site: str | None = None  # site of the mode pictures (None: the middle site)
    picture_images: int = 6
    picture_channels: int = 3
    picture_filter: int = 2
    picture_gamma: float = 6.0
    seed: int = 0  # SAE weights and batches, intervention trials


@dataclasses.dataclass(frozen=True)
class CodecAnalysis:
    """The steps' results. Per-source mappings are ``{source: {site: ...}}`` with sources as in ``modes``."""

    stats: LayerStats
    modes: Mapping[str, Mapping[str, ModeFit]] = dataclasses.field(default_factory=dict)
    selectivity: Mapping[str, Mapping[str, ModeSelectivity]] = dataclasses.field(default_factory=dict)
    interventions: Mapping[str, Mapping[str, InterventionResult]] = dataclasses.field(default_factory=dict)
    superclass: Superclass | None = None
    pictures: ModePictures | None = None
    class_names: Sequence[str] | None = None

    @property
    def sites(self) -> list[str]:
        return list(self.stats.sites)

    @property
    def n_examples(self) -> int:
        """N, the examples analysed."""
        return int(np.shape(self.stats.hoyer_contrib[0])[0])

    def class_name(self, c: int) -> str:
        return str(self.class_names[c]) if self.class_names is not None else str(c)

    def summary(self) -> dict[str, Any]:
        """The headline numbers as JSON-able values (medians over examples, one entry per site)."""
        st = self.stats
        med = lambda values: [float(np.nanmedian(v)) for v in values]  # noqa: E731
        out: dict[str, Any] = {
            "sites": self.sites,
            "hoyer_contrib_median": med(st.hoyer_contrib),
            "hoyer_act_median": med(st.hoyer_act),
            "decorrelation_median": med(st.decorrelation),
            "dim_contrib": list(st.dim_contrib),
            "dim_act": list(st.dim_act),
        }
        if self.selectivity:
            out["median_top_corr"] = {src: [float(sel.modes.median_top_corr) for sel in by_site.values()]
                                      for src, by_site in self.selectivity.items()}
        for k, kind in enumerate(KINDS):
            if self.interventions:
                out[f"{kind}_auc"] = {src: [float(auc_summary(r)[k, 0]) for r in by_site.values()]
                                      for src, by_site in self.interventions.items()}
        if self.superclass is not None:
            sc = self.superclass
            out["superclass"] = {kind: {"classes": list(sc.classes), "sites": list(sc.sites),
                                        "before": r.original[:, 0].tolist(), "after": r.perturbed[:, 0].tolist()}
                                 for kind, r in sc.results.items()}
        if self.modes:
            out["sae_r2"] = {f"{src}/{s}": f.r2 for src, by_site in self.modes.items() for s, f in by_site.items()}
        return out


class Stages:
    """Announces each stage of a long run as it starts and its duration as it ends; keeps the durations.

    ::

        stages = Stages()
        with stages("contributions"):      # prints "[codec] contributions ..." now, "... 12.3 s" at the end
            ...
        stages.timings                      # {"contributions": 12.3}
    """

    def __init__(self, log: Callable[[str], None] | None = functools.partial(print, flush=True),
                 prefix: str = "[codec]"):
        self.log = log if log is not None else (lambda line: None)
        self.prefix = prefix
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"{self.prefix} {name} ...")
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 1)
        self.log(f"{self.prefix} {name}: {self.timings[name]:.1f} s")


def codec_store(net: Network, x, y, sites: str | Sequence[str], store_dir: str | os.PathLike,
                settings: AnalysisSettings = AnalysisSettings(), *, overwrite: bool = False, progress: bool = False):
    """The first step of :func:`analyze`: CODEC's contributions store of ``net`` on ``x`` (N, ...) with labels ``y``
    (N,): integrated gradients (``settings.ig_steps``) to the top-1 logit, reduced to the "positive", "negative" and
    "sum" variants, beside the activations (:func:`jaxequiv.contributions.build_store`)."""
    from jaxequiv.contributions.driver import build_store

    return build_store(net, x, store_dir, sites, labels=y, method="ig", target="top1", steps=settings.ig_steps,
                       chunk_size=settings.chunk_size, overwrite=overwrite, progress=progress,
                       variants=("positive", "negative", "sum"))


def analyze(net: Network, x, y, sites: str | Sequence[str], store_dir: str | os.PathLike,
            settings: AnalysisSettings = AnalysisSettings(), *, class_names: Sequence[str] | None = None,
            overwrite: bool = False, progress: bool = False, stages: Stages | None = None) -> CodecAnalysis:
    """Contributions, statistics, modes, selectivity, interventions and pictures of ``net`` on ``x``.

    Args:
      net: an image classifier (sites with a trailing channel axis, outputs (N, Y) logits).
      x: (N, H, W, Cin) examples to analyse. y: (N,) their integer labels.
      sites: site names or patterns, e.g. ``"layer*"`` (every block output of a ResNet).
      store_dir: where the contributions store is written (see :func:`jaxequiv.contributions.build_store`).
      settings: :class:`AnalysisSettings`.
      class_names: names of the Y classes (reports; default the class indices).
      overwrite: replace a finished store at ``store_dir``.
      progress: progress bars inside the long steps. stages: announces and times the steps (default: printed).
    """
    from jaxequiv.sae import TrainSettings, make

    s = settings
    check_labels(y, np.shape(x)[0])
    stages = Stages() if stages is None else stages
    n_classes = None if class_names is None else len(class_names)
    with stages("contributions (IG)"):
        store = codec_store(net, x, y, sites, store_dir, s, overwrite=overwrite, progress=progress)
    sites = store.sites
    pictured = s.picture_site if s.picture_site is not None else sites[len(sites) // 2]
    if pictured not in sites:
        raise ValueError(f"picture_site {pictured!r} is not one of the analysed sites {sites}")
    with stages("layer statistics"):
        stats = layer_statistics(store, sites)
    with stages(f"SAEs ({len(SOURCES) * len(sites)})"):
        sae = functools.partial(make, "stsae", expansion=s.sae_expansion, theta=s.sae_theta, l1=s.sae_l1)
        train = TrainSettings(batch_size=s.sae_batch, steps=s.sae_steps, lr=s.sae_lr, log_every=200,
                              data_seed=s.seed)
        fits = fit_modes(store, sites, train, sae=sae, seed=s.seed, progress=progress)
    modes = {src: {site: f.modes for site, f in by_site.items()} for src, by_site in fits.items()}
    with stages("class selectivity"):
        sel = {src: mode_selectivity(modes[src], store, SOURCES[src], n_classes=n_classes) for src in modes}
    with stages("interventions"):
        inter = {src: mode_interventions(net, x, y, modes[src], sel[src], s.seed, percentages=s.percentages,
                                         n_trials=s.trials, n_images=s.images_per_class) for src in modes}
    superclass = None
    if s.superclass is not None:
        with stages("superclass interventions"):
            last = {site: modes["contribution"][site] for site in sites[-s.superclass_sites:]}
            superclass = superclass_interventions(net, x, y, last, s.superclass, ablate=s.superclass_pct[0],
                                                  preserve=s.superclass_pct[1], n_classes=n_classes)
    with stages("pictures"):
        pictures = mode_pictures(net, x, y, pictured, modes["contribution"][pictured], sel["contribution"][pictured],
                                 predictions=store.predictions, n_images=s.picture_images,
                                 n_channels=s.picture_channels, size=s.picture_filter, gamma=s.picture_gamma)
    return CodecAnalysis(stats, fits, sel, inter, superclass, pictures, class_names)
