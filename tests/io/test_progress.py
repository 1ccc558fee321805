"""The progress bar: tqdm when installed, plain lines on stderr without it, nothing when disabled or not process 0."""

import sys

import pytest

from jaxequiv.io import progress
from jaxequiv.io.progress import progress_bar


@pytest.fixture
def no_tqdm(monkeypatch):
    """Make ``import tqdm.auto`` fail, as on a core install."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


def test_plain_lines_without_tqdm(no_tqdm, capsys):
    with progress_bar(100, desc="work", unit="step") as bar:
        for _ in range(100):
            bar.update(1)
            bar.set_postfix(loss="0.5", refresh=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("work: 10/100 step (10%)") and lines[0].endswith("loss=0.5")
    assert lines[-1].startswith("work: 100/100 step (100%)")


def test_plain_resumed_and_unfinished(no_tqdm, capsys):
    bar = progress_bar(10, desc="chunks", unit="chunk", initial=5)
    bar.close()  # nothing done (an error at once): the state is shown once
    bar = progress_bar(10, desc="chunks", unit="chunk", initial=5)
    bar.update(2)  # 70%: a new tenth
    bar.close()  # already shown
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[1] for line in lines] == ["5/10", "7/10"]


def test_uses_tqdm_when_installed():
    tqdm = pytest.importorskip("tqdm.auto")
    bar = progress_bar(3, desc="x", enabled=True)
    assert isinstance(bar, tqdm.tqdm)
    bar.close()


def test_silent_when_disabled_or_not_process_zero(no_tqdm, capsys, monkeypatch):
    bar = progress_bar(4, desc="off", enabled=False)
    bar.update(4)
    bar.set_postfix(a=1)
    bar.close()
    monkeypatch.setattr(progress, "_is_process_zero", lambda: False)
    with progress_bar(4, desc="rank1") as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""


def test_process_zero_check():
    assert progress._is_process_zero()  # a single JAX process is process 0
