"""``jaxequiv demo``: the smoke run writes the CODEC report (markdown + PNGs) atomically; bad --out is a clean error."""

import json

import pytest

from jaxequiv import cli, demo
from jaxequiv.codec import report


@pytest.mark.slow
def test_quick_demo_writes_codec_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quick", "--seed", "0"]) == 0
    path = out / "report.md"
    assert f"report written to {path}" in capsys.readouterr().out
    text = path.read_text()
    assert "Findings of the paper on this network" in text and "ResNet-50" in text
    for png in ("fig3_contributions_vs_activations.png", "fig5_class_selectivity.png", "fig6_interventions.png",
                "mode_pictures.png"):
        assert (out / png).stat().st_size > 1000
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] in ("digits", "fashion") and res["sites"] == ["layer1.0", "layer2.0"]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_demo_config():
    full, quick = demo.demo_config(False, 3), demo.demo_config(True, 3)
    assert full.seed == quick.seed == 3 and sum(full.blocks) >= 8 and sum(quick.blocks) == 2
    assert quick.sae_steps < full.sae_steps and quick.n_analysis < 450


def test_demo_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert cli.main(["demo", "--out", str(f), "--quick"]) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    report.atomic_write_text(str(path), "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        report.atomic_write_text(str(path), "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
