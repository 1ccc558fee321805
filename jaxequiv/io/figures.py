"""Figures for reports: matplotlib without pyplot (no GUI backend, no global state), saved atomically.

A :class:`matplotlib.figure.Figure` made directly renders with Agg when saved, so a headless job needs no
``matplotlib.use("Agg")`` and an interactive session keeps its own backend. matplotlib is the ``plot`` extra.
"""

from __future__ import annotations

import os
from typing import Any

from jaxequiv.io.files import atomic_path

__all__ = ["subplots", "save_figure"]


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
