"""Atomic file writes: an artefact is either the old complete file or the new complete file, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_path", "write_text", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds, flush it to disk and
    ``os.replace`` it onto ``path``; when it raises, delete it and leave ``path`` untouched.

    The temporary name keeps ``path``'s extension, so writers that infer a format from it (matplotlib,
    ``np.save``) behave.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``dump_kwargs`` go to :func:`json.dump`, default indent 1)."""
    dump_kwargs.setdefault("indent", 1)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)
