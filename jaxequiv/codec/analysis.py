"""Per-layer CODEC analyses of a contributions store (spec ``papers/codec.md`` §3, Figures 3 and 5).

The store (:func:`jaxequiv.contributions.store.open_store`) holds, per site, ``sum`` / ``positive`` /
``negative`` contribution reductions and spatially summed ``activations``, each (N, C). Sites of equal width are
stacked so every metric runs once per width group, vectorised over layers and examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxequiv.codec import metrics as M
from jaxequiv.sae.metrics import Modes

__all__ = ["check_sites", "check_store", "LayerStats", "layer_statistics", "Modes", "ModeSelectivity",
           "mode_selectivity"]


def check_sites(store: Any, sites: Sequence[str], variants: Sequence[str] = ()) -> None:
    """Check that ``store`` has ``sites`` and ``variants``; raises ValueError naming what is missing."""
    missing = [s for s in sites if s not in store.sites]
    if missing:
        raise ValueError(f"sites {missing} are not in the store at {store.root!r}; it has {store.sites}")
    absent = [v for v in variants if v not in store.variants]
    if absent:
        raise ValueError(f"variants {absent} are not in the store; it has {store.variants}. Rebuild it with "
                         f"variants including {absent}")


def check_store(store: Any, sites: Sequence[str], labels=None, variants: Sequence[str] = ()) -> np.ndarray:
    """Check that ``store`` has ``sites`` (with ``variants``) and labels for every example; returns the labels.

    Args:
      labels: (N,) labels to use instead of the store's; must match the store's N and, where the store has
        labels (>= 0), agree with them.
    Raises:
      ValueError naming what is missing or mismatched.
    """
    check_sites(store, sites, variants)
    stored = np.asarray(store.labels)
    if labels is None:
        labels = stored
        if (labels < 0).any():
            raise ValueError("the store has no labels (-1) for some examples; pass labels=... (N,) or rebuild the "
                             "store with labels")
    labels = np.asarray(labels)
    if labels.shape != (store.n,):
        raise ValueError(f"labels have shape {labels.shape} but the store holds {store.n} examples; pass the labels "
                         "of the examples the store was built from, in order")
    known = stored >= 0
    if (labels[known] != stored[known]).any():
        bad = int(np.flatnonzero(labels[known] != stored[known])[0])
        raise ValueError(f"labels disagree with the store's labels (first at example {bad}); pass the labels the "
                         "store was built with")
    return M.check_labels(labels, store.n)[0]


def _groups(store, sites: Sequence[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for s in sites:
        out.setdefault(int(store.array(s, "sum").shape[1]), []).append(s)
    return out


class LayerStats(NamedTuple):
    """Figure-3 statistics, one entry per site (in the order asked)."""

    sites: list[str]
    channels: list[int]
    hoyer_contrib: list[np.ndarray]  # (N,) Hoyer of the "sum" contributions per example
    hoyer_act: list[np.ndarray]  # (N,) Hoyer of the spatially summed activations
    decorrelation: list[np.ndarray]  # (N,) -Pearson(negative, positive) per example (NaN: constant)
    dim_contrib: list[int]  # PCs reaching 95% of the class-mean variance
    dim_act: list[int]
    foev_contrib: list[np.ndarray]  # cumulative explained-variance curves
    foev_act: list[np.ndarray]


def layer_statistics(store, sites: Sequence[str], labels=None, threshold: float = 0.95) -> LayerStats:
    """Sparsity, pos/neg decorrelation and class-mean dimensionality at every site of ``store``."""
    labels = check_store(store, sites, labels, ("sum", "positive", "negative", "activations"))
    res: dict[str, dict[str, Any]] = {}
    for width, group in _groups(store, sites).items():
        del width
        load = lambda v: np.stack([np.asarray(store.array(s, v), np.float32) for s in group])  # noqa: E731
        summ, act = load("sum"), load("activations")
        h_c, h_a = np.asarray(M.hoyer(summ)), np.asarray(M.hoyer(act))
        dec = np.asarray(M.pos_neg_decorrelation(load("negative"), load("positive")))
        k_c, f_c = M.dimensionality(summ, labels, threshold=threshold)
        k_a, f_a = M.dimensionality(act, labels, threshold=threshold)
        for i, s in enumerate(group):
            res[s] = dict(hc=h_c[i], ha=h_a[i], dec=dec[i], kc=int(k_c[i]), ka=int(k_a[i]), fc=np.asarray(f_c[i]),
                          fa=np.asarray(f_a[i]), c=summ.shape[-1])
    col = lambda k: [res[s][k] for s in sites]  # noqa: E731
    return LayerStats(list(sites), col("c"), col("hc"), col("ha"), col("dec"), col("kc"), col("ka"), col("fc"),
                      col("fa"))


class ModeSelectivity(NamedTuple):
    """Figure-5 statistics of one site for one kind of modes (contribution or activation)."""

    corr: np.ndarray  # (K, Y) mode-class correlations
    modes: M.Selectivity  # of the modes
    channels: M.Selectivity  # of the raw channels the SAE was trained on
    coverage_per_class: np.ndarray  # (r,) class-averaged rank-ordered correlations
    coverage_per_mode: np.ndarray  # (r,)
    specificity: M.Specificity


def mode_selectivity(modes: Mapping[str, Modes], store, variant: str, labels=None, n_classes: int | None = None,
                     threshold: float = 0.2, top: int = 60) -> dict[str, ModeSelectivity]:
    """Class selectivity of modes and of the channels they decompose, per site.

    Args:
      modes: ``{site: Modes}`` (:func:`jaxequiv.sae.readout` on the store's examples, in order).
      variant: the store array the SAE was trained on (``"positive"`` or ``"activations"``).
    """
    labels = check_store(store, list(modes), labels, (variant,))
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    out = {}
    for s, m in modes.items():
        if not np.any(m.alive):
            raise ValueError(f"the SAE of {s!r} has no alive modes (no code is ever non-zero); train it longer, or "
                             "lower its threshold theta")
        if m.codes.shape[0] != store.n:
            raise ValueError(f"codes of {s!r} have {m.codes.shape[0]} rows; the store has {store.n} examples")
        corr = np.asarray(M.class_correlation(m.alive_codes(), labels, n_classes))
        ch = np.asarray(M.class_correlation(np.asarray(store.array(s, variant), np.float32), labels, n_classes))
        per_class, per_mode = M.class_coverage(corr, top)
        out[s] = ModeSelectivity(corr, M.selectivity(corr, threshold), M.selectivity(ch, threshold),
                                 np.asarray(per_class), np.asarray(per_mode), M.specificity(corr))
    return out
