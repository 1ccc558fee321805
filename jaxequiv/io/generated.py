"""Generated blocks in hand-written files: a README's tables rewritten from results files, between marker lines,
so that no number in them is typed (``benchmarks/readme_table.py``, ``experiments/readme_tables.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from jaxequiv.io.files import write_text

__all__ = ["replace_block", "regenerate"]


def replace_block(text: str, begin: str, end: str, body: str, *, where: str = "the file") -> str:
    """``text`` with everything between the marker lines ``begin`` and ``end`` replaced by ``body`` (markers kept,
    one newline between each marker and ``body``); raises ``ValueError`` when a marker is missing or repeated."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{where} needs the marker lines of a generated block once each, in this order; add\n"
                         f"{begin}\n{end}\nwhere the block goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def regenerate(path: str | os.PathLike, blocks: Sequence[tuple[str, str, str]], *, check: bool = False) -> bool:
    """Rewrite the generated blocks ``[(begin, end, body)]`` of the file at ``path`` (atomically, only if they
    changed); with ``check`` only compare. Returns whether the file was already up to date."""
    with open(path, encoding="utf-8") as f:
        old = f.read()
    new = old
    for begin, end, body in blocks:
        new = replace_block(new, begin, end, body, where=str(path))
    if new != old and not check:
        write_text(path, new)
    return new == old
