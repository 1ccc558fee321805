"""The JSON round trip shared by the model configs (frozen dataclasses)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["DictConfig"]


class DictConfig:
    """Mixin for a frozen dataclass config: ``to_dict`` (JSON-ready: tuples become lists) and its strict inverse
    ``from_dict`` (an unknown field is a ``ValueError`` naming the known ones)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)
