"""Toy n-permutation experiment: the scoring kernels on synthetic ridge matrices, and the --quick run end to end."""

import json

import numpy as np
import pytest

pytest.importorskip("tracr")

from experiments.equiv_toy import run as toy  # noqa: E402
from experiments.equiv_toy.programs import FAMILIES, INTERPRETATIONS, evaluate_chain  # noqa: E402


def _r2(names, sizes, within, across):
    return {(a, b): np.full((sizes, sizes), within if a == b else across) + 0.01 * np.random.default_rng(0).random((sizes, sizes))
            for a in names for b in names}


def test_scores_on_separable_and_exchangeable_sets():
    names = ["x", "y"]
    rng = np.random.default_rng(0)
    sep = _r2(names, 8, within=0.9, across=0.1)  # implementations of x and y are told apart every time
    grid = toy.distinguishability_grid(sep, names, rounds=10, trials=20, rng=rng)
    cong = toy.congruity_matrix(sep, names, repeats=40, rng=rng)
    assert grid[0, 1] == grid[1, 0] == 1.0 and cong[0, 1] == cong[1, 0] == 0.0
    # same interpretation: within and across draws are exchangeable -> rarely distinguishable, congruity high
    assert grid[0, 0] < 0.5 and cong[0, 0] > 0.6
    means = toy.family_means(np.array([[1, 0.2], [0.4, 1]]), names, {"x": "sorting", "y": "counting"})
    assert means["across families"] == pytest.approx(0.3) and np.isnan(means["within sorting"])


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


def test_quick_run_end_to_end(tmp_path):
    with pytest.raises(ValueError, match="unknown interpretations"):
        toy.build_implementations(toy.ToyConfig(interpretations=("A9",)))
    assert toy.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "congruity.png").stat().st_size > 0 and (tmp_path / "distinguishability.png").exists()
    k = len(toy.QUICK.interpretations)
    for kind in ("compiled", "trained"):
        r = res["kinds"][kind]
        for key in ("congruity", "distinguishability"):
            m = np.array(r[key])
            assert m.shape == (k, k) and ((0 <= m) & (m <= 1)).all()
    # compiled variants (rotations, layer shifts, non-circuit parts) compute exactly tracr's function
    assert all(v == 1.0 for v in res["kinds"]["compiled"]["module_accuracy_vs_tracr"].values())
