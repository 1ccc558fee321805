"""Causal control with modes (spec ``papers/codec.md`` §4): zero the channels a mode ranks highest, or all others.

A mode only *chooses* channels: the top ``floor(C * pct / 100)`` channels of its atom (signed value, descending)
are ablated (set to 0 at every position) or preserved (every other channel set to 0), through a
:class:`jaxequiv.sites.Scale` edit at the mode's site. Every (trial, percentage, ablate/preserve) mask is
evaluated in one vmapped forward pass; the part of the network before the site does not depend on the mask and
is computed once per trial.

Shapes: N examples, C channels at the site, K modes, Y classes, P percentages, T trials, M masks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.codec.metrics import check_labels, class_correlation
from jaxequiv.network import Network
from jaxequiv.rng import as_key
from jaxequiv.sites import Scale, list_sites, run

if TYPE_CHECKING:
    from jaxequiv.codec.analysis import ModeSelectivity
    from jaxequiv.sae import Modes

__all__ = [
    "PAPER_PERCENTAGES",
    "KINDS",
    "check_percentages",
    "channel_masks",
    "top_channels",
    "concept_atom",
    "masked_hits",
    "TrialDraw",
    "draw_trials",
    "InterventionResult",
    "mode_intervention",
    "mode_interventions",
    "curves",
    "auc",
    "auc_summary",
    "SuperclassResult",
    "superclass_intervention",
    "Superclass",
    "superclass_interventions",
]

PAPER_PERCENTAGES = (1, 2, 5, 10, 18, 25, 50, 80, 99)
KINDS = ("ablate", "preserve")


def check_percentages(percentages) -> np.ndarray:
    """Percentages of channels as a float32 (P,) array; each must lie in (0, 100]."""
    p = np.atleast_1d(np.asarray(percentages, np.float64))
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"percentages must be a non-empty 1-D sequence, got shape {p.shape}")
    bad = p[~((p > 0) & (p <= 100))]
    if bad.size:
        raise ValueError(f"percentages must lie in (0, 100], got {bad.tolist()}; e.g. {list(PAPER_PERCENTAGES)}")
    return p.astype(np.float32)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def channel_masks(atoms, percentages, kind: str) -> jax.Array:
    """0/1 channel masks from atoms: zero the top pct% channels ("ablate") or all but them ("preserve").

    Channels are ranked by signed atom value, descending (ties: lower index first); the top
    ``floor(C * pct / 100)`` are selected.

    Args:
      atoms: (..., C) atoms (rows of an SAE dictionary).
      percentages: (P,) values in (0, 100].
      kind: ``"ablate"`` or ``"preserve"``.
    Returns:
      (..., P, C) float32 masks.
    """
    _check_kind(kind)
    atoms = jnp.asarray(atoms, jnp.float32)
    if atoms.ndim < 1:
        raise ValueError(f"atoms must have a channel axis, got shape {atoms.shape}")
    pct = check_percentages(percentages)
    n_top = np.floor(atoms.shape[-1] * pct.astype(np.float64) / 100 + 1e-9).astype(np.int32)
    return _channel_masks(atoms, jnp.asarray(n_top), kind == "preserve")


@functools.partial(jax.jit, static_argnames="preserve")
def _channel_masks(atoms, n_top, preserve: bool):
    order = jnp.argsort(-atoms, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)  # rank[c] = position of channel c in the descending order
    selected = rank[..., None, :] < n_top[:, None]  # (..., P, C)
    return (selected if preserve else ~selected).astype(jnp.float32)


def top_channels(atoms, n: int) -> jax.Array:
    """0/1 mask of the ``n`` channels with the largest signed atom value: (..., C) -> (..., C) float32."""
    atoms = jnp.asarray(atoms, jnp.float32)
    if not 0 <= n <= atoms.shape[-1]:
        raise ValueError(f"n must be between 0 and the {atoms.shape[-1]} channels, got {n}")
    return _channel_masks(atoms, jnp.asarray([n], jnp.int32), True)[..., 0, :]


def concept_atom(atoms, concept_corr, threshold: float = 0.2) -> jax.Array:
    """Sum of the atoms whose correlation with a concept exceeds ``threshold``; the top mode if none does.

    Args:
      atoms: (K, C). concept_corr: (K,) correlation of each mode's loadings with the concept indicator.
    Returns:
      (C,) atom.
    """
    atoms = jnp.asarray(atoms, jnp.float32)
    concept_corr = jnp.asarray(concept_corr, jnp.float32)
    if atoms.ndim != 2 or concept_corr.shape != atoms.shape[:1]:
        raise ValueError(f"need atoms (K, C) and concept_corr (K,), got {atoms.shape} and {concept_corr.shape}")
    above = concept_corr > threshold
    summed = jnp.sum(jnp.where(above[:, None], atoms, 0.0), axis=0)
    return jnp.where(above.any(), summed, atoms[jnp.argmax(concept_corr)])


# ---------------------------------------------------------------------------------------------------------
# Evaluation under masks


def _site_shapes(net: Network, x, sites: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Broadcast shape of a channel mask at each site (channel axis kept, others 1); checks the sites."""
    info = list_sites(net.apply, net.params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    shapes = {}
    for s in sites:
        if s not in info:
            raise ValueError(f"site {s!r} is not a site of this network; its sites are {sorted(info)}")
        axes = info[s].axes
        if axes.count("channel") != 1 or info[s].channels != info[s].shape[axes.index("channel")]:
            raise ValueError(f"site {s!r} has axes {axes}; channel masks need exactly one 'channel' axis and "
                             "otherwise only batch/spatial axes")
        shapes[s] = tuple(n if a == "channel" else 1 for n, a in zip(info[s].shape, axes))
    return shapes


def masked_hits(net: Network, x, y, masks: Mapping[str, jax.Array], ks: Sequence[int] = (1, 5)) -> jax.Array:
    """Whether the true class is in the top-k outputs under each set of channel masks.

    Args:
      net: classifier whose sites carry a ``channel`` axis.
      x: (N, ...) inputs. y: (N,) integer labels.
      masks: ``{site: (M, C)}``; mask ``m`` of every site is applied together (one entry: a single site).
      ks: top-k values (clipped to the number of classes).
    Returns:
      (M, N, len(ks)) bool.
    """
    x = jnp.asarray(x)
    net.check_input(x)
    y, _ = check_labels(y, x.shape[0])
    if not masks:
        raise ValueError("masks must name at least one site")
    masks = {s: jnp.asarray(m, jnp.float32) for s, m in masks.items()}
    shapes = _site_shapes(net, x, list(masks))
    for s, m in masks.items():
        if m.ndim != 2 or m.shape[1] != math.prod(shapes[s]):
            raise ValueError(f"masks[{s!r}] must have shape (M, {math.prod(shapes[s])}), got {m.shape}")
    n_masks = {m.shape[0] for m in masks.values()}
    if len(n_masks) != 1:
        raise ValueError(f"every site needs the same number of masks M, got {sorted(n_masks)}")
    return _masked_hits(net, x, jnp.asarray(y), masks, tuple(sorted(shapes.items())), tuple(int(k) for k in ks))


@functools.partial(jax.jit, static_argnames=("shapes", "ks"))
def _masked_hits(net, x, y, masks, shapes, ks):
    shapes = dict(shapes)

    def one(ms):
        edits = {s: Scale(m.reshape(shapes[s])) for s, m in ms.items()}
        logits, _ = run(net.apply, net.params, x, edits=edits)
        return _topk_hits(logits, y, ks)

    return jax.vmap(one)(masks)


def _topk_hits(logits, y, ks):
    # rank of the true class = number of classes with a strictly larger logit
    true = jnp.take_along_axis(logits, y[:, None], axis=-1)
    rank = jnp.sum(logits > true, axis=-1)
    return jnp.stack([rank < k for k in ks], axis=-1)


# ---------------------------------------------------------------------------------------------------------
# The per-class protocol (Figure 6)


class TrialDraw(NamedTuple):
    """Classes and example indices of each trial."""

    target: np.ndarray  # (T,) target class
    off: np.ndarray  # (T,) off-target class (different from the target)
    index: np.ndarray  # (T, 2, n) example indices: [target images, off-target images]


def draw_trials(key, labels, n_trials: int, n_images: int = 10, classes=None) -> TrialDraw:
    """Draw target/off-target class pairs and ``n_images`` examples of each, without replacement.

    Args:
      key: ``jax.random.key`` or int seed. labels: (N,) integer classes.
      classes: the classes to draw from (default: those with at least ``n_images`` examples).
    """
    labels, _ = check_labels(labels, np.shape(labels)[0] if np.ndim(labels) else -1)
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts >= n_images) if classes is None else np.asarray(classes)
    if eligible.size < 2 or (counts[eligible] < n_images).any():
        raise ValueError(f"need at least 2 classes with {n_images} examples each; class counts are "
                         f"{counts.tolist()}; lower n_images")
    kc, ko, ki = jax.random.split(as_key(key), 3)
    t = np.asarray(jax.random.randint(kc, (n_trials,), 0, eligible.size))
    o = (t + 1 + np.asarray(jax.random.randint(ko, (n_trials,), 0, eligible.size - 1))) % eligible.size
    target, off = eligible[t], eligible[o]
    # n distinct examples of a class: the n smallest random scores among that class's examples
    cls = np.stack([target, off], axis=1)  # (T, 2)
    scores = jax.random.uniform(ki, (n_trials, 2, labels.size))
    scores = jnp.where(jnp.asarray(labels) == jnp.asarray(cls)[..., None], scores, 2.0)
    index = np.asarray(jnp.argsort(scores, axis=-1)[..., :n_images])
    return TrialDraw(target, off, index)


class InterventionResult(NamedTuple):
    """Accuracies of one site's protocol. ``ks`` = (1, 5) by default; roles = (target, off-target)."""

    percentages: np.ndarray  # (P,)
    original: np.ndarray  # (T, 2, len(ks)) accuracy per role before the intervention
    perturbed: np.ndarray  # (2, T, P, 2, len(ks)) accuracy per kind (ablate, preserve)
    ratio: np.ndarray  # (2, T, P, 2, len(ks)) perturbed / original; NaN where original is 0
    trials: TrialDraw


def mode_intervention(
    net: Network,
    x,
    y,
    site: str,
    atoms,
    corr,
    key,
    *,
    percentages=PAPER_PERCENTAGES,
    n_trials: int = 20,
    n_images: int = 10,
    ks: Sequence[int] = (1, 5),
    trial_chunk: int | None = None,
) -> InterventionResult:
    """Ablate / preserve the top channels of each trial's target-class top mode at ``site``.

    Args:
      net: classifier. x: (N, ...) the examples the modes were read out on. y: (N,) their labels.
      site: block output whose channels the atoms index.
      atoms: (K, C) dictionary of the SAE at ``site``. corr: (K, Y) mode-class correlations
        (:func:`jaxequiv.codec.metrics.class_correlation`); the top mode of class c is ``argmax corr[:, c]``.
      key: ``jax.random.key`` or int seed for the trial draws.
      trial_chunk: trials evaluated at once (memory knob; default all).
    """
    x = jnp.asarray(x)
    net.check_input(x)
    y, _ = check_labels(y, x.shape[0])
    atoms = jnp.asarray(atoms, jnp.float32)
    corr = jnp.asarray(corr, jnp.float32)
    if atoms.ndim != 2 or corr.ndim != 2 or corr.shape[0] != atoms.shape[0]:
        raise ValueError(f"need atoms (K, C) and corr (K, Y) with the same K, got {atoms.shape} and {corr.shape}")
    if y.max() >= corr.shape[1]:
        raise ValueError(f"labels go up to {y.max()} but corr has only {corr.shape[1]} classes")
    pct = check_percentages(percentages)
    shape = _site_shapes(net, x, [site])[site]
    if atoms.shape[1] != math.prod(shape):
        raise ValueError(f"atoms have {atoms.shape[1]} channels but site {site!r} has {math.prod(shape)}; "
                         "train the SAE on the 'positive' (C-channel) reduction of this site")
    draw = draw_trials(key, y, n_trials, n_images)
    top_atoms = atoms[jnp.argmax(corr[:, draw.target], axis=0)]  # (T, C)
    ones = jnp.ones((n_trials, 1, atoms.shape[1]), jnp.float32)
    masks = jnp.concatenate([ones] + [channel_masks(top_atoms, pct, k) for k in KINDS], axis=1)  # (T, 1+2P, C)
    xs = x[draw.index.reshape(n_trials, -1)]  # (T, 2n, ...)
    ys = jnp.asarray(y[draw.index.reshape(n_trials, -1)])
    hits = _trial_hits(net, xs, ys, masks, site, shape, tuple(int(k) for k in ks), trial_chunk or n_trials)
    acc = np.asarray(hits, np.float32).reshape(n_trials, 1 + 2 * pct.size, 2, n_images, len(ks)).mean(axis=3)
    original = acc[:, 0]  # (T, 2, nk)
    perturbed = np.moveaxis(acc[:, 1:].reshape(n_trials, 2, pct.size, 2, len(ks)), 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(original[None, :, None] > 0, perturbed / original[None, :, None], np.nan)
    return InterventionResult(pct, original, perturbed, ratio.astype(np.float32), draw)


def mode_interventions(net: Network, x, y, modes: Mapping[str, Modes], selectivity: Mapping[str, ModeSelectivity],
                       key, *, percentages=PAPER_PERCENTAGES, n_trials: int = 20, n_images: int = 10,
                       ks: Sequence[int] = (1, 5), trial_chunk: int | None = None) -> dict[str, InterventionResult]:
    """:func:`mode_intervention` at every site of ``modes``, with its alive atoms and their class correlations.

    Every site draws the same trials (classes and examples) from ``key``, so sites compare on equal footing.

    Args:
      modes: ``{site: Modes}`` read out on ``x`` (:func:`jaxequiv.codec.fit_modes`).
      selectivity: ``{site: ModeSelectivity}`` of those modes (:func:`jaxequiv.codec.mode_selectivity`).
      key: ``jax.random.key`` or int seed. Other arguments: as in :func:`mode_intervention`.
    Returns:
      ``{site: InterventionResult}``.
    """
    missing = sorted(set(modes) - set(selectivity))
    if missing:
        raise ValueError(f"selectivity has no entry for sites {missing}; pass mode_selectivity(...) of the same modes")
    key = as_key(key)
    return {s: mode_intervention(net, x, y, s, m.alive_atoms(), selectivity[s].corr, key, percentages=percentages,
                                 n_trials=n_trials, n_images=n_images, ks=ks, trial_chunk=trial_chunk)
            for s, m in modes.items()}


@functools.partial(jax.jit, static_argnames=("site", "shape", "ks", "chunk"))
def _trial_hits(net, xs, ys, masks, site, shape, ks, chunk):
    def trial(args):
        xt, yt, mt = args

        def one(m):
            logits, _ = run(net.apply, net.params, xt, edits={site: Scale(m.reshape(shape))})
            return _topk_hits(logits, yt, ks)

        return jax.vmap(one)(mt)

    return jax.lax.map(trial, (xs, ys, masks), batch_size=chunk)  # (T, M, 2n, nk)


def curves(ratio) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean and standard error over trials.

    Args:
      ratio: (kinds, T, P, roles, nk) from :class:`InterventionResult`.
    Returns:
      ``(mean, sem)``, each (kinds, P, roles, nk).
    """
    r = np.asarray(ratio, np.float64)
    n = np.sum(~np.isnan(r), axis=1)
    mean = np.where(n > 0, np.nansum(r, axis=1) / np.maximum(n, 1), np.nan)
    var = np.nansum((r - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1)
    sem = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, sem


def auc(curve, percentages) -> np.ndarray:
    """Trapezoid area under ``curve`` over the percentage axis (x in %).

    Args:
      curve: (..., P, ...) with the percentage axis at position -3 as returned by :func:`curves`
        (kinds, P, roles, nk). percentages: (P,).
    Returns:
      (kinds, roles, nk).
    """
    curve = np.asarray(curve, np.float64)
    pct = check_percentages(percentages).astype(np.float64)
    if curve.ndim < 3 or curve.shape[-3] != pct.size:
        raise ValueError(f"curve must have the {pct.size} percentages on axis -3, got shape {curve.shape}")
    return np.trapezoid(curve, x=pct, axis=-3)


def auc_summary(result: InterventionResult) -> np.ndarray:
    """``(AUC_target - AUC_off) / AUC_off`` of the mean ratio curves: (kinds, nk); ablate < 0 is selective."""
    mean, _ = curves(result.ratio)
    a = auc(mean, result.percentages)  # (kinds, roles, nk)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a[:, 0] - a[:, 1]) / a[:, 1]


# ---------------------------------------------------------------------------------------------------------
# Superclass variant: several sites at once, all examples


class SuperclassResult(NamedTuple):
    original: np.ndarray  # (Y, nk) per-class accuracy before
    perturbed: np.ndarray  # (Y, nk) after
    change: np.ndarray  # (Y, nk) percent change, clipped to [-100, 100]; NaN where original is 0


def superclass_intervention(
    net: Network,
    x,
    y,
    atoms: Mapping[str, jax.Array],
    concept_corr: Mapping[str, jax.Array],
    percentage: float,
    kind: str,
    *,
    threshold: float = 0.2,
    n_classes: int | None = None,
    ks: Sequence[int] = (1, 5),
) -> SuperclassResult:
    """Ablate / preserve a concept's channels at several sites together; per-class accuracy over all of ``x``.

    At each site the concept's atom is the sum of the atoms whose concept correlation exceeds ``threshold``
    (:func:`concept_atom`); its top ``percentage`` % channels are selected.

    Args:
      atoms: ``{site: (K_s, C_s)}``. concept_corr: ``{site: (K_s,)}`` correlation of each mode's loadings with
        the concept indicator (e.g. ``class_correlation(loadings, np.isin(y, classes).astype(int))[:, 1]``).
    """
    _check_kind(kind)
    x = jnp.asarray(x)
    y, n_classes = check_labels(y, x.shape[0], n_classes)
    if set(atoms) != set(concept_corr):
        raise ValueError(f"atoms and concept_corr must name the same sites, got {sorted(atoms)} and "
                         f"{sorted(concept_corr)}")
    masks = {s: channel_masks(concept_atom(atoms[s], concept_corr[s], threshold), [percentage], kind)
             for s in atoms}
    ones = {s: jnp.ones_like(m) for s, m in masks.items()}
    both = {s: jnp.concatenate([ones[s], masks[s]]) for s in masks}
    hits = np.asarray(masked_hits(net, x, y, both, ks), np.float64)  # (2, N, nk)
    onehot = np.eye(n_classes)[y]  # (N, Y)
    counts = onehot.sum(0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.einsum("ny,mnk->myk", onehot, hits) / counts
        change = np.where(acc[0] > 0, np.clip(100 * (acc[1] - acc[0]) / acc[0], -100, 100), np.nan)
    return SuperclassResult(acc[0], acc[1], change)


class Superclass(NamedTuple):
    """The superclass variant of several sites: per-class accuracies when a concept's channels are perturbed."""

    classes: tuple[int, ...]  # the classes that make up the concept
    sites: list[str]  # perturbed together
    percentages: dict[str, float]  # kind ("ablate", "preserve") -> percentage of each site's channels
    results: dict[str, SuperclassResult]  # kind -> per-class accuracies


def superclass_interventions(net: Network, x, y, modes: Mapping[str, Modes], classes: Sequence[int], *,
                             ablate: float = 9, preserve: float = 37, threshold: float = 0.2,
                             n_classes: int | None = None, ks: Sequence[int] = (1, 5)) -> Superclass:
    """Ablate and preserve the channels of the concept "class in ``classes``" at every site of ``modes`` together.

    Each mode's concept correlation is the correlation of its loadings with the concept indicator; the concept's
    atom at a site sums the atoms above ``threshold`` (:func:`superclass_intervention`).

    Args:
      modes: ``{site: Modes}`` read out on ``x`` (paper: contribution modes of the last 4 of 16 layers).
      classes: the concept's classes. ablate, preserve: percentages of channels (paper: 9 and 37).
    Returns:
      :class:`Superclass` with one :class:`SuperclassResult` per kind.
    """
    y, n_classes = check_labels(y, np.shape(x)[0], n_classes)
    classes = tuple(int(c) for c in classes)
    if not classes or not set(classes) <= set(range(n_classes)):
        raise ValueError(f"classes must name some of the classes 0..{n_classes - 1}, got {list(classes)}")
    if not modes:
        raise ValueError("modes must name at least one site")
    concept = np.isin(y, classes).astype(np.int64)
    corr = {s: np.asarray(class_correlation(m.alive_codes(), concept, 2))[:, 1] for s, m in modes.items()}
    atoms = {s: m.alive_atoms() for s, m in modes.items()}
    pct = dict(zip(KINDS, (float(ablate), float(preserve))))
    results = {kind: superclass_intervention(net, x, y, atoms, corr, p, kind, threshold=threshold,
                                             n_classes=n_classes, ks=ks) for kind, p in pct.items()}
    return Superclass(classes, list(modes), pct, results)
