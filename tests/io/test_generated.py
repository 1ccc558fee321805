"""Generated blocks between marker lines (README tables written from results files)."""

import os

import pytest

from jaxequiv.io import regenerate, replace_block

B, E = "<!-- begin x -->", "<!-- end x -->"


def test_replace_block_keeps_everything_outside_the_markers():
    text = f"intro 1.5\n{B}\nold 2.0\n{E}\nafter\n"
    assert replace_block(text, B, E, "new") == f"intro 1.5\n{B}\nnew\n{E}\nafter\n"
    for bad in ("no markers", f"{E}\n{B}\n", f"{B}\n{B}\n{E}\n"):
        with pytest.raises(ValueError, match="marker lines"):
            replace_block(bad, B, E, "new", where="README.md")


def test_regenerate_checks_then_rewrites_only_when_stale(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"a\n{B}\nstale\n{E}\nb\n{B.replace('x', 'y')}\n\n{E.replace('x', 'y')}\n")
    blocks = [(B, E, "| 1 |"), (B.replace("x", "y"), E.replace("x", "y"), "| 2 |")]
    assert not regenerate(path, blocks, check=True) and "stale" in path.read_text()  # check never writes
    assert not regenerate(path, blocks)
    assert path.read_text() == f"a\n{B}\n| 1 |\n{E}\nb\n{B.replace('x', 'y')}\n| 2 |\n{E.replace('x', 'y')}\n"
    mtime = os.stat(path).st_mtime_ns
    assert regenerate(path, blocks) and regenerate(path, blocks, check=True)
    assert os.stat(path).st_mtime_ns == mtime  # up to date: not rewritten
