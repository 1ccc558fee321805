"""Figures without pyplot: a Figure that no GUI backend or pyplot registry sees, saved atomically as PNG/PDF."""

import os

import numpy as np
import pytest

from jaxequiv.io import interval_yerr, save_figure, subplots

pytest.importorskip("matplotlib")


def test_subplots_and_atomic_save(tmp_path):
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    fig, axes = subplots(1, 2, figsize=(4, 2))
    assert isinstance(fig, Figure) and axes.shape == (2,)
    im = axes[0].imshow([[0, 1], [1, 0]])
    fig.colorbar(im, ax=axes[0])
    fig.tight_layout()
    save_figure(fig, tmp_path / "f.png", dpi=50)
    save_figure(fig, tmp_path / "f.pdf")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(os.listdir(tmp_path)) == ["f.pdf", "f.png"]  # no temporary files
    assert matplotlib.get_backend() == backend  # no global backend switch
    _, ax = subplots(figsize=(2, 2))
    assert not hasattr(ax, "shape")  # squeezed, as pyplot's


def test_failed_save_keeps_the_old_file(tmp_path):
    fig, ax = subplots()
    save_figure(fig, tmp_path / "f.png")
    old = (tmp_path / "f.png").read_bytes()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "f.png", format="no-such-format")
    assert (tmp_path / "f.png").read_bytes() == old and os.listdir(tmp_path) == ["f.png"]


def test_interval_yerr_is_never_negative():
    """Distances from each mean to its interval's ends; a mean outside its interval (possible for a percentile
    interval of a non-linear statistic) gets a zero-length bar on that side instead of matplotlib's error."""
    yerr = interval_yerr([0.5, 0.0, 1.0], [[0.25, 1.0], [0.1, 0.3], [0.2, 0.9]])
    np.testing.assert_array_equal(yerr, [[0.25, 0.0, 0.8], [0.5, 0.3, 0.0]])
