"""``jaxequiv demo``: runs the CODEC pipeline into a build folder published at --out; bad --out is a clean error."""

import os

from jaxequiv import cli, demo
from jaxequiv.io.files import write_text


def test_demo_runs_the_codec_pipeline_and_publishes_its_report(tmp_path, capsys, monkeypatch):
    """The CLI wiring: ``jaxequiv demo --quick`` runs the pipeline with the smoke settings in a folder beside --out,
    then swaps it in; a second run needs --overwrite. The pipeline itself runs end to end in
    tests/experiments/test_codec_images.py with these same settings (running it twice would double the slowest
    test)."""
    from jaxequiv.codec import pipeline

    calls = []

    def fake_run(cfg, out_dir, title, **kw):
        calls.append((cfg, out_dir, title))
        path = os.path.join(out_dir, "report.md")
        write_text(path, f"# report {len(calls)}")
        return path

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    out = tmp_path / "demo"
    out.mkdir()  # an empty folder is filled
    assert cli.main(["demo", "--out", str(out), "--quick", "--seed", "0"]) == 0
    assert f"report written to {out / 'report.md'}" in capsys.readouterr().out
    (cfg, out_dir, title), = calls
    assert cfg == demo.demo_config(True, 0) and os.path.dirname(out_dir) == str(tmp_path) and "CODEC" in title
    assert (out / "report.md").read_text() == "# report 1" and os.listdir(tmp_path) == ["demo"]
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err and len(calls) == 1  # refused before any work
    assert cli.main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 0
    assert (out / "report.md").read_text() == "# report 2" and os.listdir(tmp_path) == ["demo"]


def test_demo_config():
    full, quick = demo.demo_config(False, 3), demo.demo_config(True, 3)
    assert full.seed == quick.seed == 3 and sum(full.blocks) >= 8 and sum(quick.blocks) == 2
    assert quick.sae_steps < full.sae_steps and quick.n_analysis < 450


def test_demo_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert cli.main(["demo", "--out", str(f), "--quick"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "keep me" and os.listdir(tmp_path) == ["file.txt"]
