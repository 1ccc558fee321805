"""What a compiled kernel communicates: its collectives and the mesh axes each one spans.

A kernel sharded well over ``data`` and ``stack`` only reduces across them (``all-reduce`` / ``reduce-scatter``
for the sums it needs); an ``all-gather``, ``all-to-all`` or ``collective-permute`` over them means XLA moves the
shards themselves between devices, usually because some op needs a whole array. :func:`assert_no_gather` finds
those in the compiled (SPMD-partitioned) HLO. It cannot see a gather written as a reduction (e.g. a ``psum`` of a
zero-padded array): that one is spelled out in the kernel's source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from jax.sharding import Mesh

from jaxequiv.distributed.placement import DATA, STACK

REDUCTIONS = ("all-reduce", "reduce-scatter")
MOVES = ("all-gather", "all-to-all", "ragged-all-to-all", "collective-permute", "collective-broadcast")

_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*[^=]*?(?<![%\w.\-])"
                 rf"(?P<op>{'|'.join(sorted(MOVES + REDUCTIONS, key=len, reverse=True))})(?:-start)?\(")
_LISTS = re.compile(r"\{([\d,\s]*)\}")
_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\((.*?)\))?\s*\{([^}]*)\}")
_IOTA_IDS = re.compile(r"^\s*(?:\[[\d,]+\]<=)?\[([\d,]+)\](?:T\(([\d,]+)\))?\s*$")
_AXIS = re.compile(r"'?([^'=:,\s]+)'?(?:=(\d+)|:\((\d+)\)(\d+))?")


@dataclass(frozen=True)
class Collective:
    """One communicating instruction of a compiled kernel."""

    op: str  # HLO opcode, e.g. "all-gather" (an async "-start" counts as its op)
    axes: tuple[str, ...]  # the mesh axes (of size > 1) along which its devices exchange data
    instruction: str  # the HLO instruction's name, to find it in ``compiled.as_text()``


def _ints(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", text)]


def _iota(dims: str, perm: str | None) -> np.ndarray:
    """XLA's iota device list ``[dims]T(perm)``: ``arange`` reshaped to dims, transposed, flattened."""
    ids = np.arange(int(np.prod(_ints(dims)))).reshape(_ints(dims))
    return (ids.transpose(_ints(perm)) if perm else ids).reshape(-1)


def _mesh_groups(axes_text: str, ids_text: str | None, grouped_text: str) -> list[list[int]]:
    """Device groups of XLA's ``mesh[...] {axes}`` replica-group form (axes or sub-axes ``a:(pre)size``)."""
    axes = [(m[1], int(m[2])) for m in _AXIS.finditer(axes_text)]
    names = [a for a, _ in axes]
    sizes = [s for _, s in axes]
    if not ids_text:
        ids = np.arange(int(np.prod(sizes)))
    elif m := _IOTA_IDS.match(ids_text):
        ids = _iota(m[1], m[2])
    else:
        ids = np.asarray(_ints(ids_text))
    coords = np.indices(sizes).reshape(len(sizes), -1)
    key = coords.copy()
    for m in _AXIS.finditer(grouped_text):
        a = names.index(m[1])
        pre, size = (int(m[3]), int(m[4])) if m[3] else (1, sizes[a])
        stride = sizes[a] // (pre * size)
        key[a] -= (coords[a] // stride) % size * stride
    groups: dict[tuple, list[int]] = {}
    for pos, k in enumerate(map(tuple, key.T)):
        groups.setdefault(k, []).append(int(ids[pos]))
    return list(groups.values())


def _groups(line: str, n_devices: int) -> list[list[int]]:
    """The device groups (or, for a permute, source-target pairs) of one HLO instruction."""
    if m := re.search(r"source_target_pairs=\{((?:\{[\d,\s]*\},?\s*)*)\}", line):
        return [_ints(g) for g in _LISTS.findall(m[1])]
    if m := _IOTA.search(line):
        return _iota(m[3], m[4]).reshape(int(m[1]), int(m[2])).tolist()
    if m := _MESH.search(line):
        return _mesh_groups(m[1], m[2], m[3])
    if m := re.search(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}", line):
        return [_ints(g) for g in _LISTS.findall(m[1])] or [list(range(n_devices))]
    if "replica_groups=" in line:
        raise ValueError(f"unknown replica_groups format in HLO (a newer XLA?): {line.strip()[:200]}")
    return [list(range(n_devices))]  # no groups: all devices together


def _hlo_text(compiled) -> str:
    if isinstance(compiled, str):
        return compiled
    if hasattr(compiled, "compile"):  # jax.stages.Lowered: collectives appear only after SPMD partitioning
        compiled = compiled.compile()
    return compiled.as_text()


def collectives(compiled, mesh: Mesh) -> list[Collective]:
    """The collectives of a compiled kernel and the axes of ``mesh`` each one spans.

    Args:
      compiled: ``jax.jit(f).lower(*args).compile()`` (or the ``Lowered``, or its ``as_text()``), compiled for
        ``mesh`` (its device ``i`` is ``mesh.devices.flat[i]``).
    """
    text = _hlo_text(compiled)
    shape = mesh.devices.shape
    if (m := re.search(r"num_partitions=(\d+)", text)) and int(m[1]) not in (1, mesh.size):
        raise ValueError(f"the kernel was compiled for {m[1]} devices but the mesh has {mesh.size}; pass the mesh "
                         "its inputs are placed on")
    found = []
    for line in text.splitlines():
        if not (m := _OP.match(line)):
            continue
        varies = np.zeros(len(shape), bool)
        for group in _groups(line, mesh.size):
            if group and max(group) >= mesh.size:
                raise ValueError(f"{m['name']} uses device {max(group)} but the mesh has {mesh.size} devices; "
                                 "pass the mesh the kernel was compiled for")
            if len(group) > 1:
                coords = np.array(np.unravel_index(group, shape))
                varies |= (coords != coords[:, :1]).any(axis=1)
        found.append(Collective(m["op"], tuple(a for a, v in zip(mesh.axis_names, varies) if v), m["name"]))
    return found


def assert_no_gather(compiled, mesh: Mesh, axes=(DATA, STACK)) -> None:
    """Raise ``AssertionError`` if the kernel moves shards (all-gather, all-to-all, permute...) along ``axes``.

    Reductions (``all-reduce``, ``reduce-scatter``) are allowed: they are the communication a sharded sum needs.
    """
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    bad = [c for c in collectives(compiled, mesh) if c.op in MOVES and set(c.axes) & set(axes)]
    if bad:
        listed = "; ".join(f"{c.op} {c.instruction} over {', '.join(c.axes)}" for c in bad)
        raise AssertionError(f"the kernel moves shards along {', '.join(axes)} (expected only reductions): {listed}")
