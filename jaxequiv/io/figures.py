"""Figures for reports: matplotlib without pyplot (no GUI backend, no global state), saved atomically.

A :class:`matplotlib.figure.Figure` made directly renders with Agg when saved, so a headless job needs no
``matplotlib.use("Agg")`` and an interactive session keeps its own backend. matplotlib is the ``plot`` extra.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxequiv.io.files import atomic_path

__all__ = ["subplots", "save_figure", "interval_yerr"]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """``(figure, axes)`` as :func:`matplotlib.pyplot.subplots` returns them (``kwargs``: ``squeeze``,
    ``sharex``, ...), with a figure that pyplot does not track (nothing to close)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'jaxequiv[plot]'") from None
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Write ``fig`` to ``path`` atomically; the format follows the extension (``savefig_kwargs``: ``dpi``,
    ``bbox_inches``, ...)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)


def interval_yerr(mean, ci) -> np.ndarray:
    """``yerr [2, n]`` for ``errorbar`` from means ``[n]`` and intervals ``[n, 2]``: the distances down to each
    lower end and up to each upper end, 0 where a mean lies outside its interval (a percentile interval of a
    non-linear statistic, e.g. congruity's ``1 - |s - 1|``, need not contain the statistic's mean)."""
    mean, ci = np.asarray(mean, float), np.asarray(ci, float)
    return np.clip(np.stack([mean - ci[:, 0], ci[:, 1] - mean]), 0, None)
