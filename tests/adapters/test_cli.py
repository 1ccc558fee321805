"""``jaxequiv convert``: bad input ends in one line, status 2, and nothing left behind (tests/clicases.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
from flax import nnx

from jaxequiv.adapters import torch as ad
from jaxequiv.io.safetensors import read_safetensors, write_safetensors
from jaxequiv.models.resnet import resnet18
from tests.clicases import Case, check, disk_full, other_output, table, truncate, unwritable


def _artefact(env, name="src", change=None):
    """A tiny ResNet written by jaxequiv (model.safetensors + config.json), its tensors passed through ``change``."""
    ad.save(resnet18(num_classes=3, in_channels=1, width=2, stem="small", rngs=nnx.Rngs(0)), env.tmp / name)
    if change is not None:
        path = env.tmp / name / "model.safetensors"
        tensors, meta = read_safetensors(path)
        write_safetensors(path, change(dict(tensors)), meta)
    return str(env.tmp / name)


def _nan(tensors):
    tensors["conv1.kernel"] = np.array(tensors["conv1.kernel"])
    tensors["conv1.kernel"][0, 0, 0, 1] = np.nan
    return tensors


def _write(env, name, data: bytes):
    (env.tmp / name).write_bytes(data)
    return str(env.tmp / name)


def _torch_save(env, name, obj):
    torch = pytest.importorskip("torch")
    torch.save(obj, env.tmp / name)
    return str(env.tmp / name)


def _weights(env, name="w.safetensors", **tensors):
    write_safetensors(env.tmp / name, tensors or {"conv1.weight": np.ones((2, 1, 3, 3), np.float32)})
    return str(env.tmp / name)


def _convert(env, source, *extra, out=None):
    return ["convert", source, out or str(env.tmp / "out"), *extra]


CONVERT = table("convert", [
    Case("no file", "missing", lambda e: _convert(e, str(e.tmp / "none.pt"), "--arch", "resnet"), "does not exist"),
    Case("folder without config", "missing", lambda e: (e.tmp.joinpath("d").mkdir(), _convert(e, str(e.tmp / "d")))[1],
         "has no config.json"),
    Case("0-byte .pt", "empty", lambda e: _convert(e, _write(e, "e.pt", b""), "--arch", "resnet"), "is empty (0 bytes)"),
    Case("truncated safetensors", "truncated", lambda e: _convert(e, truncate(_weights(e), drop=16), "--arch", "resnet"),
         "the file is truncated"),
    Case("text as .pt", "wrong type", lambda e: _convert(e, _write(e, "t.pt", b"not a checkpoint"), "--arch", "resnet"),
         "could not read"),
    Case("a list, not a state dict", "wrong type", lambda e: _convert(e, _torch_save(e, "l.pt", [1, 2]), "--arch",
                                                                      "resnet"), "expected a state dict"),
    Case("wrong shapes", "wrong shape", lambda e: _convert(e, _weights(e), "--arch", "resnet", "--config",
                                                           '{"width": 2, "num_classes": 3, "in_channels": 1}'),
         "shape mismatches"),
    Case("NaN weights", "nan/inf", lambda e: _convert(e, _artefact(e, change=_nan)),
         "parameter conv1.kernel contains NaN or Inf"),
    Case("out is a file", "path is a file", lambda e: _convert(e, _artefact(e), out=_write(e, "f", b"keep")),
         "is a file, but this output is a folder"),
    Case("out below a file", "path is a file", lambda e: _convert(e, _artefact(e), out=_write(e, "f", b"k") + "/x"),
         "is not a folder"),
    Case("unwritable", "unwritable", lambda e: _convert(e, _artefact(e)), "permission denied", patch=unwritable),
    Case("another kind of folder", "existing output",
         lambda e: _convert(e, _artefact(e), "--overwrite", out=other_output(e)), "it has no config.json"),
    Case("no --overwrite", "existing output", lambda e: _convert(e, _artefact(e), out=other_output(e)),
         "already exists; pass --overwrite"),
    Case("config not JSON", "bad option", lambda e: _convert(e, _weights(e), "--arch", "resnet", "--config", "{w"),
         "--config is not valid JSON"),
    Case("config file missing", "missing", lambda e: _convert(e, _weights(e), "--arch", "resnet", "--config",
                                                              str(e.tmp / "c.json")), "c.json: no such file"),
    Case("unknown arch", "bad option", lambda e: _convert(e, _weights(e), "--arch", "nope"), "nope"),
    Case("arch without config", "missing", lambda e: _convert(e, _weights(e), "--arch", "gpt2"),
         "--arch 'gpt2' needs a config: pass --config"),
    Case("bad dtype", "bad option", lambda e: _convert(e, _weights(e), "--dtype", "int8"),
         "argument --dtype: invalid choice: 'int8'"),
    Case("disk full", "mid-run failure", lambda e: _convert(e, _artefact(e)), "no space left on device",
         patch=disk_full),
    Case("source is its own output", "duplicate names", lambda e: _convert(e, _artefact(e), out=str(e.tmp / "src")),
         "already exists; pass --overwrite"),
])


@pytest.mark.parametrize("case", CONVERT, ids=lambda c: c.id)
def test_convert_bad_input(case, tmp_path, capsys, monkeypatch):
    check("convert", case, SimpleNamespace(tmp=tmp_path), capsys, monkeypatch)
