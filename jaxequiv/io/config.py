"""Config dataclasses <-> JSON: one round trip for every frozen config (models, SAE variants, pipelines).

:func:`to_dict` gives a JSON-ready dict (tuples become lists, array scalars Python numbers, fields annotated
``float`` floats, nested configs dicts); :func:`from_dict` is its strict inverse (an unknown key is an error that
names the known ones; lists become tuples, so the config stays hashable; dicts become nested configs where a
field is annotated with a dataclass). :class:`DictConfig` adds both as methods.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

__all__ = ["to_dict", "from_dict", "from_preset", "DictConfig"]

T = TypeVar("T")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        import numpy as np

        return np.asarray(value).tolist()  # raises for a traced value: configs written to disk are concrete
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The fields of dataclass instance ``config`` as a JSON-ready dict."""
    out = {}
    for f in dataclasses.fields(config):
        v = _plain(getattr(config, f.name))
        if f.type in (float, "float") and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[f.name] = v
    return out


def _nested_type(hint: Any) -> type | None:
    """The dataclass a field annotated ``hint`` holds (``Cfg`` or ``Cfg | None``), else None."""
    for t in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(t) and isinstance(t, type):
            return t
    return None


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data`` (the inverse of :func:`to_dict`).

    Args:
      where: where ``data`` came from (a file, a key), for the error message.

    Raises:
      ValueError: ``data`` is not a dict, or holds keys that are not fields of ``cls``.
    """
    src = f" in {where}" if where else ""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} config{src} must be a JSON object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}{src}; known fields are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for k, v in data.items():
        nested = _nested_type(hints.get(k))
        values[k] = (from_dict(nested, v, where=f"{where or cls.__name__}.{k}") if nested and isinstance(v, dict)
                     else _tuples(v))
    return cls(**values)


def from_preset(cls: type[T], path: str, preset: str, **overrides: Any) -> T:
    """Dataclass ``cls`` from the ``preset`` entry (e.g. ``"quick"``, ``"full"``) of the JSON file ``path``, with
    ``overrides`` replacing entries of the preset.

    Raises:
      ValueError: the file has no such preset, or the entry does not fit ``cls`` (see :func:`from_dict`).
    """
    with open(path) as f:
        raw = json.load(f)
    if preset not in raw:
        raise ValueError(f"{path} has no preset {preset!r}; it has {sorted(raw)}")
    return from_dict(cls, {**raw[preset], **overrides},
                     where=f"{path}[{preset!r}]" + (f" with overrides {sorted(overrides)}" if overrides else ""))


class DictConfig:
    """Mixin for a frozen dataclass config: ``to_dict()`` and the strict ``from_dict(d)`` of this module."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return from_dict(cls, d)
