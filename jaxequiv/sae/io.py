"""SAEs on disk in SAELens's folder layout: ``cfg.json`` + ``sae_weights.safetensors``.

Tensor names follow SAELens (``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``,
``threshold``) and so do the architecture names (``standard`` for relu_l1, ``topk``, ``jumprelu``; batchtopk is
saved, as SAELens does, as a ``jumprelu`` with its per-latent inference thresholds). CODEC's stsae uses the same
layout with architecture ``"stsae"`` and its own tensors. A ``"jaxequiv"`` block in cfg.json records the exact
variant and hyper-parameters, so :func:`load_sae` rebuilds the same SAE; plain SAELens folders load too.
The folder is published whole (built beside the target, then swapped in; see :mod:`jaxequiv.io.files`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.io.files import publishing, write_json
from jaxequiv.io.safetensors import read_safetensors, write_safetensors
from jaxequiv.sae import variants as V

__all__ = ["save_sae", "load_sae", "CFG_FILE", "WEIGHTS_FILE"]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def _tensors(cfg, params, state) -> dict[str, np.ndarray]:
    t = {k: np.asarray(v, np.float32) for k, v in params.items()}
    if isinstance(cfg, V.BatchTopK):
        if state is None:
            raise ValueError("saving a batchtopk SAE needs its training state (for the inference thresholds)")
        t["threshold"] = np.asarray(cfg.thresholds(state), np.float32)
    return t


def save_sae(path: str | os.PathLike, cfg, params: dict, state: dict | None = None,
             metadata: dict[str, Any] | None = None) -> str:
    """Write ``path/cfg.json`` and ``path/sae_weights.safetensors`` as one folder swap (replacing an SAE folder
    already there); return the folder path.

    ``metadata`` (JSON-able, e.g. ``{"hook_name": site, "input_scale": s}``) goes to cfg.json's ``metadata``.
    """
    path = os.fspath(path)
    tensors = _tensors(cfg, params, state)
    linear = not isinstance(cfg, V.STSAE)
    doc = {"architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": linear, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": dict(metadata or {}),
           "jaxequiv": {"variant": cfg.name, "config": cfg.config_dict()}}
    if isinstance(cfg, V.TopK) and not isinstance(cfg, V.BatchTopK):
        doc["k"] = cfg.k
    with publishing(path, overwrite=True, marker=CFG_FILE) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CFG_FILE, doc, indent=2)
    return path


def load_sae(path: str | os.PathLike):
    """Read a folder written by :func:`save_sae` (or by SAELens for standard/topk/jumprelu SAEs).

    Returns ``(cfg, params, state)``; ``state`` is None except for batchtopk (its thresholds).
    """
    path = os.fspath(path)
    cfg_path, w_path = os.path.join(path, CFG_FILE), os.path.join(path, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found: an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    with open(cfg_path) as f:
        doc = json.load(f)
    t = {k: jnp.asarray(v) for k, v in read_safetensors(w_path)[0].items()}
    mine = doc.get("jaxequiv")
    if mine:
        cfg = V.VARIANTS[mine["variant"]](**mine["config"])
    else:
        arch = doc.get("architecture", "standard")
        base = {"d_in": int(doc["d_in"]), "d_sae": int(doc["d_sae"])}
        if arch == "standard":
            cfg = V.ReluL1(**base)
        elif arch == "topk":
            cfg = V.TopK(**base, k=int(doc["k"]))
        elif arch == "jumprelu":
            cfg = V.JumpReLU(**base)
        else:
            raise ValueError(f"{cfg_path}: architecture {arch!r} is not supported; expected standard, topk, "
                             f"jumprelu or a jaxequiv-written SAE")
        if not doc.get("apply_b_dec_to_input", True) and "b_dec" in t:
            raise ValueError(f"{cfg_path}: apply_b_dec_to_input=false is not supported")
    state = None
    if isinstance(cfg, V.BatchTopK):
        thr = t.pop("threshold")
        state = {**cfg.init_state(), "threshold": thr, "seen": jnp.ones(thr.shape, bool)}
    shapes = {k: v.shape for k, v in jax.eval_shape(cfg.init, jax.random.key(0)).items()}
    if set(t) != set(shapes):
        raise ValueError(f"{w_path}: tensors {sorted(t)} do not match a {cfg.name} SAE ({sorted(shapes)})")
    for k, v in t.items():
        if v.shape != shapes[k]:
            raise ValueError(f"{w_path}: tensor {k} has shape {v.shape}, expected {shapes[k]} for "
                             f"d_in={cfg.d_in}, d_sae={cfg.d_sae}")
    return cfg, t, state
