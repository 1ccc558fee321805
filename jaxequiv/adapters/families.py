"""Per-architecture configs: build the jaxequiv model, read HF ``config.json``, infer sizes from tensor shapes.

Each family answers the same questions for :mod:`jaxequiv.adapters.torch`: ``build(cfg, rngs)``,
``abstract(cfg)`` (the model with shape-only variables, to be filled from a checkpoint), ``from_dict`` /
``config_dict`` (the portable artefact's JSON), ``check`` (a config object), ``from_hf``
(a Hugging Face ``config.json``), ``infer`` (sizes from a torch state dict), ``adjust`` (config details
only the checkpoint knows), ``ignore`` (checkpoint keys knowingly unused) and ``input_shape``.
A config field the converter does not understand is a ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jaxequiv.io.config import DictConfig

__all__ = ["FAMILIES", "ResNetConfig", "arch_of", "ShapeOnlyKeys"]


def _require(hf: Mapping, *fields: str) -> None:
    missing = [f for f in fields if f not in hf]
    if missing:
        raise ValueError(f"config.json lacks {missing}; is this a {hf.get('model_type', 'known')} config?")


def _expect(hf: Mapping, field: str, supported, default) -> None:
    value = hf.get(field, default)
    if value != supported:
        raise ValueError(f"config field {field}={value!r} is not supported by the converter (only {supported!r})")


_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
           "relu": "relu"}


def _act(hf: Mapping, field: str, default: str) -> str:
    name = hf.get(field, default)
    if name not in _HF_ACT:
        raise ValueError(f"config field {field}={name!r} is not supported by the converter; "
                         f"supported: {sorted(_HF_ACT)}")
    return _HF_ACT[name]


def _no_config(arch: str):
    def infer(state):
        raise ValueError(f"arch={arch!r} needs a config: pass config=... (--config on the command line) or a "
                         "Hugging Face folder with config.json")

    return infer


class ShapeOnlyKeys:
    """Stands in for ``nnx.Rngs`` while building a model whose every weight will be loaded: each stream
    (``rngs.params()``, ...) returns one fixed key. Under ``nnx.eval_shape`` a real ``nnx.Rngs`` updates a traced
    counter at every draw, and flax then reads the tracer's ``.sharding``, for which JAX formats an error message
    by walking every operation traced so far: building L blocks cost O(L^2). With a fixed key it is O(L)."""

    def __init__(self):
        self._key = jax.random.key(0)

    def __getattr__(self, stream: str):
        if stream.startswith("__"):
            raise AttributeError(stream)
        return lambda: self._key


class _Family:
    """Shared defaults; subclasses set ``config_cls`` and override what differs."""

    config_cls: type

    def abstract(self, cfg) -> nnx.Module:
        """The model with shape-only (``jax.ShapeDtypeStruct``) variables: nothing computed, one trace."""
        return nnx.eval_shape(lambda: self.build(cfg, ShapeOnlyKeys()))

    def from_dict(self, d: dict[str, Any]):
        return self.check(self.config_cls.from_dict(dict(d)))

    def check(self, cfg):
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"expected a {self.config_cls.__name__} (or a dict of its fields), got {type(cfg).__name__}")
        return cfg

    def config_dict(self, model) -> dict[str, Any]:
        return model.cfg.to_dict()

    def adjust(self, cfg, state):
        return cfg

    def ignore(self, cfg) -> tuple[str, ...]:
        return ()


class _Decoder(_Family):
    def __init__(self, naming: str, head: str):
        from jaxequiv.models.transformer import TransformerConfig

        self.config_cls, self.naming, self.head = TransformerConfig, naming, head
        self.infer = _no_config("gpt2" if naming == "gpt2" else "gpt_neox")

    def check(self, cfg):
        cfg = super().check(cfg)
        if cfg.naming != self.naming:
            raise ValueError(f"this architecture needs TransformerConfig(naming={self.naming!r}), got {cfg.naming!r}")
        return cfg

    def build(self, cfg, rngs):
        from jaxequiv.models.transformer import Transformer

        return Transformer(cfg, rngs)

    def abstract(self, cfg):
        """Identical blocks are traced once and copied: tracing every block would cost more than reading the
        weights (a shell with one block is traced for the embeddings and the head, then given the copies)."""
        from jaxequiv.models.transformer import Block, Transformer

        keys = ShapeOnlyKeys()
        graphdef, block = nnx.split(nnx.eval_shape(lambda: Block(cfg, keys)))
        model = nnx.eval_shape(lambda: Transformer(dataclasses.replace(cfg, n_layer=1), keys))
        model.cfg = cfg
        blocks = [nnx.merge(graphdef, block, copy=True) for _ in range(cfg.n_layer)]
        setattr(model, cfg.names.blocks, nnx.List(blocks))
        return model

    def ignore(self, cfg):
        return (f"{self.head}.weight",) if cfg.tie_embeddings else ()  # HF repeats the tied embedding

    def input_shape(self, model):
        return (None,)

    def from_hf(self, hf: Mapping):
        return self.config_cls(**(self._gpt2(hf) if self.naming == "gpt2" else self._neox(hf)), naming=self.naming)

    @staticmethod
    def _gpt2(hf):
        _require(hf, "vocab_size", "n_layer", "n_head", "n_embd", "n_positions")
        _expect(hf, "scale_attn_weights", True, True)
        _expect(hf, "scale_attn_by_inverse_layer_idx", False, False)
        _expect(hf, "add_cross_attention", False, False)
        return dict(vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=hf["n_embd"],
                    n_ctx=hf["n_positions"], d_mlp=hf.get("n_inner") or 4 * hf["n_embd"],
                    activation=_act(hf, "activation_function", "gelu_new"),
                    ln_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True))

    @staticmethod
    def _neox(hf):
        _require(hf, "vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
        _expect(hf, "attention_bias", True, True)
        _expect(hf, "rope_scaling", None, None)
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"config field rope_parameters.rope_type={rope['rope_type']!r} is not supported "
                             "by the converter (only 'default')")
        return dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                    d_model=hf["hidden_size"], d_mlp=hf["intermediate_size"],
                    n_ctx=hf.get("max_position_embeddings", 2048), positional="rotary",
                    rotary_pct=rope.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)),
                    rotary_base=rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0)),
                    parallel_residual=hf.get("use_parallel_residual", True), ln_eps=hf.get("layer_norm_eps", 1e-5),
                    activation=_act(hf, "hidden_act", "gelu"), tie_embeddings=hf.get("tie_word_embeddings", False))


class _Bert(_Family):
    def __init__(self):
        from jaxequiv.models.bert import BertConfig

        self.config_cls = BertConfig
        self.infer = _no_config("bert")

    def build(self, cfg, rngs):
        from jaxequiv.models.bert import BertModel

        return BertModel(cfg, rngs)

    def from_hf(self, hf):
        _require(hf, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        _expect(hf, "position_embedding_type", "absolute", "absolute")
        _expect(hf, "is_decoder", False, False)
        return self.config_cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=_act(hf, "hidden_act", "gelu"))

    def adjust(self, cfg, state):
        """A checkpoint without ``pooler.*`` tensors (e.g. from ``BertForMaskedLM``) gets no pooler."""
        return dataclasses.replace(cfg, pooler=any(k.startswith("pooler.") for k in state))

    def input_shape(self, model):
        return (None,)


class _ViT(_Family):
    def __init__(self):
        from jaxequiv.models.vit import ViTConfig

        self.config_cls = ViTConfig

    def build(self, cfg, rngs):
        from jaxequiv.models.vit import VisionTransformer

        return VisionTransformer(cfg, rngs)

    def infer(self, state):
        """Sizes from timm tensor shapes; heads default to ``embed_dim // 64`` (pass a config otherwise)."""
        _require_keys(state, "patch_embed.proj.weight", "pos_embed", "head.weight", "blocks.0.mlp.fc1.weight")
        d, c, p, _ = state["patch_embed.proj.weight"].shape
        n = state["pos_embed"].shape[1] - 1
        grid = int(round(n**0.5))
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        return self.config_cls(img_size=grid * p, patch_size=p, in_chans=c, num_classes=state["head.weight"].shape[0],
                               embed_dim=d, depth=depth, num_heads=max(d // 64, 1),
                               mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0])

    def input_shape(self, model):
        cfg = model.cfg
        return (cfg.img_size, cfg.img_size, cfg.in_chans)


@dataclasses.dataclass(frozen=True)
class ResNetConfig(DictConfig):
    """Arguments of :class:`jaxequiv.models.resnet.ResNet` (torchvision resnet18: basic, (2,2,2,2), width 64)."""

    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    width: int = 64
    num_classes: int = 1000
    in_channels: int = 3
    stem: str = "imagenet"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))


def _require_keys(state: Mapping, *keys: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"cannot infer the config: the checkpoint lacks {missing}; is it for this architecture? "
                         "Pass config=... (--config on the command line) explicitly otherwise")


class _ResNet(_Family):
    config_cls = ResNetConfig

    def build(self, cfg, rngs):
        from jaxequiv.models.resnet import ResNet

        return ResNet(cfg.block, cfg.layers, width=cfg.width, num_classes=cfg.num_classes,
                      in_channels=cfg.in_channels, stem=cfg.stem, rngs=rngs)

    def from_hf(self, hf):
        raise ValueError("ResNet checkpoints are torchvision state dicts, not Hugging Face folders")

    def infer(self, state):
        """torchvision layout: block type from ``conv3``, stage depths from ``layer{i}.{j}`` keys."""
        _require_keys(state, "conv1.weight", "fc.weight")
        width, in_ch, k, _ = state["conv1.weight"].shape
        depths = []
        while any(k_.startswith(f"layer{len(depths) + 1}.") for k_ in state):
            i = len(depths) + 1
            depths.append(1 + max(int(m.group(1)) for k_ in state if (m := re.match(rf"layer{i}\.(\d+)\.", k_))))
        return ResNetConfig(block="bottleneck" if "layer1.0.conv3.weight" in state else "basic", layers=tuple(depths),
                            width=int(width), num_classes=int(state["fc.weight"].shape[0]), in_channels=int(in_ch),
                            stem="imagenet" if k == 7 else "small")

    def config_dict(self, model):
        stages = [getattr(model, f"layer{i}") for i in range(1, model.num_stages + 1)]
        return ResNetConfig(block="bottleneck" if hasattr(stages[0][0], "conv3") else "basic",
                            layers=tuple(len(s) for s in stages), width=model.conv1.out_features,
                            num_classes=model.fc.out_features, in_channels=model.in_channels,
                            stem=model.stem).to_dict()

    def input_shape(self, model):
        return (None, None, model.in_channels)


FAMILIES = {"gpt2": _Decoder("gpt2", "lm_head"), "gpt_neox": _Decoder("neox", "embed_out"), "bert": _Bert(),
            "vit": _ViT(), "resnet": _ResNet()}


def arch_of(model: nnx.Module) -> str:
    """Registry name of a jaxequiv model instance."""
    from jaxequiv.models.bert import BertModel
    from jaxequiv.models.resnet import ResNet
    from jaxequiv.models.transformer import Transformer
    from jaxequiv.models.vit import VisionTransformer

    if isinstance(model, Transformer):
        return "gpt2" if model.cfg.naming == "gpt2" else "gpt_neox"
    for cls, name in ((BertModel, "bert"), (VisionTransformer, "vit"), (ResNet, "resnet")):
        if isinstance(model, cls):
            return name
    raise TypeError(f"{type(model).__name__} is not a jaxequiv architecture ({sorted(FAMILIES)}); "
                    "use load_state_dict for custom modules")

