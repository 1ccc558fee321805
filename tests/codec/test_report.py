"""The generic CODEC report: our numbers in its tables, figures written atomically, caller sections and figures."""

import os

import numpy as np

from jaxequiv.codec import CodecAnalysis, LayerStats, ModePictures, Superclass
from jaxequiv.codec import report as R
from jaxequiv.codec.interventions import InterventionResult, SuperclassResult


def _intervention(v):
    """Ablate ratios target 1 + v, off-target 1 (summary v); preserve all 1 (summary 0)."""
    ratio = np.ones((2, 3, 3, 2, 2), np.float32)
    ratio[0, :, :, 0] = 1 + v
    return InterventionResult(np.array([10, 50, 99], np.float32), None, None, ratio, None)


def analysis(n_sites=3):
    sites = [f"b{i}" for i in range(n_sites)]
    st = LayerStats(sites, [4] * n_sites, [np.full(5, 0.3 + 0.1 * i) for i in range(n_sites)],
                    [np.full(5, 0.1)] * n_sites, [np.full(5, 1 - i / n_sites) for i in range(n_sites)],
                    [5] * n_sites, [3] * n_sites, [np.linspace(0.5, 1, 4)] * n_sites,
                    [np.linspace(0.8, 1, 4)] * n_sites)
    inter = {"contribution": {s: _intervention(-0.5 - 0.1 * i) for i, s in enumerate(sites)},
             "activation": {s: _intervention(-0.125) for s in sites}}
    sup = Superclass((1,), sites[-1:], {"ablate": 9.0, "preserve": 37.0},
                     {k: SuperclassResult(np.full((3, 2), 0.75), np.full((3, 2), 0.5), np.full((3, 2), -33.3))
                      for k in ("ablate", "preserve")})
    pics = ModePictures("b1", np.random.default_rng(0).random((2, 8, 8, 1)), np.ones((2, 8, 8)), np.array([0, 2]),
                        np.array([4, 1]))
    return CodecAnalysis(st, interventions=inter, superclass=sup, pictures=pics, class_names=["zero", "one", "two"])


def test_markdown_table():
    assert R.markdown_table(["a", "b"], [[1, 0.5], ["x", 2.0]]) == "| a | b |\n|---|---|\n| 1 | 0.50 |\n| x | 2.00 |"


def test_write_report_shows_our_numbers(tmp_path):
    res = analysis()
    path = R.write_report(str(tmp_path), res, "test report", meta={"note": "synthetic"}, sections=["## Extra\n\nhi"])
    text = open(path).read()
    assert text.startswith("# test report\n\n- **note**: synthetic") and "## Extra\n\nhi" in text
    assert "| b2 | 4 | 0.50 | 0.10 | 0.33 | 5 | 3 |" in text  # statistics of the last site
    assert "| b1 | -0.60 | -0.12 | 0.00 | 0.00 |" in text  # ablate / preserve summaries per source
    assert "| one* | 0.75 -> 0.50 | 0.75 -> 0.50 |" in text and "ablate 9%" in text
    assert "ResNet-50" not in text and "paper" not in text
    for key, (file, caption) in R.FIGURES.items():
        if key != "selectivity":  # res has no selectivity
            assert f"![{caption}]({file})" in text and os.path.getsize(tmp_path / file) > 1000
    assert "selectivity.png" not in text and not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_caller_figures_replace_the_default(tmp_path):
    res = analysis()
    figs = R.draw_figures(res)
    assert list(figs) == ["statistics", "interventions", "pictures"] and len(figs["statistics"].axes) == 4
    figs["statistics"].axes[0].plot([0], [0.5], "v")
    path = R.write_report(str(tmp_path), res, figures={"mine.png": ("my caption", figs["statistics"])})
    text = open(path).read()
    assert "![my caption](mine.png)" in text and sorted(os.listdir(tmp_path)) == ["mine.png", "report.md"]


def test_unplottable_intervention_curves(tmp_path):
    res = analysis()
    nan = InterventionResult(np.array([10, 50, 99], np.float32), None, None, np.full((2, 3, 3, 2, 2), np.nan), None)
    res.interventions["contribution"]["b1"] = nan  # the plotted site: every trial at 0 accuracy
    res.interventions["activation"]["b1"] = nan
    R.write_report(str(tmp_path), res)
    assert os.path.getsize(tmp_path / "interventions.png") > 1000
