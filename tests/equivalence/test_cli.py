"""`jaxequiv equiv`: pairwise and congruity from stored representations, artefacts and errors."""

import json

import numpy as np

from jaxequiv import similarity as sim
from jaxequiv.cli import main


def test_equiv_pairwise_writes_matrix_json_and_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    reps = {k: rng.normal(size=(30, 5)).astype(np.float32) for k in "abc"}
    np.savez(tmp_path / "reps.npz", **reps)
    assert main(["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "similarity.json").read_text())
    assert doc["names"] == ["a", "b", "c"] and doc["measure"] == "linear_cka"
    want = [[float(sim.linear_cka(reps[x], reps[y])) for y in "abc"] for x in "abc"]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "similarity.npy"), want, rtol=1e-5)
    assert (tmp_path / "out" / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_equiv_congruity_matrix_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("m1", "m2"):
        np.savez(tmp_path / f"{name}.npz", base=rng.normal(size=(30, 4)), impls=rng.normal(size=(3, 30, 4)))
    args = ["equiv", "congruity", str(tmp_path / "m1.npz"), str(tmp_path / "m2.npz"), "--rounds", "10", "--boot", "20"]
    assert main(args + ["--measure", "linear_cka", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "congruity.json").read_text())
    c = np.array(doc["congruity"])
    assert c.shape == (2, 2) and np.all((c >= 0) & (c <= 1)) and c[0, 1] == c[1, 0]
    assert (tmp_path / "out" / "congruity.png").exists()
    np.savez(tmp_path / "bad.npz", base=np.zeros((30, 4)))
    assert main(["equiv", "congruity", str(tmp_path / "m1.npz"), str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "missing arrays ['impls']" in capsys.readouterr().err
    assert main(["equiv", "pairwise", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert main(["equiv", "pairwise", str(tmp_path / "m1.npz"), "--measure", "nope", "--out", str(tmp_path)]) == 2


def test_equiv_reads_safetensors_and_uses_a_fixed_ridge_split(tmp_path, capsys):
    from jaxequiv.io.safetensors import write_safetensors

    rng = np.random.default_rng(2)
    stack = rng.normal(size=(3, 40, 6)).astype(np.float32)
    write_safetensors(tmp_path / "reps.safetensors", {"layer": stack})  # read with jaxequiv's NumPy codec
    args = ["equiv", "pairwise", str(tmp_path / "reps.safetensors"), "--measure", "ridge", "--fixed-split", "7"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--seed", "1", "--out", str(tmp_path / "b")]) == 0  # the split does not follow --seed
    got = np.load(tmp_path / "a" / "similarity.npy")
    np.testing.assert_array_equal(got, np.load(tmp_path / "b" / "similarity.npy"))
    fixed = sim.ridge_measure(split=7)
    np.testing.assert_allclose(got[0], np.asarray(fixed.many(stack[0], stack)), atol=1e-6)
    assert json.loads((tmp_path / "a" / "similarity.json").read_text())["fixed_split"] == 7
    assert main(["equiv", "pairwise", str(tmp_path / "reps.safetensors"), "--fixed-split", "7", "--out", str(tmp_path)]) == 2
    assert "--fixed-split applies to the ridge measures" in capsys.readouterr().err
