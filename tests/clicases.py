"""Table-driven bad-input cases for the ``jaxequiv`` commands (issue 13.9).

A :class:`Case` builds its inputs in a fresh folder, runs ``jaxequiv.cli.main(argv)`` in-process and asserts the
CLI's error contract: exit status 2 (130 for an interrupt), exactly one error line on stderr, ``jaxequiv COMMAND:
error: ...``, that contains the expected words (warnings printed before it, ``jaxequiv COMMAND: warning: ...``, are
their own lines), no traceback, and nothing left behind (the folder holds exactly what the case put there, byte
for byte: no output, no ``.partial``, no lock, no temporary file; a resumable command failing mid-run keeps only
its ``<out>.partial``). Each test module registers its table with :func:`table`; ``tests/test_cli.py`` checks
that every entry point has at least :data:`MIN_CASES`."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxequiv import cli

MIN_CASES = 10
#: what each case feeds the command (the categories of issue 13.9, plus bad option values and failures mid-run)
KINDS = ("missing", "empty", "truncated", "wrong type", "wrong shape", "nan/inf", "path is a file", "unwritable",
         "existing output", "duplicate names", "bad option", "mid-run failure")
TABLES: dict[str, list[Case]] = {}


@dataclasses.dataclass(frozen=True)
class Case:
    """``argv(env)`` builds the inputs under ``env.tmp`` and returns the command line; the error line must
    contain ``expect`` and must not contain any of ``never``; ``patch(monkeypatch, env)`` simulates what a test
    cannot make for real (an unwritable folder when running as root)."""

    id: str
    kind: str
    argv: Callable[[Any], list[str]]
    expect: str
    patch: Callable[[Any, Any], None] | None = None
    status: int = 2
    never: tuple[str, ...] = ("allow_pickle", "weights_only", "Traceback")
    resumable: bool = False  # a failure mid-run of a resumable command keeps ``out.partial`` for the rerun

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


def table(entry: str, cases: list[Case]) -> list[Case]:
    """Register the bad-input cases of ``entry`` (e.g. ``"sae train"``); returns them for parametrize."""
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), f"duplicate case ids in {entry}"
    TABLES[entry] = cases
    return cases


def other_output(env: Any) -> str:
    """An existing ``--out`` folder holding someone else's file (``notes.txt``); returns its path."""
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "notes.txt").write_text("mine")
    return str(env.tmp / "out")


def truncate(path, keep: float = 0.5, drop: int = 0):
    """Cut the file at ``path`` to ``keep`` of its bytes, or by ``drop`` bytes from its end; returns ``path``."""
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) - drop] if drop else raw[: int(len(raw) * keep)])
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``root`` (hidden ones too) with its content."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = ("dir",)
        for f in files:
            path = os.path.join(folder, f)
            out[os.path.relpath(path, root)] = ("link", os.readlink(path)) if os.path.islink(path) else (
                "file", Path(path).read_bytes())
    return out


def check(entry: str, case: Case, env: Any, capsys, monkeypatch) -> str:
    """Run ``case`` of ``entry`` in ``env`` (with ``env.tmp``) and assert the error contract; return the line."""
    argv = case.argv(env)
    capsys.readouterr()
    before = snapshot(env.tmp)
    if case.patch is not None:
        case.patch(monkeypatch, env)
    try:
        status = cli.main(argv)
    finally:
        monkeypatch.undo()
    err = capsys.readouterr().err
    command = entry.split()[0]
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(f"jaxequiv {command}: warning: ")]
    assert status == case.status, (status, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"jaxequiv {entry}: error: "), line
    assert case.expect in line, (case.expect, line)
    assert not [w for w in case.never if w in err], line
    after = snapshot(env.tmp)
    if case.resumable:
        kept = {k for k in after if k.split(os.sep)[0] == "out.partial"}
        assert kept, "nothing kept to resume"
        after = {k: v for k, v in after.items() if k not in kept}
    assert after == before, sorted(set(after) ^ set(before))
    return line


def unwritable(monkeypatch, env) -> None:
    """Make every folder look read-only to ``os.access`` (what a non-root user sees in someone else's folder;
    the tests may run as root, which no permission bit stops)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real(p, mode, **kw))


def disk_full(monkeypatch, env) -> None:
    """The disk fills up while the output is written: ``fsync`` (which every file and folder of a publication goes
    through before it is swapped in) reports ENOSPC, as a file system with delayed allocation does."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
