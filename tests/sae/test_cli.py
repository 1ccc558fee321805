"""``jaxequiv sae train|sweep`` over a real (tiny) contributions store."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from jaxequiv import sae
from jaxequiv.cli import main
from jaxequiv.contributions import global_std, open_store
from jaxequiv.sae import codec_sweep, evaluate, load_sae
from jaxequiv.sae.checkpoint import read_meta
from jaxequiv.sae.cli import sweep_names
from tests.clicases import Case, check, disk_full, other_output, table, truncate, unwritable

# the settings of tests/sae/test_train.py (d = 8 here too), so that these runs reuse its compiled steps
TRAIN = ["--steps", "10", "--batch-size", "32", "--log-every", "10", "--lr", "3e-3"]


@pytest.fixture
def store(mlp_store):
    return mlp_store


def test_sae_train_publish_and_resume(store, tmp_path, capsys, monkeypatch):
    def cmd(out, *extra):
        return ["sae", "train", "--store", str(store), "--site", "fc1", "--variant", "activations", "--out",
                str(tmp_path / out), *TRAIN, "--theta", "0.5", "--l1", "0", "--expansion", "1", "--no-progress", *extra]

    args = cmd("o")
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["name"] == "stsae_x1_seed0"
    cfg, params, state = load_sae(tmp_path / "o" / "stsae_x1_seed0")
    doc = json.loads((tmp_path / "o" / "stsae_x1_seed0" / "cfg.json").read_text())
    data = open_store(store).array("fc1", "activations")
    assert doc["metadata"]["hook_name"] == "fc1" and np.isclose(doc["jaxequiv"]["folded_input_scale"],
                                                                 1 / global_std(data))
    ev = evaluate(cfg, params, data, state)  # the saved SAE takes raw activations (the 1/std scale is folded in)
    assert np.isclose(ev["r2_codec"], summary[0]["r2_codec"], rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # published whole: no .partial, no checkpoint
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["stsae_x1_seed0", "summary.json"]
    assert "r2_codec=" in capsys.readouterr().out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err

    # killed after its first checkpoint (KeyboardInterrupt from the progress callback): the old set stays, the
    # run waits in o.partial, and the rerun resumes to the same SAE as an uninterrupted run
    longer = ("--overwrite", "--steps", "20", "--checkpoint-every", "10")
    assert main(cmd("ref", *longer)) == 0
    real = sae.train_many

    def interrupted(*a, **kw):
        def stop(step, entry):
            raise KeyboardInterrupt

        return real(*a, **kw, callback=stop)

    monkeypatch.setattr(sae, "train_many", interrupted)
    assert main(cmd("o", *longer)) == 130 and "interrupted" in capsys.readouterr().err
    assert read_meta(tmp_path / "o.partial" / "checkpoint")["step"] == 10
    _, old, _ = load_sae(tmp_path / "o" / "stsae_x1_seed0")
    np.testing.assert_array_equal(np.asarray(old["W_dec"]), np.asarray(params["W_dec"]))
    monkeypatch.setattr(sae, "train_many", real)
    assert main(cmd("o", *longer)) == 0
    _, resumed, _ = load_sae(tmp_path / "o" / "stsae_x1_seed0")
    _, ref, _ = load_sae(tmp_path / "ref" / "stsae_x1_seed0")
    np.testing.assert_array_equal(np.asarray(resumed["W_dec"]), np.asarray(ref["W_dec"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "ref"]


def test_sae_sweep_and_errors(store, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sae", "sweep", "--store", str(store), "--site", "fc1", "--out", str(out), *TRAIN,
                 "--expansions", "1", "--thetas", "0.5", "--l1s", "0", "--seeds", "1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["stsae_x1_theta0.5_l10_seed1"]
    assert sweep_names(*codec_sweep(8, (1, 2), (0.5,), (0.0, 1e-2), (1, 2))) == [
        "stsae_x1_theta0.5_l10_seed1", "stsae_x1_theta0.5_l10_seed2", "stsae_x1_theta0.5_l10.01_seed1",
        "stsae_x1_theta0.5_l10.01_seed2", "stsae_x2_theta0.5_l10_seed1", "stsae_x2_theta0.5_l10_seed2",
        "stsae_x2_theta0.5_l10.01_seed1", "stsae_x2_theta0.5_l10.01_seed2"]
    assert all((out / s["name"] / "sae_weights.safetensors").exists() for s in summary)
    assert main(["sae", "train", "--store", str(store), "--site", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no site 'nope'" in capsys.readouterr().err
    assert main(["sae", "train", "--store", str(store), "--site", "fc1", "--out", str(tmp_path / "x"),
                 "--theta", "1.5", "--steps", "1"]) == 2
    assert "theta must lie in (0, 1)" in capsys.readouterr().err


def test_sae_failures_are_one_line(store, tmp_path, capsys):
    def fails(argv, contains):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and contains in err and "Traceback" not in err, err
        return err

    base = ["sae", "train", "--store", str(store), "--site", "fc1", *TRAIN, "--no-progress"]
    meta = tmp_path / "o.partial" / "checkpoint" / "10" / "meta"
    meta.mkdir(parents=True)
    (meta / "metadata").write_text('{"step": 10, "hist')  # a run killed while its disk filled up
    err = fails([*base, "--out", str(tmp_path / "o")], "(step 10) cannot be read")
    assert "it is damaged: delete" in err and "o.partial/checkpoint" in err
    err = fails([*base, "--out", str(tmp_path / "d"), "--lr", "1e30", "--normalize", "none"], "NaN/Inf")
    assert "(e.g. --lr 1e+29)" in err
    assert not (tmp_path / "d").exists()
    fails(["sae", "sweep", "--store", str(store), "--site", "fc1", "--out", str(tmp_path / "s"), *TRAIN,
           "--expansions", "1", "--thetas", "0.5", "--l1s", "0", "--seeds", "1,1"], "more than once")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.partial"]


def test_sae_train_names_nan_rows_and_warns_on_a_useless_fit(store, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    mm = np.load(bad / "fc1" / "activations.npy", mmap_mode="r+")
    mm[7, 3] = np.nan
    mm.flush()
    del mm
    common = ["sae", "train", "--site", "fc1", "--variant", "activations", *TRAIN, "--l1", "0", "--expansion", "1",
              "--no-progress"]
    assert main([*common, "--store", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "contains NaN at row 7, column 3" in capsys.readouterr().err
    # theta 0.99: no sigmoid code reaches it, every latent stays dead and the reconstruction is 0
    assert main([*common, "--store", str(store), "--out", str(tmp_path / "o"), "--theta", "0.99"]) == 0
    err = capsys.readouterr().err
    assert "jaxequiv sae: warning: 1 of 1 SAEs fit poorly" in err and "lower theta" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary[0]["n_alive"] == 0 and summary[0]["relative_reconstruction_bias"] == 0.0


# -- bad input: one line, status 2, nothing left (tests/clicases.py) -----------------------------------------------
def _damaged(env, change):
    """A copy of the store under env.tmp with ``change(root)`` applied."""
    root = env.tmp / "store"
    shutil.copytree(env.store, root)
    change(root)
    return str(root)


def _fill(value, row=7, col=3):
    def change(root):
        mm = np.load(root / "fc1" / "positive.npy", mmap_mode="r+")
        if row is None:
            mm[:] = value
        else:
            mm[row, col] = value
        mm.flush()
    return change


def _cut(name):
    return lambda root: truncate(root / name)


def _file(env):
    (env.tmp / "f").write_text("keep")
    return str(env.tmp / "f")


def _sae(command, env, *extra, store=None, out=None):
    return ["sae", command, "--store", store or str(env.store), "--site", "fc1", "--out", out or str(env.tmp / "out"),
            *TRAIN, "--no-progress", *extra]


def _common(command):
    """The cases every ``sae`` command shares: the store, the output, the training settings."""
    def sae(env, *extra, **kw):
        return _sae(command, env, *extra, **kw)

    small = ("--expansions", "1", "--thetas", "0.5", "--l1s", "0", "--seeds", "1") if command == "sweep" else ()

    return [
        Case("no store", "missing", lambda e: sae(e, store=str(e.tmp / "none")), "no contributions store at"),
        Case("unknown site", "missing", lambda e: sae(e)[:5] + ["nope"] + sae(e)[6:], "has no site 'nope'"),
        Case("empty store folder", "empty", lambda e: (e.tmp.joinpath("s").mkdir(), sae(e, store=str(e.tmp / "s")))[1],
             "(no meta.json)"),
        Case("truncated meta.json", "truncated", lambda e: sae(e, store=_damaged(e, _cut("meta.json"))),
             "meta.json is truncated or corrupt"),
        Case("truncated array", "truncated", lambda e: sae(e, store=_damaged(e, _cut("fc1/positive.npy"))),
             "positive.npy: it is truncated or corrupt"),
        Case("text as array", "wrong type",
             lambda e: sae(e, store=_damaged(e, lambda r: (r / "fc1" / "positive.npy").write_text("1 2 3"))),
             "positive.npy is not a .npy file"),
        Case("NaN in the store", "nan/inf", lambda e: sae(e, store=_damaged(e, _fill(np.nan))),
             "contains NaN at row 7, column 3"),
        Case("Inf in the store", "nan/inf", lambda e: sae(e, "--normalize", "none", store=_damaged(e, _fill(np.inf))),
             "contains Inf at row 7, column 3"),
        Case("constant data", "wrong shape", lambda e: sae(e, store=_damaged(e, _fill(1.0, row=None))),
             "is constant (std 0); use --normalize none"),
        Case("out is a file", "path is a file", lambda e: sae(e, out=_file(e)), "is a file, but this output is a folder"),
        Case("out below a file", "path is a file", lambda e: sae(e, out=_file(e) + "/x"), "is not a folder"),
        Case("unwritable", "unwritable", lambda e: sae(e), "permission denied", patch=unwritable),
        Case("another kind of folder", "existing output", lambda e: sae(e, "--overwrite", out=other_output(e)),
             "it has no summary.json, so it is not an output of this kind"),
        Case("batch larger than the data", "wrong shape", lambda e: sae(e, "--batch-size", "1000"),
             "--batch-size 1000 exceeds the 96 rows of data"),
        Case("NaN learning rate", "bad option", lambda e: sae(e, "--lr", "nan"),
             "argument --lr: expected a finite number, got 'nan'"),
        Case("checkpoint not a multiple", "bad option", lambda e: sae(e, "--checkpoint-every", "7"),
             "--checkpoint-every (7) must be a positive multiple of --log-every (10)"),
        Case("negative data seed", "bad option", lambda e: sae(e, "--data-seed", "-1"),
             "argument --data-seed: a seed is an integer in [0, 4294967295]"),
        Case("disk full", "mid-run failure", lambda e: sae(e, *small), "no space left on device", patch=disk_full,
             resumable=True),
    ]


SAE_TRAIN = table("sae train", _common("train") + [
    Case("negative seed", "bad option", lambda e: _sae("train", e, "--seed", "-1"), "argument --seed: a seed is"),
    Case("option of another variant", "bad option", lambda e: _sae("train", e, "--k", "4"),
         "--k does not apply to --arch stsae (it sets topk, matryoshka, batchtopk)"),
    Case("theta out of range", "bad option", lambda e: _sae("train", e, "--theta", "1.5"), "theta must lie in (0, 1)"),
    Case("k above the dictionary", "bad option", lambda e: _sae("train", e, "--arch", "topk", "--k", "1000"),
         "k must be an int in [1, d_sae=24], got --k 1000"),
    Case("zero expansion", "bad option", lambda e: _sae("train", e, "--expansion", "0"), "--expansion must be >= 1"),
    Case("prefixes listed twice", "duplicate names", lambda e: _sae("train", e, "--arch", "matryoshka", "--prefixes",
                                                                    "8,8"), "8 listed more than once"),
])

SAE_SWEEP = table("sae sweep", _common("sweep") + [
    Case("negative seed", "bad option", lambda e: _sae("sweep", e, "--seeds", "1,-1"),
         "argument --seeds: a seed is an integer in [0, 4294967295]"),
    Case("seed listed twice", "duplicate names", lambda e: _sae("sweep", e, "--seeds", "1,1"),
         "argument --seeds: 1 listed more than once; list each seed once"),
    Case("values equal to 6 digits", "duplicate names",
         lambda e: _sae("sweep", e, "--l1s", "1e-4,1.0000001e-4", "--seeds", "1", "--expansions", "1", "--thetas", "0.5"),
         "1 SAE folder name(s) would hold more than one SAE (e.g. stsae_x1_theta0.5_l10.0001_seed1)"),
    Case("empty list", "empty", lambda e: _sae("sweep", e, "--thetas", ""), "argument --thetas: expected comma-separated"),
    Case("NaN theta", "nan/inf", lambda e: _sae("sweep", e, "--thetas", "0.5,nan"),
         "argument --thetas: expected a finite number, got 'nan'"),
    Case("zero expansion", "bad option", lambda e: _sae("sweep", e, "--expansions", "0,1"), "--expansions must be >= 1"),
    Case("negative l1", "bad option", lambda e: _sae("sweep", e, "--l1s", "-1"), "l1 must be >= 0"),
])


@pytest.mark.parametrize("case", SAE_TRAIN, ids=lambda c: c.id)
def test_sae_train_bad_input(case, store, tmp_path, capsys, monkeypatch):
    check("sae train", case, SimpleNamespace(tmp=tmp_path, store=store), capsys, monkeypatch)


@pytest.mark.parametrize("case", SAE_SWEEP, ids=lambda c: c.id)
def test_sae_sweep_bad_input(case, store, tmp_path, capsys, monkeypatch):
    check("sae sweep", case, SimpleNamespace(tmp=tmp_path, store=store), capsys, monkeypatch)


def test_sae_train_after_a_full_disk_publishes_on_the_rerun(store, tmp_path, monkeypatch, capsys):
    argv = _sae("train", SimpleNamespace(tmp=tmp_path, store=store))
    with monkeypatch.context() as m:
        disk_full(m, None)
        assert main(argv) == 2
    assert "no space left on device" in capsys.readouterr().err and (tmp_path / "out.partial").is_dir()
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "summary.json").is_file()
