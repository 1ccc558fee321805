"""``jaxequiv demo``: runs the CODEC pipeline into --out; reports are written atomically; bad --out is a clean error."""

from jaxequiv import cli, demo
from jaxequiv.files import write_text


def test_demo_runs_the_codec_pipeline(tmp_path, capsys, monkeypatch):
    """The CLI wiring: ``jaxequiv demo --quick`` runs the pipeline with the smoke settings into --out and prints
    where the report is. The pipeline itself runs end to end in tests/experiments/test_codec_images.py with these same
    settings (running it twice would double the slowest test)."""
    from jaxequiv.codec import pipeline

    calls = []

    def fake_run(cfg, out_dir, title, **kw):
        calls.append((cfg, out_dir, title))
        path = tmp_path / "demo" / "report.md"
        write_text(path, "# report")
        return str(path)

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    out = tmp_path / "demo"
    out.mkdir()
    assert cli.main(["demo", "--out", str(out), "--quick", "--seed", "0"]) == 0
    assert f"report written to {out / 'report.md'}" in capsys.readouterr().out
    (cfg, out_dir, title), = calls
    assert cfg == demo.demo_config(True, 0) and out_dir == str(out) and "CODEC" in title


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
