"""``jaxequiv demo``: runs the demo into a build folder published at --out, announcing each stage; bad --out is a
clean error."""

import os

import numpy as np

from jaxequiv import cli, demo
from jaxequiv.io.files import write_text


def test_demo_runs_and_publishes_its_report(tmp_path, capsys, monkeypatch):
    """The CLI wiring: ``jaxequiv demo --quick`` runs :func:`jaxequiv.demo.run` with the smoke settings in a folder
    beside --out, then swaps it in; a second run needs --overwrite. The analysis itself runs end to end in
    tests/codec/test_workflow.py (with these same settings) and tests/experiments/test_codec_images.py (running it
    here too would double the slowest test)."""
    calls = []

    def fake_run(cfg, out_dir, *, stages, progress):
        calls.append((cfg, out_dir))
        with stages("work"):
            path = os.path.join(out_dir, "report.md")
            write_text(path, f"# report {len(calls)}")
        return path

    monkeypatch.setattr(demo, "run", fake_run)
    out = tmp_path / "demo"
    out.mkdir()  # an empty folder is filled
    assert cli.main(["demo", "--out", str(out), "--quick", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[demo] CODEC on a small ResNet (--quick)")  # before any import or work
    assert lines[1:5] == ["[demo] settings ...", lines[2], "[demo] work ...", lines[4]]
    assert lines[2].startswith("[demo] settings: ") and lines[4].startswith("[demo] work: ")
    assert lines[5] == f"report written to {out / 'report.md'}"
    (cfg, out_dir), = calls
    assert cfg == demo.demo_config(True, 0) and os.path.dirname(out_dir) == str(tmp_path)
    assert (out / "report.md").read_text() == "# report 1" and os.listdir(tmp_path) == ["demo"]
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err and len(calls) == 1  # refused before any work
    assert cli.main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 0
    assert (out / "report.md").read_text() == "# report 2" and os.listdir(tmp_path) == ["demo"]


def test_demo_config():
    full, quick = demo.demo_config(False, 3), demo.demo_config(True, 3)
    assert full.seed == quick.seed == full.analysis.seed == quick.analysis.seed == 3
    assert sum(full.blocks) >= 8 and sum(quick.blocks) == 2
    assert quick.analysis.sae_steps < full.analysis.sae_steps and quick.n_analysis < 450
    assert full.analysis.superclass == (5, 7, 9)


def test_balanced_subset():
    y = np.repeat(np.arange(3), [5, 9, 4])
    idx = demo.balanced_subset(y, 9, seed=1)
    assert list(np.bincount(y[idx])) == [3, 3, 3] and list(idx) == sorted(idx) and len(set(idx)) == 9
    np.testing.assert_array_equal(idx, demo.balanced_subset(y, 9, seed=1))
    np.testing.assert_array_equal(demo.balanced_subset(y, None, seed=1), np.arange(18))
    np.testing.assert_array_equal(demo.balanced_subset(y, 50, seed=1), np.arange(18))


def test_demo_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert cli.main(["demo", "--out", str(f), "--quick"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "keep me" and os.listdir(tmp_path) == ["file.txt"]


def test_train_resnet_reports_its_test_accuracy():
    from jaxequiv.data.images import load_digits
    from jaxequiv.train import accuracy

    data = load_digits()
    net, acc = demo.train_resnet(data, blocks=(1,), width=2, epochs=1, batch_size=50, lr=1e-2, n_train=100, seed=0)
    assert net.input_shape == data.input_shape and "layer1.0" in net.sites()
    assert acc == accuracy(net, data.x_test, data.y_test.astype(np.int32)) and 0.0 <= acc <= 1.0
