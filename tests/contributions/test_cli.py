"""``jaxequiv contributions``: bad input ends in one line, status 2, and nothing left behind (tests/clicases.py);
``--data mnist --data-root``."""

import gzip
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from jaxequiv.cli import main
from tests.clicases import Case, check, disk_full, other_output, table, unwritable


def _npy(env, name="x.npy", array=None):
    array = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32) if array is None else array
    np.save(env.tmp / name, array)
    return str(env.tmp / name)


def _write(env, name, data: bytes):
    (env.tmp / name).write_bytes(data)
    return str(env.tmp / name)


def _nan():
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32)
    x[2, 3, 3, 0] = np.nan
    return x


def _run(env, data, *extra, out=None):
    return ["contributions", "--data", data, "--model", "resnet18", "--width", "2", "--out",
            out or str(env.tmp / "out"), "--no-progress", *extra]


CONTRIBUTIONS = table("contributions", [
    Case("no file", "missing", lambda e: _run(e, str(e.tmp / "none.npy")), "none.npy: no such file"),
    Case("no checkpoint", "missing", lambda e: ["contributions", "--data", _npy(e), "--checkpoint",
                                                str(e.tmp / "m.pt"), "--out", str(e.tmp / "out")], "does not exist"),
    Case("no MNIST under --data-root", "missing",
         lambda e: (e.tmp.joinpath("mn").mkdir(), _run(e, "mnist", "--data-root", str(e.tmp / "mn")))[1],
         "pass --data-root FOLDER"),
    Case("0-byte .npy", "empty", lambda e: _run(e, _write(e, "x.npy", b"")), "x.npy is empty"),
    Case("no examples", "empty", lambda e: _run(e, _npy(e, array=np.zeros((0, 8, 8, 1), np.float32))),
         "must hold N >= 1 numeric examples"),
    Case("truncated .npy", "truncated", lambda e: _run(e, _write(e, "x.npy", open(_npy(e), "rb").read()[:300])),
         "x.npy: it is truncated or corrupt"),
    Case("text as .npy", "wrong type", lambda e: _run(e, _write(e, "x.npy", b"1,2,3\n4,5,6\n")),
         "x.npy is not a .npy file"),
    Case("Python objects", "wrong type", lambda e: _run(e, _npy(e, array=np.array([{}], dtype=object))),
         "holds Python objects, which jaxequiv does not unpickle"),
    Case("unknown data set", "wrong type", lambda e: _run(e, "cifar10"), "--data must be one of"),
    Case("flat examples for a ResNet", "wrong shape", lambda e: _run(e, _npy(e, array=np.ones((6, 5), np.float32))),
         "takes images [H, W, C]"),
    Case("labels of another length", "wrong shape",
         lambda e: _run(e, _npy(e), "--labels", _npy(e, "y.npy", np.arange(5))), "--labels must hold 6 integers"),
    Case("float labels", "wrong type",
         lambda e: _run(e, _npy(e), "--labels", _npy(e, "y.npy", np.ones(6))), "--labels must hold 6 integers"),
    Case("NaN input", "nan/inf", lambda e: _run(e, _npy(e, array=_nan())), "example 2 contains NaN or Inf"),
    Case("out is a file", "path is a file", lambda e: _run(e, _npy(e), out=_write(e, "f", b"keep")),
         "is a file, but this output is a folder"),
    Case("out below a file", "path is a file", lambda e: _run(e, _npy(e), out=_write(e, "f", b"keep") + "/x"),
         "is not a folder"),
    Case("unwritable", "unwritable", lambda e: _run(e, _npy(e)), "permission denied", patch=unwritable),
    Case("another kind of folder", "existing output",
         lambda e: _run(e, _npy(e), "--overwrite", out=other_output(e)), "it has no meta.json"),
    Case("variant listed twice", "duplicate names", lambda e: _run(e, _npy(e), "--variants", "sum,sum"),
         "argument --variants: sum listed more than once"),
    Case("unknown variant", "bad option", lambda e: _run(e, _npy(e), "--variants", "sum,nope"),
         "unknown or no reduction variant(s) ['nope']"),
    Case("unknown site", "bad option", lambda e: _run(e, _npy(e), "--sites", "nope*"), "nope*"),
    Case("--data-root for digits", "bad option", lambda e: _run(e, "digits", "--data-root", str(e.tmp)),
         "--data-root applies to --data mnist or fashion"),
    Case("--labels for a built-in set", "bad option", lambda e: _run(e, "digits", "--labels", _npy(e)),
         "--labels applies to a .npy --data"),
    Case("no examples left", "bad option", lambda e: _run(e, _npy(e), "--limit", "0"), "--limit must be >= 1"),
    Case("negative seed", "bad option", lambda e: _run(e, _npy(e), "--seed", "-1"), "argument --seed: a seed is"),
    Case("disk full", "mid-run failure", lambda e: _run(e, _npy(e), "--method", "grad_x_act", "--sites", "layer1.0",
                                                        "--variants", "sum"),
         "not enough disk space for the contributions store at", patch=disk_full),
    Case("infinite sigma", "nan/inf", lambda e: _run(e, _npy(e), "--sigma", "inf"),
         "argument --sigma: expected a finite number"),
])


@pytest.mark.parametrize("case", CONTRIBUTIONS, ids=lambda c: c.id)
def test_contributions_bad_input(case, tmp_path, capsys, monkeypatch):
    check("contributions", case, SimpleNamespace(tmp=tmp_path), capsys, monkeypatch)


def _idx(path, array):
    """An IDX file (the MNIST format) holding uint8 ``array``, gzipped."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_data_root_reads_mnist_files_from_that_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "mnist"
    root.mkdir()
    for split, n in (("train", 4), ("t10k", 3)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n))
    out = tmp_path / "store"
    assert main(["contributions", "--data", "mnist", "--data-root", str(root), "--model", "resnet18", "--width", "2",
                 "--method", "grad_x_act", "--sites", "layer1.0", "--variants", "sum", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    from jaxequiv.contributions import open_store

    store = open_store(out)
    assert store.n == 3 and store.meta["config"]["info"]["data"] == "mnist"  # the t10k (test) split of that folder
