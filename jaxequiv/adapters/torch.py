"""PyTorch checkpoints -> jaxequiv models (flax nnx, with named sites).

Entry points:

- :func:`load` a checkpoint (``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``, ``.safetensors``
  read without torch, a Hugging Face folder with ``config.json``, a folder written by :func:`save`, or an
  in-memory state dict) for a named architecture (``"gpt2"``, ``"gpt_neox"``, ``"bert"``, ``"vit"``,
  ``"resnet"``, or ``"transformer_lens"`` for a ``HookedTransformer`` state dict, see
  :mod:`jaxequiv.adapters.transformer_lens`) and config, returning a ready model in eval mode;
  :func:`load_network` returns its :class:`~jaxequiv.network.Network` (what the CLIs use).
- :func:`load_state_dict` a state dict into *any* nnx module whose attribute paths mirror the torch module
  names (the generic path for custom models), converting per layer type.
- :func:`mapping_table` the explicit table ``checkpoint key -> model path, transform`` used for a model.
- :func:`save` a model as a portable artefact (``model.safetensors`` + ``config.json``) that loads back
  without torch.

Strict accounting: every checkpoint tensor is used exactly once or matches an explicit ignore pattern
(``num_batches_tracked``, cached attention masks, ...); missing keys, unexpected keys and shape mismatches
raise one :class:`CheckpointError` that lists them all, and nothing is written into the model unless
everything fits. Floating-point tensors (fp16/bf16 included) load as float32 unless ``dtype`` says otherwise.

Per layer type (the leaf name decides where the type does not): ``kernel`` <- ``weight`` transposed
(Linear ``(out, in) -> (in, out)``; Conv ``(O, I, *K) -> (*K, I, O)``; ConvTranspose ``(I, O, *K)`` ->
spatially flipped ``(*K, I, O)`` for ``nnx.ConvTranspose`` with its default ``transpose_kernel=False``),
``scale`` <- ``weight`` (LayerNorm/GroupNorm/BatchNorm), ``mean``/``var`` <- ``running_mean``/``running_var``,
``embedding`` <- ``weight`` (Embedding), ``negative_slope`` <- ``weight`` (PReLU), ``nnx.MultiHeadAttention``
``query``/``key``/``value`` <- thirds of ``in_proj_weight``/``in_proj_bias`` and ``out`` <- ``out_proj``;
any other parameter is copied from the checkpoint key of the same dotted path (``cls_token``, ``alpha``, ...).

Cost: the model is built abstractly (shapes only, linear in depth) and each tensor read from a file that needs
no conversion becomes a JAX array sharing the checkpoint's memory where it is aligned as XLA needs (for
``.safetensors``, the file's read-only memory map, as ``transformers`` does), so loading reads no weight bytes
and the peak memory stays near one copy of the weights. Tensors that need a transpose, a split or a dtype
change are converted one at a time; an in-memory state dict (a live torch model's tensors) is copied. Do not
rewrite a ``.safetensors`` file in place while a model loaded from it is in use (``save`` and
``save_pretrained`` to another folder, or an atomic replace, are fine).

Custom modules: :func:`load_state_dict` fills any nnx module whose attribute paths spell the torch module names
(``self.features = nnx.List([...])`` for ``features.0.weight``; ``nnx.Sequential`` works too), e.g.::

    class Net(nnx.Module):                   # torch: conv = Conv2d(3, 8, 3), act = PReLU(), fc = Linear(8, 10)
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
            self.act = nnx.PReLU()           # ONE slope, like torch's nn.PReLU()
            self.fc = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x):               # NHWC
            return self.fc(self.act(self.conv(x)).mean((1, 2)))

    model = load_state_dict(Net(nnx.Rngs(0)), torch_net.state_dict())

A per-channel ``nn.PReLU(num_parameters=C)`` has C slopes and ``nnx.PReLU`` has one (loading it says so): use a
module with a ``[C]`` slope named ``negative_slope``, which loads from the torch ``weight``::

    class ChannelPReLU(nnx.Module):
        def __init__(self, channels: int):
            self.negative_slope = nnx.Param(jnp.full((channels,), 0.25))

        def __call__(self, x):               # channels last
            return jnp.where(x >= 0, x, self.negative_slope[...] * x)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxequiv.io.files import publishing, write_json
from jaxequiv.io.safetensors import SafetensorsError, read_safetensors, write_safetensors
from jaxequiv.models.resnet import BatchNorm as TorchBatchNorm

__all__ = [
    "CheckpointError",
    "TRANSFORMER_LENS",
    "Row",
    "ARCHS",
    "read_checkpoint",
    "mapping_table",
    "load_state_dict",
    "load",
    "load_network",
    "save",
    "tokenizer_files",
    "state_dict_to_numpy",
]

FORMAT = "jaxequiv-model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The checkpoint does not fit the model (or cannot be read); the message lists every problem."""


# ---------------------------------------------------------------------------------------------------------
# Reading checkpoints.


def _tensor_to_numpy(name: str, value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__
    if module.startswith("torch"):
        import torch

        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, expected a tensor")
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits as ml_dtypes.bfloat16
            import ml_dtypes

            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if module.startswith("jax") or hasattr(value, "__array__") and hasattr(value, "shape"):
        return np.asarray(value)
    raise TypeError(
        f"state dict entry {name!r} is a {type(value).__name__}, expected a tensor; "
        "pass model.state_dict() (a mapping of names to tensors)"
    )


_WRAPPERS = ("state_dict", "model_state_dict", "model")


def state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a mapping of torch tensors / arrays (unwrapping ``{"state_dict": ...}``).

    Raises:
      TypeError: not a mapping of names to tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"expected a state dict (mapping of parameter names to tensors), got a {type(state_dict).__name__}; "
            "save one with torch.save(model.state_dict(), path)"
        )
    for wrapper in _WRAPPERS:
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping) and not any(_is_tensor(v) for k, v in state_dict.items() if k != wrapper):
            state_dict = inner
            break
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state_dict.items() if not isinstance(k, str) or not _is_tensor(v)]
    if bad:
        raise TypeError(
            f"expected a state dict of tensors, but {len(bad)} entries are not tensors: {', '.join(bad[:8])}"
            f"{' ...' if len(bad) > 8 else ''}; save one with torch.save(model.state_dict(), path)"
        )
    return {k: _tensor_to_numpy(k, v) for k, v in state_dict.items()}


def _is_tensor(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); re-save it with torch.save(model.state_dict(), path)")
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a pickled PyTorch checkpoint and reading it needs torch (pip install 'jaxequiv[torch]'); "
            "or convert it once with `jaxequiv convert` / save it as .safetensors"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, disallowed globals, ...
        why = (str(e) or "no message").splitlines()[0][:200]
        if "weights_only" in why:  # torch's advice to turn its safe loader off: never pass that on
            why = "it is not a PyTorch file, or it holds Python objects besides tensors, which jaxequiv never unpickles"
        raise CheckpointError(
            f"could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {why}); "
            "the file may be truncated or not a state dict. Re-save it with torch.save(model.state_dict(), path)"
        ) from None
    state = state_dict_to_numpy(obj)
    for a in state.values():  # nobody else holds these tensors: let the model share their memory
        a.flags.writeable = False
    return state


def _read_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        try:
            return read_safetensors(path)[0]
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        return _read_torch_file(path)
    raise CheckpointError(f"don't know how to read {path}: expected .safetensors, .pt, .pth, .bin or a folder")


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_checkpoint(source) -> tuple[dict[str, np.ndarray], dict | None]:
    """``(state_dict, config)`` from a path, folder or in-memory state dict.

    A folder must hold ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin`` (or a sharded
    ``*.index.json``); ``config`` is its parsed JSON (``None`` for a single file or a dict).
    """
    if isinstance(source, Mapping):
        return state_dict_to_numpy(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or a state dict, got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not os.path.isdir(path):
        return _read_file(path), None
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"folder {path} has no config.json; pass a weights file and arch/config instead")
    with open(config_path) as f:
        config = json.load(f)
    for name in _WEIGHT_FILES:
        if os.path.exists(os.path.join(path, name)):
            return _read_file(os.path.join(path, name)), config
        index = os.path.join(path, name.replace(".bin", ".bin.index.json").replace(".safetensors",
                                                                                    ".safetensors.index.json"))
        if os.path.exists(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_file(os.path.join(path, shard)))
            return state, config
    raise CheckpointError(f"folder {path} holds no weights: expected one of {list(_WEIGHT_FILES)}")


# ---------------------------------------------------------------------------------------------------------
# The mapping table.


def _linear(w, shape):
    return _reshape(w.T, shape) if w.ndim == 2 else w


def _conv(w, shape):
    return np.transpose(w, (*range(2, w.ndim), 1, 0)) if w.ndim >= 3 else w


def _conv_transpose(w, shape):
    if w.ndim < 3:
        return w
    return np.transpose(np.flip(w, axis=tuple(range(2, w.ndim))), (*range(2, w.ndim), 0, 1))


def _reshape(w, shape):
    return w.reshape(shape) if w.size == int(np.prod(shape)) else w


TRANSFORMS: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    "copy": lambda w, shape: w,
    "linear": _linear,  # (out, in) -> (in, out), then reshaped (LinearGeneral)
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "reshape": _reshape,
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a mapping table: checkpoint ``key`` (``part`` ``i`` of ``n`` equal row blocks along axis 0,
    for fused tensors) -> the model variable at ``path`` via ``transform``."""

    key: str
    path: tuple
    transform: str = "copy"
    part: tuple[int, int] | None = None

    def convert(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        if self.part is not None:
            i, n = self.part
            if w.shape[0] % n:
                return w  # reported as a shape mismatch
            w = np.split(w, n, axis=0)[i]
        return TRANSFORMS[self.transform](w, shape)


_LEAF_RENAME = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean",
                "var": "running_var", "negative_slope": "weight"}


def _variables(model: nnx.Module) -> tuple[dict[tuple, nnx.Variable], dict[tuple, Any]]:
    variables, modules = {}, {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            if not isinstance(node, nnx.RngState):
                variables[tuple(path)] = node
        else:
            modules[tuple(path)] = node
    return variables, modules


def _torch_name(path: tuple, modules: Mapping[tuple, Any]) -> str:
    """Dotted torch name of a module path; ``nnx.Sequential``'s ``layers`` attribute disappears."""
    parts = []
    for i, p in enumerate(path):
        if p == "layers" and isinstance(modules.get(tuple(path[:i])), nnx.Sequential):
            continue
        parts.append(str(p))
    return ".".join(parts)


def _generic_row(path: tuple, var, modules: Mapping[tuple, Any]) -> Row:
    leaf, parent_path = path[-1], path[:-1]
    parent = modules.get(parent_path)
    grand = modules.get(parent_path[:-1]) if parent_path else None
    if isinstance(grand, nnx.MultiHeadAttention) and parent_path[-1] in ("query", "key", "value", "out"):
        base = _torch_name(parent_path[:-1], modules)
        if parent_path[-1] == "out":
            return Row(f"{base}.out_proj.{'weight' if leaf == 'kernel' else leaf}", path,
                       "linear" if leaf == "kernel" else "copy")
        part = ("query", "key", "value").index(parent_path[-1])
        kind = "weight" if leaf == "kernel" else "bias"
        return Row(f"{base}.in_proj_{kind}", path, "linear" if leaf == "kernel" else "reshape", (part, 3))
    name = _torch_name(parent_path, modules)
    key = f"{name}.{_LEAF_RENAME.get(leaf, leaf)}" if name else _LEAF_RENAME.get(leaf, leaf)
    if leaf == "kernel":
        if isinstance(parent, nnx.ConvTranspose):
            return Row(key, path, "conv_transpose")
        return Row(key, path, "conv" if len(var.shape) >= 3 and not isinstance(parent, nnx.LinearGeneral)
                   else "linear")
    if leaf == "negative_slope":
        return Row(key, path, "reshape")
    return Row(key, path, "copy")


# ---------------------------------------------------------------------------------------------------------
# Architectures.


@dataclasses.dataclass(frozen=True)
class Arch:
    """How one architecture's checkpoints map onto its jaxequiv model.

    Attributes:
      name: registry key (``"gpt2"``, ...); :mod:`jaxequiv.adapters.families` builds its model and config.
      prefix: checkpoint key prefix stripped when present (``"transformer."`` of ``GPT2LMHeadModel``).
      ignore: fnmatch patterns of checkpoint keys that are knowingly unused.
      stored_in_out: fnmatch patterns of table keys whose 2-D weights are stored ``(in, out)`` (HF ``Conv1D``).
      aliases: checkpoint key renames applied after the prefix (other library versions' names).
      input_dtype: ``"int"`` (token ids) or ``"float"`` (images).
    """

    name: str
    prefix: str = ""
    ignore: tuple[str, ...] = ()
    stored_in_out: tuple[str, ...] = ()
    input_dtype: str = "float"
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def family(self):
        from jaxequiv.adapters.families import FAMILIES

        return FAMILIES[self.name]


ARCHS: dict[str, Arch] = {
    "gpt2": Arch("gpt2", "transformer.",
                 ("*.attn.bias", "*.attn.masked_bias"),
                 ("*.attn.c_attn.weight", "*.attn.c_proj.weight", "*.mlp.c_fc.weight", "*.mlp.c_proj.weight"), "int"),
    "gpt_neox": Arch("gpt_neox", "gpt_neox.",
                     ("*.attention.bias", "*.attention.masked_bias", "*.rotary_emb.inv_freq"), (), "int",
                     (("lm_head.weight", "embed_out.weight"),)),  # transformers >= 5 calls Pythia's head lm_head
    "bert": Arch("bert", "bert.", ("embeddings.position_ids",), (), "int"),
    "vit": Arch("vit"),
    "resnet": Arch("resnet", ignore=("*num_batches_tracked",)),
}

_GENERIC_IGNORE = ("*num_batches_tracked",)


def _arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHS)} (or pass an nnx module instance)")
    return ARCHS[name]


def mapping_table(model: nnx.Module, arch: str | None = None) -> list[Row]:
    """The explicit ``checkpoint key -> model path`` table for ``model`` (generic rules, then the arch's).

    ``arch=None`` is the generic path: checkpoint keys are the model's attribute paths in torch spelling.
    """
    return _table(*_variables(model), arch)


def _table(variables: Mapping[tuple, nnx.Variable], modules: Mapping[tuple, Any], arch: str | None) -> list[Row]:
    rows = [_generic_row(path, var, modules) for path, var in variables.items()]
    if arch is None:
        return rows
    spec = _arch(arch)
    return [dataclasses.replace(r, transform="copy") if r.transform == "linear"
            and any(fnmatch.fnmatchcase(r.key, p) for p in spec.stored_in_out) else r for r in rows]


def _native_table(variables: Mapping[tuple, nnx.Variable]) -> list[Row]:
    """Rows of jaxequiv's own artefact layout: key = dotted nnx path, no transform."""
    return [Row(".".join(map(str, path)), path) for path in variables]


def _apply_table(variables: Mapping[tuple, nnx.Variable], state: Mapping[str, np.ndarray], rows: list[Row],
                 ignore: Iterable[str], dtype, hint: str = "") -> None:
    """Convert and check every row, then (only if everything fits) set the variables."""
    missing, mismatched, values, hints = [], [], {}, [hint] if hint else []
    for row in rows:
        target = variables[row.path]
        if row.key not in state:
            missing.append(f"{row.key} (for {'.'.join(map(str, row.path))} {tuple(target.shape)})")
            continue
        w = state[row.key]
        got = row.convert(w, tuple(target.shape))
        if tuple(got.shape) != tuple(target.shape):
            mismatched.append(f"{row.key}: checkpoint {tuple(w.shape)} -> {tuple(got.shape)} after "
                              f"'{row.transform}', but {'.'.join(map(str, row.path))} is {tuple(target.shape)}")
            if row.path[-1] == "negative_slope":
                hints.append("nnx.PReLU has ONE slope; a per-channel torch nn.PReLU(num_parameters=C) needs a "
                             "module with a [C] slope (see the per-channel PReLU example in jaxequiv.adapters.torch)")
        values[row.path] = got
    used = {row.key for row in rows}
    ignore = tuple(ignore)
    unexpected = [k for k in state if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in ignore)]
    if missing or unexpected or mismatched:
        lines = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                lines.append(f"  {len(items)} {title}:\n    {shown}")
        raise CheckpointError(
            "checkpoint does not fit the model; nothing was loaded.\n" + "\n".join(lines)
            + "".join(f"\n  {h}" for h in dict.fromkeys(hints))
            + "\n  Fix: pick the right architecture and config (arch=/config=, --arch/--config on the command "
            "line), or ignore=[patterns] (--ignore) for keys you mean to drop."
        )
    for path, w in values.items():
        variables[path].set_value(_to_device(w, dtype))


def _to_device(w: np.ndarray, dtype) -> jax.Array:
    """``w`` as a JAX array of ``dtype`` (floating point) without a needless copy.

    A read-only array (the checkpoint's memory map) or a fresh conversion becomes the array's memory where it is
    suitably aligned (``jax.device_put`` shares it); writable memory that someone else holds (a live torch
    model's tensors) is copied, so that later in-place updates there cannot change the JAX array.
    """
    w = np.asarray(w)
    target = np.dtype(dtype) if np.dtype(w.dtype).kind in "fV" else w.dtype  # ml_dtypes (bf16, fp8): kind 'V'
    if w.dtype == target and w.flags.writeable:
        return jnp.array(w, copy=True)
    return jax.device_put(w.astype(target, copy=False))


def load_state_dict(model: nnx.Module, state_dict, *, arch: str | None = None, ignore: Iterable[str] = (),
                    dtype=jnp.float32, torch_momentum: float | None = None) -> nnx.Module:
    """Load a torch state dict (or path) into ``model`` in place and return it (in eval mode).

    Args:
      model: nnx module whose attribute paths mirror the torch module names (``features.0`` <-> an
        ``nnx.List``/``nnx.Sequential`` element ``features[0]``).
      state_dict: mapping of names to tensors/arrays, or anything :func:`read_checkpoint` reads.
      arch: apply that architecture's key prefix, ``(in, out)`` weights and ignore list (default: generic).
      ignore: extra fnmatch patterns of checkpoint keys to leave unused (``num_batches_tracked`` always is).
      dtype: dtype of floating-point parameters (fp16/bf16 checkpoints load as float32 by default).
      torch_momentum: the torch ``BatchNorm`` momentum the checkpoint was trained with; sets every
        ``nnx.BatchNorm.momentum`` to flax's convention ``1 - torch_momentum``.

    Raises:
      CheckpointError: missing/unexpected keys or shape mismatches (all listed; the model is left untouched).
    """
    state = state_dict if isinstance(state_dict, Mapping) else read_checkpoint(state_dict)[0]
    state = state_dict_to_numpy(state)
    spec = _arch(arch) if arch is not None else None
    if spec is not None:
        state = _strip(spec.name, state)
    patterns = (*_GENERIC_IGNORE, *(spec.ignore if spec else ()), *ignore)
    variables, modules = _variables(model)
    _apply_table(variables, state, _table(variables, modules, arch), patterns, dtype,
                 hint=f"(loading as arch={arch!r})" if arch else "")
    if torch_momentum is not None:
        for node in modules.values():
            if isinstance(node, nnx.BatchNorm):  # flax convention
                node.momentum = 1.0 - torch_momentum
            elif isinstance(node, TorchBatchNorm):  # jaxequiv's ResNet BatchNorm keeps torch's convention
                node.momentum = torch_momentum
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------
# Whole-model loading: config handling per architecture.


def _config_for(arch: str, config, hf_config: dict | None, state: Mapping[str, np.ndarray]):
    family = _arch(arch).family
    if isinstance(config, Mapping) and "model_type" in config:  # a Hugging Face config dict
        hf_config, config = dict(config), None
    if config is not None:
        return family.from_dict(dict(config)) if isinstance(config, Mapping) else family.check(config)
    if hf_config is not None:
        return family.from_hf(hf_config)
    return family.infer(state)


_HF_ARCH = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "bert": "bert"}


def _abstract_model(arch: str, config) -> nnx.Module:
    """The architecture's model with shape-only (``jax.ShapeDtypeStruct``) variables: no weights computed."""
    return _arch(arch).family.abstract(config)


def load(source, arch: str | nnx.Module | None = None, config=None, *, ignore: Iterable[str] = (),
         dtype=jnp.float32, torch_momentum: float | None = None) -> nnx.Module:
    """A ready jaxequiv model (eval mode) from a checkpoint.

    Args:
      source: ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` path, Hugging Face folder, folder written by
        :func:`save`, or an in-memory state dict.
      arch: ``"gpt2"``, ``"gpt_neox"``, ``"bert"``, ``"vit"``, ``"resnet"``, ``"transformer_lens"``, or an nnx
        module instance to load into (generic path). Taken from ``config.json`` (``model_type``) when omitted.
      config: the model config (config object, dict of its fields, or a Hugging Face config dict with
        ``model_type``); read from ``config.json`` for HF folders, inferred from tensor shapes for ResNet and
        ViT (ViT heads default to ``embed_dim // 64``); for ``"transformer_lens"`` the ``HookedTransformerConfig``
        (or its ``to_dict()``), which the state dict does not record.
      ignore, dtype, torch_momentum: see :func:`load_state_dict`.
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        native = _read_native(os.fspath(source))
        if native is not None:
            return _load_native(native, dtype)
    state, hf_config = read_checkpoint(source)
    if isinstance(arch, nnx.Module):
        return load_state_dict(arch, state, ignore=ignore, dtype=dtype, torch_momentum=torch_momentum)
    from jaxequiv.adapters import transformer_lens as tl

    if arch is None:
        model_type = (hf_config or {}).get("model_type")
        if model_type not in _HF_ARCH:
            raise ValueError(
                f"cannot tell the architecture of this checkpoint (model_type={model_type!r}); name it with arch= "
                f"(--arch on the command line), one of {sorted(ARCHS) + [TRANSFORMER_LENS]}, or pass an nnx module"
                + (f"; its keys look like a TransformerLens state dict: arch={TRANSFORMER_LENS!r}"
                   if tl.looks_like_transformer_lens(state) else "")
            )
        arch = _HF_ARCH[model_type]
    if arch == TRANSFORMER_LENS:
        return _load_transformer_lens(state, config, ignore, dtype)
    _arch(arch)
    if tl.looks_like_transformer_lens(state):
        raise CheckpointError(f"this is a TransformerLens HookedTransformer state dict (embed.W_E, blocks.0.attn.W_Q, "
                              f"...), not a {arch!r} checkpoint: load it with arch={TRANSFORMER_LENS!r} and its "
                              "config (model.cfg.to_dict())")
    if hf_config is not None and _HF_ARCH.get(hf_config.get("model_type")) != arch:
        raise CheckpointError(
            f"the checkpoint's config.json says model_type={hf_config.get('model_type')!r}, "
            f"which is not a {arch!r} model; pass the matching arch= (--arch on the command line)"
        )
    stripped = _strip(arch, state)
    family = _arch(arch).family
    cfg = family.adjust(_config_for(arch, config, hf_config, stripped), stripped)
    model = _abstract_model(arch, cfg)
    load_state_dict(model, state, arch=arch, ignore=(*ignore, *family.ignore(cfg)), dtype=dtype,
                    torch_momentum=torch_momentum)
    return model


TRANSFORMER_LENS = "transformer_lens"


def _load_transformer_lens(state: Mapping[str, np.ndarray], config, ignore: Iterable[str], dtype) -> nnx.Module:
    from jaxequiv.adapters import transformer_lens as tl

    if config is None:
        raise ValueError("a TransformerLens state dict records no configuration: pass its HookedTransformerConfig "
                         "(config=model.cfg.to_dict() in Python, --config cfg.json on the command line)")
    try:
        cfg, hf_state = tl.convert_transformer_lens(state, config)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    arch = "gpt2" if cfg.naming == "gpt2" else "gpt_neox"
    model = _abstract_model(arch, cfg)
    return load_state_dict(model, hf_state, arch=arch, ignore=(*ignore, *tl.IGNORED_KEYS), dtype=dtype)


def _strip(arch: str, state):
    """Checkpoint keys in the arch's canonical spelling: prefix removed, aliases renamed."""
    spec = ARCHS[arch]
    if spec.prefix and any(k.startswith(spec.prefix) for k in state):
        state = {k[len(spec.prefix):] if k.startswith(spec.prefix) else k: v for k, v in state.items()}
    aliases = dict(spec.aliases)
    if any(k in aliases for k in state):
        state = {aliases.get(k, k): v for k, v in state.items()}
    return state


def load_network(source, arch: str | None = None, config=None, **kwargs):
    """:func:`load`, then the model's pure :class:`~jaxequiv.network.Network` view."""
    from jaxequiv.network import Network

    model = load(source, arch, config, **kwargs)
    arch = _arch_of(model)
    return Network.from_module(model, ARCHS[arch].family.input_shape(model), ARCHS[arch].input_dtype)


def _arch_of(model: nnx.Module) -> str:
    from jaxequiv.adapters.families import arch_of

    return arch_of(model)


# ---------------------------------------------------------------------------------------------------------
# Portable artefacts.


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model")


def tokenizer_files(folder: str | os.PathLike) -> list[str]:
    """Paths of the tokenizer files (``tokenizer.json``, vocab, merges, special tokens, ...) in a Hugging Face
    folder, for :func:`save` to carry into the artefact; ``[]`` for a file or a folder without them."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))]


def save(model: nnx.Module, out_dir: str | os.PathLike, *, metadata: Mapping[str, str] | None = None,
         overwrite: bool = False, files: Iterable[str | os.PathLike] = ()) -> str:
    """Write a jaxequiv model (one of :data:`ARCHS`) to folder ``out_dir`` as ``model.safetensors`` (tensors named
    by their dotted nnx paths) + ``config.json`` and a copy of each of ``files`` (e.g. :func:`tokenizer_files` of
    the source folder), published together in one folder swap (``overwrite``: replace an artefact already
    there). Returns ``out_dir``."""
    arch = _arch_of(model)
    out_dir = os.fspath(out_dir)
    files = [os.fspath(f) for f in files]
    clash = [f for f in files if os.path.basename(f) in ("model.safetensors", "config.json")]
    if clash:
        raise ValueError(f"cannot carry {clash} into the artefact: model.safetensors and config.json are its own")
    variables = _variables(model)[0]
    tensors = {row.key: np.asarray(variables[row.path][...]) for row in _native_table(variables)}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
              "config": ARCHS[arch].family.config_dict(model)}
    with publishing(out_dir, overwrite=overwrite, marker="config.json") as tmp:
        write_safetensors(tmp / "model.safetensors", tensors, {"format": FORMAT, **(metadata or {})})
        write_json(tmp / "config.json", config, indent=2)
        for f in files:
            shutil.copyfile(f, tmp / os.path.basename(f))
    return out_dir


def _read_native(folder: str) -> dict | None:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        return None
    if config.get("format_version") != FORMAT_VERSION or config.get("arch") not in ARCHS:
        raise CheckpointError(f"{path}: unsupported jaxequiv artefact (version {config.get('format_version')!r}, "
                              f"arch {config.get('arch')!r}); expected version {FORMAT_VERSION}")
    config["folder"] = folder
    return config


def _load_native(native: dict, dtype) -> nnx.Module:
    arch = native["arch"]
    cfg = _arch(arch).family.from_dict(native["config"])
    try:
        state, _ = read_safetensors(os.path.join(native["folder"], "model.safetensors"))
    except (SafetensorsError, FileNotFoundError) as e:
        raise CheckpointError(str(e)) from None
    model = _abstract_model(arch, cfg)
    variables = _variables(model)[0]
    _apply_table(variables, state, _native_table(variables), (), dtype, hint=f"(jaxequiv artefact, arch={arch!r})")
    model.eval()
    return model
