"""The CODEC image experiment runs end to end (a tiny --quick config) and writes its report files; the paper
comparison (findings, layer mapping) on hand-made results."""

import json
import os

import numpy as np
import pytest

from experiments.codec_images import paper, run
from jaxequiv.codec import CodecAnalysis, LayerStats
from jaxequiv.codec.interventions import InterventionResult

CONFIG = os.path.join(os.path.dirname(run.__file__), "config.json")


# the --quick preset shrunk (2 blocks instead of 8, few steps) so the tests stay short; the compile time of the
# SAEs and networks dominates, and it grows with the number of blocks
TINY = {"dataset": "digits", "blocks": [1, 1], "n_train": 800, "n_analysis": 120, "width": 4, "epochs": 20,
        "batch_size": 64, "ig_steps": 4, "chunk_size": 120, "sae_steps": 100, "sae_theta": 0.5, "sae_batch": 64,
        "trials": 3, "images_per_class": 5, "percentages": [10, 50, 100], "picture_images": 3, "picture_filter": 1}


@pytest.mark.slow
def test_quick_run_shows_what_it_is_meant_to(tmp_path):
    """One run of the shrunk --quick preset through the CLI (one test, so that pytest-xdist never runs it twice):
    its files and provenance, a network far above chance, and finding (a) at every block as a paired test."""
    from scipy.stats import binomtest, wilcoxon

    from jaxequiv.codec.analysis import layer_statistics
    from jaxequiv.contributions import open_store

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"quick": TINY}))
    out = tmp_path / "out"
    assert run.main(["--quick", "--config", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    text = (out / "report.md").read_text()
    assert "ResNet-50" in text and "(f)" in text
    for name in ("fig3_contributions_vs_activations.png", "fig5_class_selectivity.png", "fig6_interventions.png",
                 "mode_pictures.png"):
        assert name in text and (out / name).stat().st_size > 1000
    assert res["sites"] == ["layer1.0", "layer2.0"] and set(res["findings"]) == set("abcdef")
    prov = res["provenance"]
    assert prov["config"]["epochs"] == TINY["epochs"] and prov["seeds"] == [run.CodecConfig.seed]
    assert prov["git"]["commit"] and prov["versions"]["jax"] and prov["wall_s"] >= res["timings_s"]["total"] - 1
    # CODEC's R^2 (global mean) and the standard one (per-feature means) of every SAE, side by side: CODEC's
    # denominator is the larger, so it is never below the standard one
    for fits in res["sae_fit"].values():
        for f in fits.values():
            assert f["r2_codec"] >= f["explained_variance"] - 1e-6 and f["n_alive"] > 0

    # the analysed network has learnt the digits: test accuracy far above the 10 % of chance
    n = res["images"]["test"]
    assert res["test_accuracy"] > 0.4
    assert binomtest(round(res["test_accuracy"] * n), n, 0.1, alternative="greater").pvalue < 1e-9

    # finding (a) at every block, paired over the analysed images: an image's contributions are sparser (Hoyer)
    # than its activations (one-sided Wilcoxon signed-rank)
    st = layer_statistics(open_store(out / "store"), res["sites"])
    for site, hc, ha in zip(st.sites, st.hoyer_contrib, st.hoyer_act):
        assert np.median(hc - ha) > 0.1, site
        assert wilcoxon(hc, ha, alternative="greater").pvalue < 1e-6, site
    assert res["findings"]["a"]["holds"]


def test_config_presets_load_and_reject_unknown_keys(tmp_path):
    quick, full = run.CodecConfig.from_json(CONFIG, "quick"), run.CodecConfig.from_json(CONFIG, "full")
    assert sum(quick.blocks) >= 8 and sum(full.blocks) >= 8 and full.dataset == "auto"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quick": {"widht": 3}}))
    with pytest.raises(ValueError, match="widht"):
        run.CodecConfig.from_json(str(bad), "quick")
    with pytest.raises(ValueError, match="preset"):
        run.CodecConfig.from_json(str(bad), "full")
    demo = quick.demo("digits")
    assert demo.dataset == "digits" and (demo.blocks, demo.lr, demo.seed) == (quick.blocks, quick.lr, quick.seed)
    a = demo.analysis
    assert (a.sae_steps, a.percentages, a.superclass, a.seed) == (quick.sae_steps, quick.percentages,
                                                                   quick.superclass, quick.seed)
    assert a.superclass_sites == quick.superclass_blocks and a.picture_filter == quick.picture_filter == 1


def _results(sites, hc, ha, ab_c, ab_a):
    n = len(sites)
    st = LayerStats(sites, [4] * n, [np.full(5, v) for v in hc], [np.full(5, v) for v in ha],
                    [np.full(5, 1 - i / n) for i in range(n)], [5] * n, [3] * n,
                    [np.linspace(0.5, 1, 4)] * n, [np.linspace(0.8, 1, 4)] * n)
    pct = np.array([10, 50, 99], np.float32)

    def inter(v):  # ablate ratios: target 1+v, off-target 1 -> summary v; preserve 0
        ratio = np.ones((2, 3, 3, 2, 2), np.float32)
        ratio[0, :, :, 0] = 1 + v
        return InterventionResult(pct, None, None, ratio, None)

    return CodecAnalysis(st, interventions={"contribution": {s: inter(c) for s, c in zip(sites, ab_c)},
                                            "activation": {s: inter(a) for s, a in zip(sites, ab_a)}})


def test_findings_hand_cases():
    sites = [f"b{i}" for i in range(4)]
    good = paper.findings(_results(sites, [0.3, 0.4, 0.5, 0.6], [0.1] * 4, [-0.5, -0.8, -0.8, -0.9], [-0.1] * 4))
    assert good["a"]["holds"] and good["b"]["holds"] and good["c"]["holds"] and good["d"]["holds"]
    assert good["f"]["holds"] and "e" not in good
    bad = paper.findings(_results(sites, [0.6, 0.5, 0.05, 0.3], [0.1] * 4, [0.1, -0.1, 0.0, -0.2], [-0.5] * 4))
    assert not bad["a"]["holds"] and not bad["b"]["holds"] and not bad["f"]["holds"]
    assert "2/4 blocks" in bad["a"]["evidence"] or "3/4 blocks" in bad["a"]["evidence"]


def test_paper_layer_mapping():
    assert [paper.paper_layer(i, 8) for i in range(8)] == [0, 2, 4, 6, 9, 11, 13, 15]
    assert paper.paper_layer(0, 1) == 0
    assert paper.paper_ablation("ablate", "contribution", 8) == -0.6  # listed layers 7 and 9 tie: the first
    assert paper.paper_ablation("preserve", "activation", 15) == 1.08


def test_paper_sections_and_figure_markers():
    from jaxequiv.codec.report import draw_figures

    res = _results([f"b{i}" for i in range(3)], [0.3, 0.4, 0.5], [0.1] * 3, [-0.5, -0.6, -0.7], [-0.1] * 3)
    text = "\n\n".join(paper.sections(res))
    assert "(f)" in text and "ResNet-50" in text and "| b2 | L15 | 0.50 | 0.63 |" in text
    figs = draw_figures(res)
    lines = {k: [len(a.get_lines()) for a in f.axes] for k, f in figs.items()}
    paper.annotate(figs, res)
    assert len(figs["statistics"].axes[0].get_lines()) > lines["statistics"][0]
    assert len(figs["interventions"].axes[2].get_lines()) > lines["interventions"][2]


# ---------------------------------------------------------------------------------------------------------
# The sensitivity sweep (sensitivity.py)

SWEEP = {"base": "quick", "network": {"blocks": [1, 1], "n_train": 600, "n_analysis": 100, "epochs": 10,
                                      "ig_steps": 2, "chunk_size": 100},
         "widths": [4], "grid_widths": [4], "expansions": [1, 2], "slice_expansion": 2, "thetas": [0.5],
         "l1s": [0.0001],
         "seeds": [0, 1, 2], "budgets": [1, 20], "sae_batch": 32, "chunk_steps": 5, "intervention_thetas": [0.5],
         "trials": 2, "images_per_class": 3, "percentages": [50, 100], "bootstrap": 20}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sensitivity_sweep_shows_what_it_is_meant_to(tmp_path):
    """The shrunk sweep through the CLI: its records, figures and provenance; more SAE training fits better (a sign
    test over paired SAEs); a PCA with as many components reconstructs at least as well as an SAE (an affine rank-k
    fit is optimal, so this must hold exactly); the README renderer accepts the results."""
    from scipy.stats import binomtest

    from experiments import readme_tables
    from experiments.codec_images import sensitivity

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"tiny": SWEEP}))
    out = tmp_path / "out"
    assert sensitivity.main(["--preset", "tiny", "--settings", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["provenance"]["config"]["budgets"] == SWEEP["budgets"] and res["provenance"]["git"]["commit"]
    stages = {k: v for k, v in res["timings_s"].items() if k != "total"}
    assert res["resumed_widths"] == [] and res["timings_s"]["total"] == pytest.approx(sum(stages.values()), abs=0.5)
    for name in res["figures"]:
        assert (out / name).stat().st_size > 1000
    (w,) = res["widths"]
    sites = w["network"]["sites"]
    assert sites == ["layer1.0", "layer2.0"] and w["network"]["test_accuracy"] > 0.2
    rec = w["records"]
    assert len(rec) == 2 * 2 * len(SWEEP["seeds"]) * len(sites) * len(SWEEP["budgets"])  # grid x sources x ...
    key = lambda r: (r["site"], r["source"], r["expansion"], r["seed"])  # noqa: E731
    lo = {key(r): r["r2_codec"] for r in rec if r["epochs"] == 1}
    hi = {key(r): r["r2_codec"] for r in rec if r["epochs"] == 20}
    better = sum(hi[k] > lo[k] for k in lo)
    assert binomtest(better, len(lo), 0.5, alternative="greater").pvalue < 1e-3, (better, len(lo))
    for b in w["baselines"]:
        if b["method"] != "pca":
            continue
        for r in rec:
            if (r["site"], r["source"], r["epochs"]) == (b["site"], b["source"], 20) and r["n_alive"] <= b["k"]:
                assert b["r2_codec"] >= r["r2_codec"] - 1e-4, (b, r)
    assert sum("ablate" in r for r in rec) == 2 * len(SWEEP["seeds"]) * len(sites)  # the slice at the top budget
    assert all(e["n"] == len(SWEEP["seeds"]) for e in w["summary"]["e"])
    verdicts = {v["verdict"] for v in w["summary"]["explanations"].values()}
    assert verdicts <= {"supported", "refuted", "not decided", sensitivity.NO_MISS}
    blocks = readme_tables.codec_sensitivity_blocks(res)
    assert {"codec-sens-run", "codec-sens-e", "codec-sens-f", "codec-sens-explanations"} <= set(blocks)
    assert "layer2.0" in blocks["codec-sens-f"] and "PCA" in blocks["codec-sens-baselines"]


def test_sensitivity_presets_and_network_overrides(tmp_path):
    from experiments.codec_images import sensitivity

    settings = os.path.join(os.path.dirname(run.__file__), "sensitivity.json")
    for preset in ("quick", "full", "paper"):
        cfg = sensitivity.SensitivityConfig.from_json(settings, preset)
        assert set(cfg.grid_widths) <= set(cfg.widths) and len(cfg.budgets) >= 2
    paper_cfg = sensitivity.SensitivityConfig.from_json(settings, "paper")
    assert paper_cfg.budgets[-1] == 300 and 64 in paper_cfg.widths
    assert len(sensitivity.SensitivityConfig().axes(8)["thetas"]) * 27 == 81  # CODEC's grid per source
    assert sensitivity.SensitivityConfig().axes(16)["expansions"] == (3,)  # the slice elsewhere
    net = sensitivity.SensitivityConfig(base="quick", network={"blocks": [1, 1], "epochs": 2}).network_config(16)
    assert (net.blocks, net.epochs, net.width, net.dataset) == ((1, 1), 2, 16, "digits")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": {"budgets": [1, 2], "widht": 3}, "b": {"thetas": [0.5],
                                                                            "intervention_thetas": [0.7]},
                               "c": {"network": {"widht": 3}}, "d": {"expansions": [1, 2]}}))
    with pytest.raises(ValueError, match="widht"):
        sensitivity.SensitivityConfig.from_json(str(bad), "a")
    with pytest.raises(ValueError, match="intervention_thetas"):
        sensitivity.SensitivityConfig.from_json(str(bad), "b")
    with pytest.raises(ValueError, match="widht"):
        sensitivity.SensitivityConfig.from_json(str(bad), "c").network_config(8)
    with pytest.raises(ValueError, match="slice"):
        sensitivity.SensitivityConfig.from_json(str(bad), "d")


def test_baseline_modes_against_numpy():
    from experiments.codec_images.sensitivity import baseline_modes

    rng = np.random.default_rng(0)
    x = (rng.gamma(2.0, size=(200, 3)) @ rng.gamma(2.0, size=(3, 6))).astype(np.float32)  # rank 3, non-negative
    pca, r2 = baseline_modes("pca", x, 3)
    assert pca.codes.shape == (200, 3) and pca.atoms.shape == (3, 6) and pca.alive.all()
    assert r2 > 1 - 1e-5 and (pca.atoms.sum(axis=1) > 0).all()
    centred = x - x.mean(0)
    s = np.linalg.svd(centred.astype(np.float64), compute_uv=False)
    two, r2_two = baseline_modes("pca", x, 2)
    sse = np.sum(s[2:] ** 2)  # Eckart-Young: the best rank-2 affine fit leaves the trailing singular values
    assert r2_two == pytest.approx(1 - sse / np.sum((x - x.mean()) ** 2), rel=1e-4)
    # PCA codes are the centred data projected on the (sign-fixed) atoms
    np.testing.assert_allclose(two.codes, centred @ two.atoms.T, rtol=1e-3, atol=1e-3)
    nmf, r2_nmf = baseline_modes("nmf", x, 3)
    assert (nmf.codes >= 0).all() and (nmf.atoms >= 0).all() and r2_nmf > 0.99
    with pytest.raises(ValueError, match="non-negative"):
        baseline_modes("nmf", x - 1, 2)
    with pytest.raises(ValueError, match="pca' or 'nmf"):
        baseline_modes("ica", x, 2)


def test_interval_helpers():
    from scipy.stats import t

    from experiments.codec_images.sensitivity import bootstrap_ci, t_ci

    v = [0.1, 0.4, 0.25, float("nan")]
    m, lo, hi = t_ci(v)
    ref = t.interval(0.95, 2, loc=np.mean(v[:3]), scale=np.std(v[:3], ddof=1) / np.sqrt(3))
    assert m == pytest.approx(0.25) and (lo, hi) == pytest.approx(ref)
    assert np.isnan(t_ci([0.3])[1]) and t_ci([0.3])[0] == 0.3 and np.isnan(t_ci([])[0])
    x = np.random.default_rng(1).normal(2.0, 1.0, 400)
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), x.size, 200, 0)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.3)


def test_finding_rules():
    assert paper.e_holds([0.5, 0.5, 0.2], [0.3, 0.3, 0.1]) and not paper.e_holds([0.5, 0.5, 0.1], [0.3, 0.3, 0.2])
    assert paper.middle_blocks(range(8), 8) == [2, 3, 4, 5] and paper.middle_blocks([0], 8) == [0]
    assert paper.f_holds([-0.3, -0.5, -0.5, -0.2], [-0.1, -0.2, -0.4, -0.9])  # middle blocks 1, 2: both
    assert not paper.f_holds([-0.3, -0.5, -0.5, -0.2], [-0.1, -0.2, -0.6, -0.9])  # one of two
    assert not paper.f_holds([-0.3, -0.5, -0.5, 0.1], [-0.9] * 4)
