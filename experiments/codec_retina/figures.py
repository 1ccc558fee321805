"""The case study's figures (PNG): the simulated cells and the fit, the modes and the cells' usage, the clusters."""

from __future__ import annotations

import os

import numpy as np

from experiments.codec_retina.analysis import confusion
from experiments.codec_retina.cells import TYPES
from jaxequiv.io.figures import save_figure, subplots

__all__ = ["draw_all", "FILES"]

FILES = ("cells.png", "modes.png", "clusters.png")
COLOURS = ("tab:red", "tab:orange", "tab:blue", "tab:cyan")


def cells_figure(data, corr):
    """Receptive-field mosaics, true temporal filters by type, held-out correlation per cell."""
    cells = data.cells
    fig, ax = subplots(1, 3, figsize=(15, 4.2))
    for t, (name, _, _) in enumerate(TYPES):
        c = cells.centres[cells.labels == t]
        ax[0].scatter(c[:, 1], c[:, 0], s=250, facecolors="none", edgecolors=COLOURS[t], label=name)
        for f in cells.temporal[cells.labels == t]:
            ax[1].plot(np.arange(len(f)), np.sign(TYPES[t][1]) * f, color=COLOURS[t], alpha=0.6)
    size = cells.spatial.shape[1]
    ax[0].set(xlim=(0, size - 1), ylim=(size - 1, 0), aspect="equal", title="receptive-field centres (one mosaic "
              "per type)", xlabel="x (pixels)", ylabel="y (pixels)")
    ax[0].legend(fontsize=7, loc="lower right")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(title="temporal filters (x polarity)", xlabel="lag (frames)")
    order = np.argsort(cells.labels, kind="stable")
    for j, (movie, marker) in enumerate((("white", "o"), ("pink", "s"))):
        ax[2].scatter(np.arange(len(order)), corr[movie]["counts"][order], marker=marker,
                      c=[COLOURS[t] for t in cells.labels[order]], label=f"{movie}: model vs spikes")
        ax[2].plot(np.arange(len(order)), corr[movie]["ceiling"][order], color="k", lw=0.8, ls=("-", "--")[j],
                   label=f"{movie}: true rate vs spikes (ceiling)")
    ax[2].set(title="held-out correlation per cell (sorted by type)", xlabel="cell", ylim=(0, 1))
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def modes_figure(fit, use, truth):
    """conv2 contribution modes ([negative | positive] channel contributions) and the cells' usage of them."""
    m = fit["contribution"]["conv2"].modes
    atoms = np.asarray(m.atoms)[m.alive]
    c = atoms.shape[1] // 2
    atoms = np.concatenate([atoms[:, c:], atoms[:, :c]], axis=1)  # store order [p | n] -> [n | p]
    fig, ax = subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    lim = np.abs(atoms).max() or 1.0
    im = ax[0].imshow(atoms, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[0].axvline(c - 0.5, color="k")
    ax[0].set(title="conv2 contribution modes (atoms)", xlabel=f"channel: negative 0-{c - 1} | positive 0-{c - 1}",
              ylabel="alive mode")
    fig.colorbar(im, ax=ax[0])
    order = np.argsort(truth, kind="stable")
    im = ax[1].imshow(use[order], aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    for b in np.flatnonzero(np.diff(truth[order])):
        ax[1].axhline(b + 0.5, color="k")
    ax[1].set_yticks([np.mean(np.flatnonzero(truth[order] == t)) for t in range(len(TYPES))],
                     [t[0] for t in TYPES])
    ax[1].set(title="mode usage: corr(mode loading, cell's predicted rate)", xlabel="alive mode")
    fig.colorbar(im, ax=ax[1])
    fig.tight_layout()
    return fig


def clusters_figure(truth, methods, primary):
    """Cluster-vs-type counts of the primary method; ARI of every method (mean and range over SAE seeds)."""
    fig, ax = subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    conf = confusion(truth, np.asarray(methods[primary]["runs"][0]["labels"]), len(TYPES))
    ax[0].imshow(conf, cmap="Greys")
    for (i, j), v in np.ndenumerate(conf):
        ax[0].text(j, i, str(v), ha="center", va="center", color="tab:red")
    ax[0].set_yticks(range(len(TYPES)), [t[0] for t in TYPES])
    ax[0].set(title=f"k-means clusters of {primary} (SAE seed 0)", xlabel="cluster")
    names = list(methods)
    mean = np.array([methods[n]["ari_mean"] for n in names])
    lo = mean - np.array([methods[n]["ari_min"] for n in names])
    hi = np.array([methods[n]["ari_max"] for n in names]) - mean
    ax[1].barh(range(len(names)), mean, xerr=[lo, hi], color=["tab:green" if n == primary else "tab:gray"
                                                              for n in names])
    ax[1].axvline(0, color="k", lw=0.8)
    ax[1].set_yticks(range(len(names)), names, fontsize=8)
    ax[1].invert_yaxis()
    ax[1].set(title="adjusted Rand index vs true types (k = 4; chance 0)", xlabel="ARI", xlim=(-0.2, 1))
    fig.tight_layout()
    return fig


def draw_all(out_dir, data, corr, fit, use, methods, primary) -> None:
    """Write :data:`FILES` to ``out_dir``."""
    figs = (cells_figure(data, corr), modes_figure(fit, use, data.cells.labels),
            clusters_figure(data.cells.labels, methods, primary))
    for name, fig in zip(FILES, figs):
        save_figure(fig, os.path.join(out_dir, name), dpi=110)
