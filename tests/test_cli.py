"""The CLI's error contract: every failure ends in one line ``jaxequiv COMMAND: error: ...`` saying what is wrong and
how to fix it, a non-zero exit, no traceback, and nothing partial left; ``--debug`` shows the traceback."""

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jaxequiv import cli
from jaxequiv.io.files import output_lock
from tests.clicases import KINDS, MIN_CASES, TABLES, Case, check, other_output, table, unwritable


def fails(capsys, argv, contains, status=2):
    """Run the CLI in-process; assert one clear error line that contains ``contains``."""
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    assert contains in lines[0], lines[0]
    return lines[0]


# every command with an output path and (for this table) otherwise valid-looking arguments
COMMANDS = {
    "convert": lambda tmp, out: ["convert", str(tmp / "src"), str(out)],
    "equiv pairwise": lambda tmp, out: ["equiv", "pairwise", str(tmp / "reps.npz"), "--out", str(out)],
    "equiv congruity": lambda tmp, out: ["equiv", "congruity", str(tmp / "a.npz"), str(tmp / "b.npz"), "--out",
                                         str(out)],
    "contributions": lambda tmp, out: ["contributions", "--data", "digits", "--model", "resnet18", "--out",
                                       str(out)],
    "sae train": lambda tmp, out: ["sae", "train", "--store", str(tmp / "store"), "--site", "s", "--out", str(out)],
    "sae sweep": lambda tmp, out: ["sae", "sweep", "--store", str(tmp / "store"), "--site", "s", "--out", str(out)],
    "demo": lambda tmp, out: ["demo", "--quick", "--out", str(out)],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_output_in_the_way_is_one_line_before_any_work(command, tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("keep")
    argv = COMMANDS[command]
    line = fails(capsys, argv(tmp_path, f), "is a file")
    assert line.startswith(f"jaxequiv {command}: error: {f}")
    fails(capsys, argv(tmp_path, f / "below"), "is not a folder")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as an unwritable folder looks to a non-root user
    fails(capsys, argv(tmp_path, tmp_path / "new"), f"{tmp_path}: permission denied; choose a location you can write")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["file"] and f.read_text() == "keep"


def test_existing_output_of_another_kind_is_never_replaced(tmp_path, capsys):
    np.savez(tmp_path / "reps.npz", a=np.ones((5, 2)), b=np.arange(10.0).reshape(5, 2))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    argv = ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(mine)]
    fails(capsys, argv, "already exists; pass --overwrite")
    fails(capsys, argv + ["--overwrite"], "it has no similarity.json, so it is not an output of this kind")
    assert os.listdir(mine) == ["notes.txt"]


def test_bad_input_files(tmp_path, capsys):
    np.savez(tmp_path / "ok.npz", base=np.ones((6, 2)), impls=np.ones((2, 6, 2)))
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npy").write_text("1,2,3")
    (tmp_path / "empty.pt").write_bytes(b"")
    out = tmp_path / "out"
    fails(capsys, ["equiv", "pairwise", str(tmp_path / "cut.npz"), "--out", str(out)],
          "cut.npz is truncated or corrupt")
    fails(capsys, ["equiv", "congruity", str(tmp_path / "ok.npz"), str(tmp_path / "cut.npz"), "--out", str(out)],
          "cut.npz is truncated or corrupt")
    fails(capsys, ["equiv", "congruity", str(tmp_path / "ok.npz"), str(tmp_path / "ok.npz"), "--out", str(out)],
          "a model file is given more than once")  # same-name files in different folders are told apart
    fails(capsys, ["equiv", "pairwise", str(tmp_path / "none.npz"), "--out", str(out)], "no such file")
    line = fails(capsys, ["contributions", "--data", str(tmp_path / "text.npy"), "--model", "resnet18", "--out",
                          str(out)], "text.npy is not a .npy file")
    assert "allow_pickle" not in line
    fails(capsys, ["convert", str(tmp_path / "empty.pt"), str(out), "--arch", "resnet"], "empty.pt is empty (0 bytes)")
    assert sorted(os.listdir(tmp_path)) == ["cut.npz", "empty.pt", "ok.npz", "text.npy"]


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "reps.npz", a=np.ones((5, 2)), b=np.arange(10.0).reshape(5, 2))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the kernel reports it: no file name

    monkeypatch.setattr(os, "fsync", full)
    fails(capsys, ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(tmp_path / "out")],
          "similarity.json: no space left on device; free some space or write to another disk")
    assert os.listdir(tmp_path) == ["reps.npz"]


def test_second_writer_of_one_output(tmp_path, capsys):
    np.savez(tmp_path / "reps.npz", a=np.ones((5, 2)), b=np.arange(10.0).reshape(5, 2))
    held, done = threading.Event(), threading.Event()

    def other_run():
        with output_lock(tmp_path / "out"):
            held.set()
            done.wait(60)

    t = threading.Thread(target=other_run)
    t.start()
    try:
        assert held.wait(60)
        fails(capsys, ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(tmp_path / "out")],
              "is being written by another process")
    finally:
        done.set()
        t.join(60)
    assert sorted(os.listdir(tmp_path)) == ["reps.npz"]


def test_debug_shows_the_traceback_and_bugs_say_so(tmp_path, capsys, monkeypatch):
    argv = ["equiv", "pairwise", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", *argv])
    from jaxequiv.equivalence import cli as equiv_cli

    def buggy(*args):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(equiv_cli, "_stack", buggy)
    np.savez(tmp_path / "reps.npz", a=np.ones((5, 2)))
    fails(capsys, ["equiv", "pairwise", str(tmp_path / "reps.npz"), "--out", str(tmp_path / "o")],
          "unexpected AttributeError", status=1)


def test_explain_maps_os_errors_and_divergence():
    from jaxequiv.sae.train import TrainingDiverged

    cases = [
        (FileExistsError(errno.EEXIST, "File exists", "/r/out"), "/r/out: file exists; a file is in the way"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/r/f/x"), "/r/f/x: not a directory; a part of"),
        (PermissionError(errno.EACCES, "Permission denied", "/r"), "/r: permission denied; choose a location"),
        (OSError(errno.EROFS, "Read-only file system", "/r"), "/r: read-only file system; choose an output on"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded; free some space"),
        (FileExistsError("/r already exists; pass --overwrite"), "/r already exists; pass --overwrite"),
        (KeyError("store has no site 'x'"), "store has no site 'x'"),
        (TrainingDiverged("NaN at step 3; lower the learning rate"),
         "NaN at step 3; lower the learning rate (e.g. --lr 0.1)"),
    ]
    args = cli.build_parser().parse_args(["sae", "train", "--store", "s", "--site", "x", "--out", "o", "--lr", "1"])
    for e, want in cases:
        message, status = cli.explain(e, args)
        assert status == 2 and message.startswith(want), (message, want)
    assert cli.explain(KeyboardInterrupt(), args)[1] == 130


def test_no_traceback_from_the_installed_command(tmp_path):
    """The same contract at the process level (the shell sees stderr and the exit status)."""
    (tmp_path / "empty.pt").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "jaxequiv.cli", "convert", str(tmp_path / "empty.pt"),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("jaxequiv convert: error: ") and "is empty (0 bytes)" in r.stderr


# -- jaxequiv demo: bad input (tests/clicases.py); the pipeline is replaced where a case gets that far -----------
def _failing_pipeline(error):
    def patch(monkeypatch, env):
        from jaxequiv import demo

        def run_pipeline(cfg, out_dir, **kw):
            (Path(out_dir) / "fig.png").write_bytes(b"half a report")  # the run dies after writing part of it
            raise error

        monkeypatch.setattr(demo, "run", run_pipeline)
    return patch


def _demo_output(env):
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "report.md").write_text("# an earlier report")
    return str(env.tmp / "out")


def _demo(env, *extra, out=None):
    return ["demo", "--quick", "--out", out or str(env.tmp / "out"), *extra]


DEMO = table("demo", [
    Case("out is a file", "path is a file", lambda e: (e.tmp.joinpath("f").write_text("k"), _demo(e, out=str(e.tmp / "f")))[1],
         "is a file, but this output is a folder"),
    Case("out below a file", "path is a file",
         lambda e: (e.tmp.joinpath("f").write_text("k"), _demo(e, out=str(e.tmp / "f" / "x")))[1], "is not a folder"),
    Case("empty --out", "empty", lambda e: _demo(e, out=" "), "argument --out: expected a path, got an empty string"),
    Case("unwritable", "unwritable", lambda e: _demo(e), "permission denied", patch=unwritable),
    Case("another kind of folder", "existing output", lambda e: _demo(e, "--overwrite", out=other_output(e)),
         "it has no report.md, so it is not an output of this kind"),
    Case("an earlier report", "existing output", lambda e: _demo(e, out=_demo_output(e)),
         "already exists; pass --overwrite"),
    Case("negative seed", "bad option", lambda e: _demo(e, "--seed", "-1"), "argument --seed: a seed is an integer"),
    Case("seed beyond 32 bits", "bad option", lambda e: _demo(e, "--seed", str(2**32)), "got 4294967296"),
    Case("seed not a number", "wrong type", lambda e: _demo(e, "--seed", "1e3"), "expected an integer seed, got '1e3'"),
    Case("misspelled option", "bad option", lambda e: _demo(e, "--quik"), "unrecognized arguments: --quik"),
    Case("diverged mid-run", "nan/inf", lambda e: _demo(e),
         "loss became NaN at step 3; lower the learning rate",
         patch=_failing_pipeline(FloatingPointError("loss became NaN at step 3; lower the learning rate"))),
    Case("disk full mid-run", "mid-run failure", lambda e: _demo(e), "no space left on device; free some space",
         patch=_failing_pipeline(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "fig.png"))),
    Case("interrupted mid-run", "mid-run failure", lambda e: _demo(e), "interrupted; rerun the same command", status=130,
         patch=_failing_pipeline(KeyboardInterrupt())),
])


@pytest.mark.parametrize("case", DEMO, ids=lambda c: c.id)
def test_demo_bad_input(case, tmp_path, capsys, monkeypatch):
    check("demo", case, SimpleNamespace(tmp=tmp_path), capsys, monkeypatch)


ENTRY_POINTS = ("demo", "convert", "contributions", "sae train", "sae sweep", "equiv pairwise", "equiv congruity")


def test_every_entry_point_has_a_bad_input_table():
    """At least ten cases per command, their categories, and the table the issue's note reports."""
    import tests.adapters.test_cli  # noqa: F401  (each module registers its table)
    import tests.contributions.test_cli  # noqa: F401
    import tests.equivalence.test_cli  # noqa: F401
    import tests.sae.test_cli  # noqa: F401

    assert sorted(TABLES) == sorted(ENTRY_POINTS)
    for entry, cases in TABLES.items():
        assert len(cases) >= MIN_CASES, (entry, len(cases))
        kinds = {c.kind for c in cases}
        assert {"path is a file", "unwritable", "existing output"} <= kinds, (entry, kinds)
        if entry != "demo":  # the demo reads no input file
            assert {"missing", "empty", "wrong type", "wrong shape", "nan/inf"} <= kinds, (entry, kinds)
    rows = [f"{e:16s} {len(TABLES[e]):3d}  " + ", ".join(f"{k} {sum(c.kind == k for c in TABLES[e])}" for k in KINDS
                                                     if any(c.kind == k for c in TABLES[e])) for e in ENTRY_POINTS]
    print("\n".join(rows))


# one case per command in a real process: the shell sees the same single line, status and no traceback
SUBPROCESS = [
    ("convert", lambda tmp: ["convert", str(tmp / "none.pt"), str(tmp / "out"), "--arch", "resnet"], "does not exist"),
    ("sae sweep", lambda tmp: ["sae", "sweep", "--store", str(tmp), "--site", "s", "--out", str(tmp / "o"), "--seeds",
                               "-1"], "argument --seeds: a seed is an integer in [0, 4294967295]"),
    ("equiv pairwise", lambda tmp: ["equiv", "pairwise", str(tmp / "r.npz"), "--out", str(tmp / "o")],
     "r.npz is not a .npz (zip) file"),
    ("contributions", lambda tmp: ["contributions", "--data", str(tmp / "r.npz"), "--model", "resnet18", "--out",
                                   str(tmp / "o")], "--data must be one of"),
]


@pytest.mark.parametrize("entry,argv,expect", SUBPROCESS, ids=[s[0] for s in SUBPROCESS])
def test_bad_input_in_a_real_process(entry, argv, expect, tmp_path):
    (tmp_path / "r.npz").write_text("not an archive")
    r = subprocess.run([sys.executable, "-m", "jaxequiv.cli", *argv(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"jaxequiv {entry}: error: ") and expect in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == ["r.npz"]
