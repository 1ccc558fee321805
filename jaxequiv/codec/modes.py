"""Modes of every site: one SAE per (source, site) of a contributions store, all trained in one job.

CODEC decomposes each site's positive contributions (and, to compare, its activations) with a sparse autoencoder
whose latents are the site's *modes* (spec ``papers/codec.md`` §2). :func:`fit_modes` divides each (N, C) store
array by its global std, trains every SAE in one :func:`jaxequiv.sae.train_many` job (each on its own array; SAEs
of equal width share one vmapped group) and reads the modes out on the store's examples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxequiv.codec.analysis import check_sites
from jaxequiv.contributions.reduce import normalise_global_std
from jaxequiv.sae import SAE, Modes, TrainResult, TrainSettings, evaluate, make, readout, train_many

__all__ = ["SOURCES", "ModeFit", "fit_modes"]

# source name -> store array it decomposes: CODEC's contribution modes and the activation modes they are compared to
SOURCES = {"contribution": "positive", "activation": "activations"}


class ModeFit(NamedTuple):
    """One trained SAE and its modes on the store's examples."""

    sae: TrainResult  # config, params, statistics state, history
    modes: Modes  # codes (N, K), alive (K,), atoms (K, C)
    r2: float  # CODEC's global-mean R^2 (``r2_codec``) of the reconstruction of the SAE's inputs
    scale: float  # the global std the store array was divided by before the SAE


def fit_modes(store: Any, sites: Sequence[str], settings: TrainSettings, *,
              sae: Callable[[int], SAE] | None = None, sources: Mapping[str, str] | None = None, seed: int = 0,
              progress: bool = False) -> dict[str, dict[str, ModeFit]]:
    """Train one SAE per (source, site) in one job and read out its modes.

    Args:
      store: a contributions store (:func:`jaxequiv.contributions.build_store`) holding ``sites``.
      settings: SAE training settings (batch size, steps, learning rate, ...).
      sae: ``sae(C) -> SAE config`` for a site of C channels; default CODEC's STSAE with K = 3C
        (``make("stsae", C, expansion=3)``).
      sources: ``{name: store variant}``; default :data:`SOURCES` (``positive`` contributions and activations).
      seed: initial weights of every SAE (and the shuffling when ``settings.data_seed`` is None).
      progress: show a progress bar.
    Returns:
      ``{source: {site: ModeFit}}``.
    """
    sources = dict(SOURCES if sources is None else sources)
    sae = functools.partial(make, "stsae", expansion=3) if sae is None else sae
    if not sites or not sources:
        raise ValueError(f"fit_modes needs at least one site and one source, got sites={list(sites)}, "
                         f"sources={sources}")
    check_sites(store, sites, list(sources.values()))
    keys = [(src, s) for src in sources for s in sites]
    normalised = [normalise_global_std(np.asarray(store.array(s, sources[src]))) for src, s in keys]
    data = [x for x, _ in normalised]
    configs = [sae(x.shape[1]) for x in data]
    trained = train_many(configs, data, seeds=[seed] * len(configs), settings=settings, progress=progress)
    out: dict[str, dict[str, ModeFit]] = {src: {} for src in sources}
    for (src, s), x, (_, scale), tr in zip(keys, data, normalised, trained):
        modes = readout(tr.cfg, tr.params, x, tr.state)
        r2 = float(evaluate(tr.cfg, tr.params, x, tr.state)["r2_codec"])
        out[src][s] = ModeFit(tr, modes, r2, float(scale))
    return out
