"""What produced a results file: :func:`provenance` gives the config, seeds, code version, library versions,
machine, command line and times of a run as one JSON-ready dict, for every experiment and benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jaxequiv.io.config import to_dict

__all__ = ["provenance"]

# distributions always reported, and those reported (by distribution name) only when the run imported them
# (import name -> distribution)
CORE = ("jax", "jaxlib", "flax", "optax", "numpy")
OPTIONAL = {"torch": "torch", "tracr": "tracr-pypi", "sklearn": "scikit-learn", "transformers": "transformers",
            "tokenizers": "tokenizers", "scipy": "scipy", "matplotlib": "matplotlib"}
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
REPO = Path(__file__).resolve().parents[2]  # the checkout holding this jaxequiv package


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _cpu() -> dict[str, Any]:
    """CPU model, vector extensions and cores (from /proc/cpuinfo where there is one)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "flags"):
                    info.setdefault(key.strip(), val.strip())
                if len(info) == 2:
                    break
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {"model": info.get("model name") or platform.processor() or "unknown",
            "vector": [f for f in VECTOR_FLAGS if f in flags], "cores": os.cpu_count()}


def _json_config(config: Any) -> Any:
    """``config`` (dataclass, dict, ``argparse.Namespace``) as JSON values."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = to_dict(config)
    elif isinstance(config, argparse.Namespace):
        config = vars(config)
    return json.loads(json.dumps(config, default=str))


def provenance(config: Any = None, *, seeds: Any = None, started: float | None = None) -> dict[str, Any]:
    """The record of a run, to store beside its numbers.

    Args:
      config: the run's settings: a config dataclass, a dict or an ``argparse.Namespace`` (stored as JSON).
      seeds: the seed or seeds the run used.
      started: ``time.time()`` when the run began; gives ``started`` (ISO time) and ``wall_s``.

    Returns:
      ``{"config", "seeds", "git": {"commit", "short", "dirty", "changed"}, "versions": {python, jax, jaxlib, flax,
      optax, numpy, + torch / tracr / ... when imported}, "machine": {"cpu": {"model", "vector", "cores"},
      "platform", "backend", "devices", "load_avg" (1, 5, 15 minutes, when called)}, "argv", "started", "finished",
      "wall_s"}``. The git state is read when this is called (``commit`` None outside a git checkout; ``dirty``
      when tracked files differ from it, listed in ``changed``; ``committed_after_start`` when HEAD was committed
      after ``started``, so the code that ran may be an earlier commit's: None without ``started``).
    """
    import jax

    head = _git("rev-parse", "HEAD")
    committed = _git("log", "-1", "--format=%ct")  # HEAD's commit time (seconds since the epoch)
    status = _git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in (status or "").splitlines()]
    versions = {"python": platform.python_version(), **{d: _version(d) for d in CORE}}
    versions.update({d: _version(d) for mod, d in OPTIONAL.items() if mod in sys.modules})
    now = time.time()
    iso = lambda t: datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")  # noqa: E731
    return {
        "config": _json_config(config),
        "seeds": seeds,
        "git": {"commit": head.strip() if head else None, "short": head.strip()[:7] if head else None,
                "dirty": bool(changed) if status is not None else None, "changed": changed[:50],
                "committed_after_start": (int(committed) > started
                                          if committed and committed.strip() and started is not None else None)},
        "versions": versions,
        "machine": {"cpu": _cpu(), "platform": platform.platform(), "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()], "load_avg": [round(v, 2) for v in os.getloadavg()]},
        "argv": list(sys.argv),
        "started": iso(started) if started is not None else None,
        "finished": iso(now),
        "wall_s": round(now - started, 1) if started is not None else None,
    }
