"""SAEs on disk in SAELens's folder layout (``cfg.json`` + ``sae_weights.safetensors``), exact both ways.

Tensor names follow SAELens (``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``,
``threshold``) and so do the architecture names: ``standard`` for relu_l1, ``topk`` for topk and matryoshka,
``jumprelu`` for jumprelu and batchtopk (saved, as SAELens does, with its per-latent inference thresholds).
``cfg.json`` is a SAELens >= 6 config with every field of the architecture's config class, so ``SAE.load_from_disk``
reads it as written; a ``"jaxequiv"`` block records the exact variant and hyper-parameters, so :func:`load_sae`
rebuilds the same SAE. CODEC's stsae has no SAELens architecture: it is saved as ``"jaxequiv_stsae"``, which
SAELens refuses by that name (``KeyError: 'jaxequiv_stsae'``); use :mod:`jaxequiv.sae.torch_stsae` from PyTorch.

SAELens -> jaxequiv: each SAELens setting that changes the maths becomes exact jaxequiv weights or is refused:

- ``rescale_acts_by_decoder_norm`` (topk): folded (``W_enc``, ``b_enc`` times and ``W_dec`` divided by the
  decoder row norms), as SAELens's own ``fold_W_dec_norm``.
- ``apply_b_dec_to_input: false``: folded into ``b_enc`` (``b_enc + b_dec @ W_enc``).
- JumpReLU thresholds below 0: SAELens applies a ReLU before the jump, which equals a threshold of 0.
- ``normalize_activations``: ``expected_average_only_in`` (the weights expect ``x * s``) is folded with ``s`` from
  ``input_scale=`` or the folder's ``activation_scaler.json``; ``layer_norm`` and ``constant_norm_rescale``
  normalise each row and de-normalise each reconstruction with that row's statistics, which an SAE whose decode sees
  only codes cannot do: refused, or loaded bare with ``caller_normalizes=True`` (then use :func:`normalize_rows`);
  ``covariance_whitening`` is refused.
- ``reshape_activations: hook_z`` changes only shapes: pass rows flattened to (B, n_heads * d_head).
- a pre-6.0 ``scaling_factor`` tensor of ones is dropped (as SAELens does); any other is refused.
- bf16 / fp16 tensors compute in ``dtype`` (float32 by default) from their exact stored values.

A folder is published whole (built beside the target, then swapped in; see :mod:`jaxequiv.io.files`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxequiv.io.files import publishing, write_json
from jaxequiv.io.safetensors import read_safetensors, write_safetensors
from jaxequiv.sae import variants as V

__all__ = ["save_sae", "load_sae", "normalize_rows", "CFG_FILE", "WEIGHTS_FILE", "SAELENS_FORMAT"]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"  # SAELens training checkpoints: the expected_average_only_in factor
# The SAELens config format written. SAELens >= 6 reads ``metadata.sae_lens_version`` only to tell its own format
# from pre-6.0 configs (which it rewrites, dropping e.g. metadata.hook_name).
SAELENS_FORMAT = "6.0.0"
_ARCHITECTURES = {"standard": V.ReluL1, "topk": V.TopK, "jumprelu": V.JumpReLU}
_ROW_NORMS = ("layer_norm", "constant_norm_rescale")


def _fold_input_scale(cfg, t: dict[str, np.ndarray], s: float) -> dict[str, np.ndarray]:
    """Weights that take raw ``x`` from weights trained on ``x * s``: the first linear map times ``s``, the decoder
    (and ``b_dec``, in the data's units) divided by ``s``; pre-activations, hence codes and thresholds, unchanged."""
    try:
        ok = math.isfinite(float(s)) and float(s) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_scale must be a finite number > 0 (the SAE was trained on x * input_scale), got {s!r}")
    s = float(s)
    if s == 1:
        return t
    first = "W_1" if isinstance(cfg, V.STSAE) else "W_enc"
    out = {**t, first: t[first] * s, "W_dec": t["W_dec"] / s}
    if "b_dec" in t:
        out["b_dec"] = t["b_dec"] / s
    return out


def _saved_tensors(cfg, params, state, input_scale: float) -> dict[str, np.ndarray]:
    t = {k: np.asarray(v, np.float32) for k, v in params.items()}
    if isinstance(cfg, V.BatchTopK):
        if state is None:
            raise ValueError("saving a batchtopk SAE needs its training state (for the inference thresholds)")
        t["threshold"] = np.asarray(cfg.thresholds(state), np.float32)
    if "threshold" in t and (t["threshold"] < 0).any():
        raise ValueError(f"{cfg.name}: thresholds must be >= 0 to save (min {t['threshold'].min():g}): SAELens's "
                         "JumpReLU applies a ReLU first, so it would zero the codes between a negative threshold and "
                         "0; clamp them with cfg.post_update(params)")
    return _fold_input_scale(cfg, t, input_scale)


def _saelens_config(cfg, metadata: dict[str, Any], input_scale: float) -> dict[str, Any]:
    """cfg.json: every field of SAELens's config class for the architecture, then jaxequiv's block."""
    doc = {"architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": not isinstance(cfg, V.STSAE), "normalize_activations": "none",
           "reshape_activations": "none"}
    if cfg.architecture == "topk":
        doc.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if isinstance(cfg, V.STSAE):
        doc["note"] = ("CODEC's sigmoid-threshold SAE: SAELens has no such architecture. Load it with "
                       "jaxequiv.sae.load_sae, or in PyTorch with jaxequiv.sae.torch_stsae.load_stsae.")
    doc["metadata"] = {"sae_lens_training_version": None, **metadata, "sae_lens_version": SAELENS_FORMAT}
    doc["jaxequiv"] = {"variant": cfg.name, "config": cfg.config_dict(), "folded_input_scale": float(input_scale)}
    return doc


def save_sae(path: str | os.PathLike, cfg, params: dict, state: dict | None = None,
             metadata: dict[str, Any] | None = None, input_scale: float = 1.0) -> str:
    """Write ``path/cfg.json`` and ``path/sae_weights.safetensors`` as one folder swap (replacing an SAE folder
    already there); return the folder path.

    Args:
      metadata: JSON-able, e.g. ``{"hook_name": site}``; goes to cfg.json's ``metadata`` (SAELens's ``cfg.metadata``).
      input_scale: the SAE was trained on ``x * input_scale`` (the CLI's ``1 / global std``). The scale is folded
        into the saved weights (as SAELens's ``fold_activation_norm_scaling_factor``), so the folder takes raw
        activations and reconstructs in raw units, in SAELens and in :func:`load_sae` alike.
    """
    path = os.fspath(path)
    tensors = _saved_tensors(cfg, params, state, input_scale)
    doc = _saelens_config(cfg, dict(metadata or {}), input_scale)
    with publishing(path, overwrite=True, marker=CFG_FILE) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CFG_FILE, doc, indent=2)
    return path


def _pre_6_config(doc: dict, where: str) -> dict:
    """The fields of a pre-6.0 SAELens config that change the maths, in the 6.x spelling (as SAELens rewrites them)."""
    version = doc.get("sae_lens_version") or (doc.get("metadata") or {}).get("sae_lens_version")
    try:
        if version and int(str(version).split(".")[0]) >= 6:
            return doc
    except ValueError:
        raise ValueError(f"{where}: sae_lens_version {version!r} is not a version number") from None
    doc = dict(doc)
    act = doc.get("activation_fn", doc.get("activation_fn_str", "relu"))
    if act == "topk":
        doc["architecture"], doc["k"] = "topk", (doc.get("activation_fn_kwargs") or {}).get("k")
    elif act != "relu":
        raise ValueError(f"{where}: activation_fn {act!r} (a pre-6.0 SAELens config) is not supported; SAELens 6 "
                         "ignores it and computes a ReLU, so jaxequiv refuses rather than guess")
    norm = doc.get("normalize_activations")
    doc["normalize_activations"] = {None: "none", False: "none", True: "expected_average_only_in"}.get(norm, norm)
    return doc


def _architecture(doc: dict, where: str):
    arch = doc.get("architecture", "standard")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{where}: architecture {arch!r} is not supported; jaxequiv reads SAELens's "
                         f"{sorted(_ARCHITECTURES)} and folders written by jaxequiv.sae.save_sae")
    base = {"d_in": int(doc["d_in"]), "d_sae": int(doc["d_sae"])}
    if arch == "topk":
        if doc.get("k") is None:
            raise ValueError(f"{where}: a topk SAE needs k in cfg.json")
        return V.TopK(**base, k=int(doc["k"]))
    return _ARCHITECTURES[arch](**base)


def _input_scale(doc: dict, path: str, input_scale: float | None, caller_normalizes: bool) -> float:
    """The factor the stored weights expect raw inputs to be multiplied by (1 when none)."""
    norm, where = doc.get("normalize_activations", "none"), os.path.join(path, CFG_FILE)
    if norm == "expected_average_only_in" and input_scale is None:
        scaler = os.path.join(path, SCALER_FILE)
        if os.path.exists(scaler):
            with open(scaler) as f:
                input_scale = json.load(f).get("scaling_factor")
        if input_scale is None:
            raise ValueError(f"{where}: normalize_activations='expected_average_only_in' means the weights expect "
                             "x * s, and s is not in the folder; pass load_sae(path, input_scale=s) (SAELens's "
                             "norm_scaling_factor of that release, or the scaling_factor of the training run's "
                             f"{SCALER_FILE})")
    elif norm in _ROW_NORMS and not caller_normalizes:
        raise ValueError(f"{where}: normalize_activations={norm!r} normalises each input row and maps each "
                         "reconstruction back with that row's statistics, which a jaxequiv SAE (decode sees only "
                         "codes) cannot reproduce. Load it with load_sae(path, caller_normalizes=True) and normalise "
                         "yourself: x_n, scale, shift = jaxequiv.sae.io.normalize_rows(x, "
                         f"{norm!r}); z = cfg.encode(params, x_n); x_hat = cfg.decode(params, z) * scale + shift")
    elif norm not in ("none", "expected_average_only_in", *_ROW_NORMS):
        raise ValueError(f"{where}: normalize_activations={norm!r} is not supported (expected none, "
                         "expected_average_only_in, layer_norm or constant_norm_rescale); fold it into the weights "
                         "in SAELens first (e.g. sae.fold_activation_whitening, then sae.save_model)")
    return 1.0 if input_scale is None else input_scale


def _to_jaxequiv(doc: dict, t: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Fold SAELens's settings into plain weights (see the module docstring); exact in exact arithmetic."""
    ones = t.pop("scaling_factor", None)
    if ones is not None and not np.all(ones == 1):
        raise ValueError(f"{where}: a finetuning scaling_factor tensor that is not all ones is not supported")
    if doc.get("rescale_acts_by_decoder_norm"):  # SAELens: pre * |W_dec_i| selects, decode divides it back out
        n = np.linalg.norm(t["W_dec"], axis=1)
        if not (n > 0).all():
            raise ValueError(f"{where}: rescale_acts_by_decoder_norm with a zero decoder row ({int((n == 0).sum())} "
                             "rows); SAELens itself decodes NaN there")
        t = {**t, "W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n, "W_dec": t["W_dec"] / n[:, None]}
    if not doc.get("apply_b_dec_to_input", True) and "b_dec" in t:  # SAELens: pre = x @ W_enc + b_enc
        t = {**t, "b_enc": t["b_enc"] + t["b_dec"] @ t["W_enc"]}
    if "threshold" in t:  # SAELens: relu(pre) * (pre > thr) == pre * (pre > max(thr, 0))
        t = {**t, "threshold": np.maximum(t["threshold"], 0)}
    return t


def load_sae(path: str | os.PathLike, *, dtype=jnp.float32, input_scale: float | None = None,
             caller_normalizes: bool = False):
    """Read a folder written by :func:`save_sae` or by SAELens (standard, topk and jumprelu SAEs).

    SAELens's settings are folded into exact jaxequiv weights or refused (see the module docstring), so
    ``cfg.encode(params, x, state)`` gives SAELens's ``sae.encode(x)`` and ``cfg.decode`` its ``sae.decode``.

    Args:
      dtype: floating dtype of the returned params (float32 by default, whatever the file stores).
      input_scale: the stored weights expect ``x * input_scale``: folded in, so the params take raw ``x``. Needed
        for SAELens's ``expected_average_only_in`` when the folder has no ``activation_scaler.json``.
      caller_normalizes: load SAELens's per-row ``layer_norm`` / ``constant_norm_rescale`` SAEs bare; the caller
        normalises inputs and reconstructions with :func:`normalize_rows`.

    Returns ``(cfg, params, state)``; ``state`` is None except for batchtopk (its thresholds).
    """
    path = os.fspath(path)
    cfg_path, w_path = os.path.join(path, CFG_FILE), os.path.join(path, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found: an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (float32, bfloat16, ...), got {dtype!r}")
    with open(cfg_path) as f:
        doc = _pre_6_config(json.load(f), cfg_path)
    mine = doc.get("jaxequiv")
    cfg = V.VARIANTS[mine["variant"]](**mine["config"]) if mine else _architecture(doc, cfg_path)
    work = jnp.promote_types(jnp.float32, dtype)  # fold in at least float32 (bf16 -> f32 is exact)
    t = {k: np.asarray(v, work) for k, v in read_safetensors(w_path)[0].items()}
    t = _to_jaxequiv(doc, t, w_path)
    t = _fold_input_scale(cfg, t, _input_scale(doc, path, input_scale, caller_normalizes))
    t = {k: jnp.asarray(v, dtype) for k, v in t.items()}
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


def normalize_rows(x: jax.Array, kind: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SAELens's per-row input normalisation: ``(x_n, scale, shift)`` with reconstructions mapped back to raw units
    as ``x_hat * scale + shift``. x: (B, d) -> (B, d), (B, 1), (B, 1).

    ``layer_norm``: ``x_n = (x - mean) / (std + 1e-5)`` (std with Bessel's correction), ``scale = std``,
    ``shift = mean``; ``constant_norm_rescale``: ``x_n = x * sqrt(d) / |x|``, ``scale = |x| / sqrt(d)``, ``shift = 0``.
    """
    x = jnp.asarray(x)
    if kind == "layer_norm":
        mean = jnp.mean(x, axis=-1, keepdims=True)
        std = jnp.std(x, axis=-1, keepdims=True, ddof=1)
        return (x - mean) / (std + 1e-5), std, mean
    if kind == "constant_norm_rescale":
        scale = jnp.linalg.norm(x, axis=-1, keepdims=True) / math.sqrt(x.shape[-1])
        return x / scale, scale, jnp.zeros_like(scale)
    raise ValueError(f"kind must be one of {_ROW_NORMS}, got {kind!r}")
