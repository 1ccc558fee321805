"""Atomic writes: the old file survives any failure, and no temporary file is left behind."""

import json
import os

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
