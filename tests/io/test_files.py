"""Atomic writes and folder publication: readers see the old artefact or the new one, never a mix; no temporary
file or folder is left behind; the umask is honoured; a second writer of one output gets a clear error."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from jaxequiv.io import files


def test_write_text_and_json(tmp_path):
    files.write_text(tmp_path / "a" / "r.md", "hello")
    assert (tmp_path / "a" / "r.md").read_text() == "hello"
    files.write_json(tmp_path / "m.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json"]


def test_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    files.write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        files.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_error_inside_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with files.atomic_path(tmp_path / "x.npy") as tmp:
            assert tmp.endswith(".npy") and os.path.dirname(tmp) == str(tmp_path)
            np.save(tmp, np.arange(3))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with files.atomic_path(tmp_path / "x.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save keeps the name because the suffix is .npy
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(3))


# -- permissions -------------------------------------------------------------------------------------------------
@pytest.fixture(params=[0o002, 0o022], ids=["umask002", "umask022"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_and_folders_honour_the_umask(tmp_path, umask):
    """mkstemp / mkdtemp would give 0600 / 0700 whatever the umask; published artefacts get what open / mkdir
    give (0666 / 0777 minus the umask), like every other tool's output on a shared cluster."""
    files.write_text(tmp_path / "r.md", "x")
    with files.atomic_path(tmp_path / "a.npy") as tmp:
        np.save(tmp, np.zeros(2))
    with files.publishing(tmp_path / "out") as build:
        files.write_json(build / "m.json", {})
        (build / "sub").mkdir()
        (build / "sub" / "plain.txt").write_text("y")
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    for f in (tmp_path / "r.md", tmp_path / "a.npy", tmp_path / "out" / "m.json",
              tmp_path / "out" / "sub" / "plain.txt"):
        assert mode(f) == 0o666 & ~umask, f
    for d in (tmp_path / "out", tmp_path / "out" / "sub"):
        assert mode(d) == 0o777 & ~umask, d


# -- folder publication ------------------------------------------------------------------------------------------
def _write(build, text):
    files.write_text(build / "a.txt", text)
    files.write_text(build / "b.txt", text)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_publishing_creates_refuses_and_overwrites(tmp_path):
    out = tmp_path / "deep" / "out"
    with files.publishing(out, marker="a.txt") as build:
        assert build.parent == out.parent and build.name.startswith(".out.tmp-") and not out.exists()
        _write(build, "old")
    assert _listing(out) == ["a.txt", "b.txt"] and _listing(out.parent) == ["out"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        with files.publishing(out) as build:
            pytest.fail("the check runs before the block")
    with files.publishing(out, overwrite=True, marker="a.txt") as build:
        _write(build, "new")
    assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == "new"
    assert _listing(out.parent) == ["out"]  # no .old, no temp folder, no lock file
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to replace .*no a.txt"):
        with files.publishing(other, overwrite=True, marker="a.txt"):
            pass
    assert _listing(other) == ["thesis.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with files.publishing(empty) as build:  # an empty folder is filled without --overwrite
        _write(build, "x")
    assert _listing(empty) == ["a.txt", "b.txt"]


def test_failure_inside_the_block_leaves_the_old_folder_and_no_leftovers(tmp_path):
    out = tmp_path / "out"
    with files.publishing(out) as build:
        _write(build, "old")
    with pytest.raises(RuntimeError):
        with files.publishing(out, overwrite=True) as build:
            files.write_text(build / "a.txt", "new")
            raise RuntimeError("died half way")
    assert (out / "a.txt").read_text() == "old" and _listing(tmp_path) == ["out"]
    with pytest.raises(RuntimeError):  # parents created for a failed output are removed again
        with files.publishing(tmp_path / "x" / "y" / "out"):
            raise RuntimeError("bad input")
    assert _listing(tmp_path) == ["out"]


def test_bad_targets_are_clear_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with files.publishing(f):
            pass
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        with files.publishing(f / "sub" / "out"):
            pass
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        files.check_output(f / "sub" / "out")
    assert f.read_text() == "keep" and _listing(tmp_path) == ["file"]
    assert files.check_output(tmp_path / "new") is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent_is_a_permission_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError):
            files.check_output(ro / "out")
    finally:
        ro.chmod(0o700)


def test_publishing_through_a_symlink_replaces_the_folder_it_points_to(tmp_path):
    real = tmp_path / "scratch" / "out"
    with files.publishing(real) as build:
        _write(build, "old")
    (tmp_path / "link").symlink_to(real)
    with files.publishing(tmp_path / "link", overwrite=True) as build:
        _write(build, "new")
    assert (tmp_path / "link").is_symlink() and (real / "a.txt").read_text() == "new"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two_renames"])
@pytest.mark.parametrize("stage", ["built", "swapped"])
def test_crash_inside_the_window_leaves_old_or_new(tmp_path, monkeypatch, exchange, stage):
    """A writer dying inside the critical window (simulated by an exception that skips every later step) leaves
    the old folder or the new one; the next writer removes what the dead one left and, where the file system
    cannot exchange two folders, puts the old folder back if the dead writer had moved it aside."""
    out = tmp_path / "out"
    with files.publishing(out) as build:
        _write(build, "old")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)

    class Killed(BaseException):
        pass

    def die(at):
        if at == stage:
            raise Killed

    monkeypatch.setattr(files, "_window", die)
    build = tmp_path / ".out.tmp-0123abcd"
    build.mkdir()
    _write(build, "new")
    with pytest.raises(Killed):
        files.publish(build, out, overwrite=True)
    monkeypatch.setattr(files, "_window", lambda at: None)
    if stage == "built":
        assert (out / "a.txt").read_text() == "old"
    elif exchange:
        assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == "new"
    else:  # between the two renames: the old set is aside, the new one still in its build folder
        assert not out.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1
    with files.publishing(out, overwrite=True) as fresh:  # the next writer
        assert _listing(tmp_path) == [".out.lock", fresh.name, "out"]  # stale folders gone, the old set back
        assert (out / "a.txt").read_text() in ("old", "new")
        _write(fresh, "newer")
    assert _listing(tmp_path) == ["out"] and (out / "b.txt").read_text() == "newer"


def test_publish_a_named_build_folder(tmp_path):
    """A resumable build (``<out>.partial``) is published as is; when it replaces a folder, it is moved to a
    hidden name first, so ``<out>.partial`` never holds the old output (a rerun would resume from it)."""
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    for text in ("old", "new"):
        partial.mkdir()
        _write(partial, text)
        (partial / ".a.txt.tmp-0123abcd.txt").write_text("left by a killed write")
        assert files.publish(partial, out, overwrite=True, marker="a.txt") == str(out)
        assert _listing(tmp_path) == ["out"] and _listing(out) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_text() == "new"


def test_resumable_build_is_kept_on_failure_unless_empty(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with files.publishing(out, resumable=True) as build:
            assert build == tmp_path / "out.partial"
            (build / "checkpoint").mkdir()
            raise RuntimeError("bad settings")
    assert _listing(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with files.publishing(out, resumable=True) as build:
            files.write_text(build / "checkpoint" / "state", "step 10")
            raise KeyboardInterrupt
    with files.publishing(out, resumable=True) as build:
        assert (build / "checkpoint" / "state").read_text() == "step 10"
        files.write_text(build / "result", "done")
    assert _listing(tmp_path) == ["out"] and _listing(out) == ["checkpoint", "result"]


# -- the lock ----------------------------------------------------------------------------------------------------
def test_second_writer_gets_a_clear_error(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time; from jaxequiv.io.files import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('locked', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(files.OutputLockedError, match=rf"being written by another process \(pid {holder.pid}\)"):
            with files.publishing(out) as build:
                pytest.fail("must not get the lock")
        assert _listing(tmp_path) == [".out.lock"]  # the holder's lock file; nothing of ours
    finally:
        holder.communicate("", timeout=60)
    assert _listing(tmp_path) == []  # released and removed
    with files.publishing(out) as build:
        _write(build, "x")


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    out = tmp_path / "out"
    errors = []

    def other():
        try:
            with files.output_lock(out):
                pass
        except files.OutputLockedError as e:
            errors.append(e)

    with files.output_lock(out):
        with files.output_lock(out):  # nested: publish() inside a run that holds the lock
            pass
        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=60)
        assert (tmp_path / ".out.lock").exists()
    assert len(errors) == 1 and not (tmp_path / ".out.lock").exists()
