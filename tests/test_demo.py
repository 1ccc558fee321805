"""``jaxequiv demo``: the quick run writes a complete report, atomically; bad --out is a clean error."""

import re

import pytest
from flax import nnx

from jaxequiv import cli, demo
from jaxequiv.models.resnet import ResNet


def test_quick_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick", "--seed", "0"]) == 0
    path = out / "report.md"
    assert f"report written to {path}" in capsys.readouterr().out
    assert [p.name for p in out.iterdir()] == ["report.md"]  # no temporary files left behind
    text = path.read_text()
    acc = float(re.search(r"\| test accuracy \| ([0-9.]+) \(450 images\)", text).group(1))
    assert 0.2 < acc <= 1.0  # well above chance (0.1) even after the quick run
    model = nnx.eval_shape(lambda: ResNet("basic", (1, 1), width=8, num_classes=10, in_channels=1, stem="small",
                                          rngs=nnx.Rngs(0)))
    n_params = sum(p.size for p in __import__("jax").tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert f"| parameters | {n_params:,} |" in text
    assert "| training time | " in text
    for row in ["| `relu` | (8, 8, 8) | height, width, channel |", "| `layer1.0` | (8, 8, 8) |",
                "| `layer2.0` | (4, 4, 16) |", "| `avgpool` | (16,) | channel |", "| `fc` | (10,) | channel |"]:
        assert row in text


def test_demo_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert cli.main(["demo", "--out", str(f), "--quick"]) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    demo._write_atomic(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(demo.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        demo._write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
