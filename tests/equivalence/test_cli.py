"""`jaxequiv equiv`: pairwise and congruity from stored representations, artefacts and errors."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from jaxequiv import similarity as sim
from jaxequiv.cli import main
from tests.clicases import Case, check, disk_full, other_output, table, truncate, unwritable


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
    # --mesh: the pairs of models split over 8 (fake) devices, each as on one device
    assert main(args + ["--measure", "linear_cka", "--out", str(tmp_path / "mesh"), "--mesh", "pairs=-1"]) == 0
    assert json.loads((tmp_path / "mesh" / "congruity.json").read_text()) == doc
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


# -- bad input: one line, status 2, nothing left (tests/clicases.py) -----------------------------------------------
def _reps(env, name="reps.npz", **arrays):
    rng = np.random.default_rng(0)
    arrays = arrays or {k: rng.normal(size=(20, 3)).astype(np.float32) for k in "abc"}
    np.savez(env.tmp / name, **arrays)
    return str(env.tmp / name)


def _nan(value):
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    x[4, 1] = value
    return x


def _file(env, name="out"):
    (env.tmp / name).write_text("keep")
    return str(env.tmp / name)


def _pw(env, reps, *extra):
    return ["equiv", "pairwise", reps, "--out", str(env.tmp / "out"), *extra]


PAIRWISE = table("equiv pairwise", [
    Case("no file", "missing", lambda e: _pw(e, str(e.tmp / "none.npz")), "no such file: "),
    Case("a folder", "missing", lambda e: (e.tmp.joinpath("d.npz").mkdir(), _pw(e, str(e.tmp / "d.npz")))[1],
         "(it is a folder)"),
    Case("0-byte file", "empty", lambda e: (e.tmp.joinpath("r.npz").write_bytes(b""), _pw(e, str(e.tmp / "r.npz")))[1],
         "r.npz is empty"),
    Case("no arrays", "empty", lambda e: (np.savez(e.tmp / "r.npz"), _pw(e, str(e.tmp / "r.npz")))[1],
         "r.npz holds no arrays"),
    Case("no samples", "empty", lambda e: _pw(e, _reps(e, a=np.zeros((0, 3)), b=np.zeros((0, 3)))),
         "needs at least 2 samples, got n=0"),
    Case("truncated .npz", "truncated", lambda e: _pw(e, truncate(_reps(e))), "reps.npz is truncated or corrupt"),
    Case("text as .npz", "wrong type", lambda e: (e.tmp.joinpath("r.npz").write_text("1,2"), _pw(e, str(e.tmp / "r.npz")))[1],
         "r.npz is not a .npz (zip) file"),
    Case("object arrays", "wrong type", lambda e: _pw(e, _reps(e, a=np.array([{}], dtype=object))),
         "holds Python objects, which jaxequiv does not unpickle"),
    Case(".txt file", "wrong type", lambda e: (e.tmp.joinpath("r.txt").write_text("1"), _pw(e, str(e.tmp / "r.txt")))[1],
         "expected a .npz, .npy or .safetensors file"),
    Case("1-D arrays", "wrong shape", lambda e: _pw(e, _reps(e, a=np.ones(5), b=np.ones(5))),
         "expected (N, D) arrays or one (M, N, D) stack"),
    Case("unequal shapes", "wrong shape", lambda e: _pw(e, _reps(e, a=np.ones((5, 2)), b=np.ones((6, 2)))),
         "must share one (N, D) shape"),
    Case("NaN", "nan/inf", lambda e: _pw(e, _reps(e, a=_nan(0), b=_nan(np.nan))), "'b' contains NaN or Inf"),
    Case("Inf", "nan/inf", lambda e: _pw(e, _reps(e, a=_nan(np.inf), b=_nan(0))), "'a' contains NaN or Inf"),
    Case("out is a file", "path is a file", lambda e: ["equiv", "pairwise", _reps(e), "--out", _file(e)],
         "is a file, but this output is a folder"),
    Case("out below a file", "path is a file",
         lambda e: ["equiv", "pairwise", _reps(e), "--out", _file(e) + "/sub"], "is not a folder"),
    Case("unwritable", "unwritable", lambda e: _pw(e, _reps(e)), "permission denied; choose a location you can write",
         patch=unwritable),
    Case("another kind of folder", "existing output",
         lambda e: ["equiv", "pairwise", _reps(e), "--out", other_output(e), "--overwrite"],
         "it has no similarity.json, so it is not an output of this kind"),
    Case("no --overwrite", "existing output", lambda e: ["equiv", "pairwise", _reps(e), "--out", other_output(e)],
         "already exists; pass --overwrite"),
    Case("unknown measure", "bad option", lambda e: _pw(e, _reps(e), "--measure", "nope"),
         "argument --measure: invalid choice: 'nope'"),
    Case("fixed split of CKA", "bad option", lambda e: _pw(e, _reps(e), "--fixed-split", "3"),
         "--fixed-split applies to the ridge measures"),
    Case("too few samples for ridge", "wrong shape",
         lambda e: _pw(e, _reps(e, a=np.ones((2, 3)), b=np.ones((2, 3))), "--measure", "ridge"),
         "ridge needs at least 3 samples"),
    Case("negative seed", "bad option", lambda e: _pw(e, _reps(e), "--seed", "-1"),
         "argument --seed: a seed is an integer in [0, 4294967295]"),
    Case("disk full", "mid-run failure", lambda e: _pw(e, _reps(e)), "no space left on device; free some space",
         patch=disk_full),
])


def _model(env, name, n=20, d=3, m=3, **override):
    rng = np.random.default_rng(len(name))
    arrays = {"base": rng.normal(size=(n, d)), "impls": rng.normal(size=(m, n, d)), **override}
    path = env.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _cg(env, *models, extra=()):
    return ["equiv", "congruity", *models, "--out", str(env.tmp / "out"), "--rounds", "4", "--boot", "8",
            "--measure", "linear_cka", *extra]


CONGRUITY = table("equiv congruity", [
    Case("no file", "missing", lambda e: _cg(e, _model(e, "a.npz"), str(e.tmp / "none.npz")), "no such file: "),
    Case("one model", "missing", lambda e: _cg(e, _model(e, "a.npz")), "needs at least 2 model files"),
    Case("no impls", "missing", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", impls=None)),
         "b.npz: missing arrays ['impls']"),
    Case("0-byte file", "empty", lambda e: (e.tmp.joinpath("b.npz").write_bytes(b""),
                                           _cg(e, _model(e, "a.npz"), str(e.tmp / "b.npz")))[1], "b.npz is empty"),
    Case("truncated", "truncated", lambda e: _cg(e, _model(e, "a.npz"), truncate(_model(e, "b.npz"))),
         "b.npz is truncated or corrupt"),
    Case("text as .npz", "wrong type", lambda e: (e.tmp.joinpath("b.npz").write_text("x"),
                                                 _cg(e, _model(e, "a.npz"), str(e.tmp / "b.npz")))[1],
         "b.npz is not a .npz (zip) file"),
    Case("impls not a stack", "wrong shape",
         lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", impls=np.ones((20, 3)))),
         "expected a stack of representations (m, n, d), got shape (20, 3)"),
    Case("one implementation", "wrong shape", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", m=1)),
         "needs at least 2 representations, got 1"),
    Case("different N", "wrong shape", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", n=12)),
         "the same N stimuli"),
    Case("NaN base", "nan/inf", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", base=_nan(np.nan))),
         "contains NaN or Inf"),
    Case("no samples", "empty", lambda e: _cg(e, _model(e, "a.npz", n=0), _model(e, "b.npz", n=0)), "n=0"),
    Case("Inf implementation", "nan/inf",
         lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz", impls=np.full((3, 20, 3), np.inf))),
         "contains NaN or Inf"),
    Case("out is a file", "path is a file",
         lambda e: ["equiv", "congruity", _model(e, "a.npz"), _model(e, "b.npz"), "--out", _file(e)], "is a file"),
    Case("out below a file", "path is a file",
         lambda e: ["equiv", "congruity", _model(e, "a.npz"), _model(e, "b.npz"), "--out", _file(e) + "/x"],
         "is not a folder"),
    Case("no --overwrite", "existing output",
         lambda e: ["equiv", "congruity", _model(e, "a.npz"), _model(e, "b.npz"), "--out", other_output(e)],
         "already exists; pass --overwrite"),
    Case("unwritable", "unwritable", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz")), "permission denied",
         patch=unwritable),
    Case("another kind of folder", "existing output",
         lambda e: ["equiv", "congruity", _model(e, "a.npz"), _model(e, "b.npz"), "--out", other_output(e),
                    "--overwrite"], "it has no congruity.json"),
    Case("one file twice", "duplicate names", lambda e: _cg(e, _model(e, "a.npz"), str(e.tmp / "a.npz")),
         "a.npz"),
    Case("no rounds", "bad option", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz"), extra=["--rounds", "0"]),
         "--rounds >= 1"),
    Case("NaN ci", "bad option", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz"), extra=["--ci", "nan"]),
         "argument --ci: expected a finite number"),
    Case("unknown measure", "bad option", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz"),
                                                       extra=["--measure", "nope"]), "invalid choice: 'nope'"),
    Case("disk full", "mid-run failure", lambda e: _cg(e, _model(e, "a.npz"), _model(e, "b.npz")),
         "no space left on device; free some space", patch=disk_full),
])


@pytest.mark.parametrize("case", PAIRWISE, ids=lambda c: c.id)
def test_pairwise_bad_input(case, tmp_path, capsys, monkeypatch):
    check("equiv pairwise", case, SimpleNamespace(tmp=tmp_path), capsys, monkeypatch)


@pytest.mark.parametrize("case", CONGRUITY, ids=lambda c: c.id)
def test_congruity_bad_input(case, tmp_path, capsys, monkeypatch):
    check("equiv congruity", case, SimpleNamespace(tmp=tmp_path), capsys, monkeypatch)
