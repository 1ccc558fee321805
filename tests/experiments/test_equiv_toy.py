"""Toy n-permutation experiment: chains, the width-equalising embedding, compiled variants, and --quick end to end."""

import dataclasses
import json

import jax
import numpy as np
import pytest

pytest.importorskip("tracr")

from experiments.equiv_toy import implementations as impl  # noqa: E402
from experiments.equiv_toy import run as toy  # noqa: E402
from experiments.equiv_toy.programs import FAMILIES, INTERPRETATIONS, evaluate_chain  # noqa: E402
from jaxequiv import similarity as sim  # noqa: E402
from jaxequiv.network import Network  # noqa: E402
from jaxequiv.sites import run  # noqa: E402


def test_equal_width_preserves_ridge_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 30, 4)).astype(np.float32)
    b = (a[..., :2] @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(2, 30, 6))).astype(np.float32)
    ea, eb = toy.equal_width([a, b])
    assert ea.shape == eb.shape == (2, 30, 12)
    for x, y, ex, ey in ((a[0], b[0], ea[0], eb[0]), (b[1], a[1], eb[1], ea[1]), (a[0], a[1], ea[0], ea[1])):
        want = float(sim.ridge_score(x, y, key=3))
        assert float(sim.ridge_score(ex, ey, key=3)) == pytest.approx(want, abs=1e-4)


def test_sample_implementations_concatenates_consistent_paths():
    mods = [np.arange(3)[:, None, None] * np.ones((3, 4, 2)), 10 + np.arange(2)[:, None, None] * np.ones((2, 4, 5))]
    out = toy.sample_implementations(mods, 6, np.random.default_rng(1))
    assert out.shape == (6, 4, 7)
    paths = {(int(o[0, 0]), int(o[0, 2])) for o in out}
    assert len(paths) == 6  # all 3 x 2 paths, each once


def test_every_interpretation_decides_permutations():
    n = 3
    seqs = [[a, b, c] for a in range(n) for b in range(n) for c in range(n)]
    for name, chain in INTERPRETATIONS.items():
        final = evaluate_chain(chain, seqs, n)[-1]
        assert [o == [1] * n for o in final] == [sorted(s) == list(range(n)) for s in seqs], name
    assert set(FAMILIES.values()) == {"sorting", "counting"}
    means = toy.family_means(np.array([[1, 0.2], [0.4, 1]]), ["x", "y"], {"x": "sorting", "y": "counting"})
    assert means["across families"] == pytest.approx(0.3) and np.isnan(means["within sorting"])


def test_compiled_variants_keep_tracr_residual_and_function(toy_tracr):
    subs = ["hist", "sort"]
    net = impl.compiled_variants([toy_tracr[s] for s in subs], 3, seed=1)
    assert net.stacked == 6
    seqs = [[a, b, c] for a in range(4) for b in range(4) for c in range(4)]
    for i, s in enumerate(subs):
        m = toy_tracr[s]
        ids = m.encode(seqs)
        logits, resid = impl.forward(impl.substack(net, 3 * i, 3), ids, batch=32)
        d, L = m.config.d_model, m.config.n_layer
        tracr_net = Network.from_module(m.model, (None,), "int")
        names = ["embed", *(f"h.{j}" for j in range(L))]
        want, cap = jax.jit(lambda p, x: run(tracr_net.apply, p, x, capture=names))(tracr_net.params, ids)
        want = np.asarray(want)
        # variant 0 is tracr's model: tracr's residual stream in the first d channels, the same logits
        np.testing.assert_allclose(logits[0][..., : want.shape[-1]], want, atol=1e-5)
        for j, site in enumerate(names):
            np.testing.assert_allclose(resid[0, :, j, :, :d], np.asarray(cap[site]), atol=1e-5)
        # rotated / shifted / padded variants compute the same function
        out = logits[..., : want.shape[-1]].argmax(-1)[:, :, 1:]
        assert (out == want.argmax(-1)[None, :, 1:]).all()


def test_quick_run_end_to_end(tmp_path, toy_tracr):
    """One --quick run through the CLI (one test, so that pytest-xdist never runs it twice): its files and
    provenance, exact compiled variants, imitators far above chance, the two families told apart by the compiled
    variants, and the README blocks rendered from its results."""
    from experiments import readme_tables

    with pytest.raises(ValueError, match="unknown interpretations"):
        toy.build_implementations(toy.ToyConfig(interpretations=("A9",)))
    assert toy.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "congruity.png").stat().st_size > 0 and (tmp_path / "distinguishability.png").exists()
    k = len(toy.QUICK.interpretations)
    for kind in ("compiled", "trained"):
        r = res["kinds"][kind]
        for key in ("congruity", "distinguishability", "distinguishability_fixed_split"):
            m = np.array(r[key])
            assert m.shape == (k, k) and ((0 <= m) & (m <= 1)).all()
        assert set(r["module_accuracy_vs_tracr"]) == set(toy_tracr)
    prov = res["provenance"]
    assert prov["config"] == json.loads(json.dumps(dataclasses.asdict(toy.QUICK))) and prov["seeds"] == [0]
    assert prov["versions"]["tracr-pypi"] and prov["git"]["commit"] and prov["wall_s"] >= res["seconds"]
    assert np.all(np.array(res["final_training_loss"]) < 10)

    # compiled variants (rotations, layer shifts, non-circuit parts) compute exactly tracr's function
    assert all(v == 1.0 for v in res["kinds"]["compiled"]["module_accuracy_vs_tracr"].values())
    # trained imitators reproduce every module's output tokens far above chance (1 / (n + 1) per token)
    chance = 1 / (toy.QUICK.n + 1)
    assert all(v > 0.8 > 3 * chance for v in res["kinds"]["trained"]["module_accuracy_vs_tracr"].values())

    # A1 (sorting) vs A4 (counting), compiled variants: congruity across the families is significantly below 1
    # (its 95% bootstrap interval lies under each interpretation's congruity with itself), and the two are
    # distinguished more often than an interpretation from itself
    r = res["kinds"]["compiled"]
    cong, ci = np.array(r["congruity"]), np.array(r["congruity_ci95"])
    assert ci[0, 1, 1] < min(cong[0, 0], cong[1, 1]) and ci[0, 1, 1] < 1
    grid = np.array(r["distinguishability"])
    assert min(grid[0, 1], grid[1, 0]) > max(grid[0, 0], grid[1, 1])

    # the README's blocks render from these results (the full run's are rendered by experiments/readme_tables.py)
    blocks = readme_tables.toy_blocks(res)
    cong = res["kinds"]["trained"]["congruity"]
    assert f"| A1 | **{cong[0][0]:.2f}** | {cong[0][1]:.2f} |" in blocks["toy-congruity-trained"]
    acc = res["kinds"]["compiled"]["module_accuracy_vs_tracr"]["sort"]
    assert f"sort {acc:.2f}" in blocks["toy-run"] and "Wall time" in blocks["toy-run"]
    means = res["kinds"]["compiled"]["congruity_family_means"]["across families"]
    assert "| across families | 0.01 | " in blocks["toy-congruity-means"]  # the paper's value beside ours
    assert blocks["toy-congruity-means"].endswith(f" {means:.2f} |")


def test_grid_power_is_the_binomial_tail_the_z_test_passes():
    from scipy import stats

    from experiments.equiv_toy import sensitivity as sens

    w = np.array([0.5, 0.7, 0.85, 1.0])
    # T = 10: p - 1.96 sqrt(p (1 - p) / 10) > 0.5 holds from 8 successes on; T = 20: from 15 on
    np.testing.assert_allclose(sens.grid_power(w, 10), stats.binom.sf(7, 10, w), atol=1e-12)
    np.testing.assert_allclose(sens.grid_power(w, 20), stats.binom.sf(14, 20, w), atol=1e-12)
    assert sens.shared_blocks([b"a", b"b", b"a"], [b"a", b"c", b"a"]) == 2
    assert sens.shared_blocks([b"a"], [b"b"]) == 0


@pytest.mark.timeout(600)
def test_sensitivity_quick_explains_both_statistics(tmp_path, toy_tracr):
    """--quick sensitivity (A1 sorting vs A4 counting, n = 3, N = 60): both statistics are functions of exact
    win probabilities over the sampled implementations: congruity = 1 - |w_ab + w_ba - 1| and the grid's rate =
    the Binomial power of the z-test at w_grid, each within 3 standard errors of its sampling (rounds / straps)."""
    from experiments.equiv_toy import sensitivity as sens

    assert sens.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
    assert res["provenance"]["config"]["toy"]["n"] == 3 and res["ns_run"] == [3]
    s = res["parts"][0]["settings"]["60"]
    cfg = sens.QUICK.toy
    cong, want = np.array(s["congruity"]), np.array(s["congruity_expected"])
    # s/n averages 2 indicators per round: sd <= sqrt(0.5 / rounds)
    assert np.abs(cong - want).max() <= 3 * np.sqrt(0.5 / cfg.rounds)
    grid, power = np.array(s["distinguishability"]), np.array(s["grid_expected"])
    assert np.abs(grid - power).max() <= 3 * np.sqrt(0.25 / cfg.straps)  # a rate over straps Bernoulli rounds
    # across the families both statistics see the difference at this N: A1's implementations are closer to
    # each other / to A1's tracr chain than A4's (win probabilities well above 1/2)
    assert min(s["grid_win"][0][1], s["congruity_win"][0][1], s["congruity_win"][1][0]) > 0.75
    ci = s["congruity_family_ci95"]["across families"]
    assert ci[1] < 0.5
