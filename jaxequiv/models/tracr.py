"""tracr bridge: compile RASP programs and run them as :class:`~jaxequiv.models.transformer.Transformer` s with sites.

tracr (package ``tracr-pypi``, optional extra ``tracr``) compiles a RASP program into the weights of a haiku
transformer without layer norm: every layer is an attention sub-layer (``n_head`` heads of size ``key_size``) then
a ReLU MLP, attention is non-causal by default, positions are a learned table whose row 0 (the BOS position) is
zero, and the output is a fixed projection of the residual stream onto the program's output space (argmax'ed for
categorical programs). :func:`from_tracr` copies those weights into jaxequiv's transformer (``norm="none"``,
``activation="relu"``, biases, untied ``lm_head`` = tracr's unembedding), so at run time no haiku is needed and all
the usual sites (``embed``, ``h.{i}.attn.z``, ``h.{i}.resid_mid``, ``h.{i}``, ...) are available. tracr's labels of
the residual basis directions (``"tokens:3"``, ``"indices:0"``, ``"sort:1"``, ``"one"``) are kept in
:attr:`TracrModel.residual_labels`, one per residual channel.

tracr itself is imported only inside :func:`compile_rasp` / :func:`from_tracr`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxequiv.models.transformer import Transformer, TransformerConfig

__all__ = ["TracrModel", "compile_rasp", "from_tracr", "clear_cache"]

_CACHE: dict[tuple, Any] = {}


@dataclasses.dataclass(frozen=True)
class TracrModel:
    """A compiled RASP program as a jaxequiv transformer.

    Attributes:
      model: the :class:`Transformer` holding tracr's weights; ``model(ids)`` gives ``[B, T, n_out]`` outputs
        (tracr's unembedded residual; for categorical programs the decoded value is their argmax).
      residual_labels: name of each residual channel (``d_model`` of them), as tracr labels them.
      input_values: the input token of each id (``input_values[i]`` is the token with id ``i``; BOS and PAD are
        among them).
      bos: the BOS token, prepended by :meth:`encode`.
      output_values: the value of each output channel for categorical programs, ``None`` for numerical ones.
      max_seq_len: longest input without BOS.
      name: the program's name.
    """

    model: Transformer
    residual_labels: tuple[str, ...]
    input_values: tuple[Any, ...]
    bos: Any
    output_values: tuple[Any, ...] | None
    max_seq_len: int
    name: str

    @property
    def config(self) -> TransformerConfig:
        return self.model.cfg

    @property
    def categorical(self) -> bool:
        return self.output_values is not None

    def encode(self, sequences: Sequence[Sequence[Hashable]]) -> np.ndarray:
        """Ids of BOS + each sequence: ``[N, T + 1]`` int32. All sequences must have the same length ``T``.

        Raises ``ValueError`` naming any token outside the program's vocabulary or a too-long sequence.
        """
        seqs = [list(s) for s in sequences]
        lengths = {len(s) for s in seqs}
        if len(lengths) > 1:
            raise ValueError(f"{self.name}: sequences of different lengths {sorted(lengths)}; pad or group them")
        if lengths and max(lengths) > self.max_seq_len:
            raise ValueError(f"{self.name}: sequences of length {max(lengths)} exceed max_seq_len={self.max_seq_len}")
        index = {v: i for i, v in enumerate(self.input_values)}
        unknown = sorted({t for s in seqs for t in s if t not in index}, key=repr)
        if unknown:
            vocab = [v for v in self.input_values if v != self.bos]
            raise ValueError(
                f"{self.name}: tokens {unknown[:10]} are not in the compiled vocabulary {vocab}; recompile the "
                "program with a vocab that covers the task's tokens"
            )
        return np.array([[index[self.bos], *(index[t] for t in s)] for s in seqs], np.int32).reshape(
            len(seqs), -1
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """``[B, T+1]`` ids (BOS first) -> ``[B, T+1, n_out]`` outputs (one jitted call)."""
        return _forward(self.model, jnp.asarray(ids))

    def decode(self, outputs: jax.Array) -> list[list[Any]]:
        """Values at every position after BOS: argmax -> value (categorical) or the scalar (numerical)."""
        out = np.asarray(outputs)[:, 1:]
        if not self.categorical:
            return out[..., 0].tolist()
        return [[self.output_values[j] for j in row] for row in out.argmax(-1)]

    def apply(self, sequences: Sequence[Sequence[Hashable]]) -> list[list[Any]]:
        """Decoded program outputs for raw token sequences (no BOS), like ``program(sequence)``."""
        return self.decode(self(jnp.asarray(self.encode(sequences))))


@nnx.jit
def _forward(model: Transformer, ids: jax.Array) -> jax.Array:
    return model(ids)


def clear_cache() -> None:
    """Forget the programs compiled so far in this process."""
    _CACHE.clear()


def compile_rasp(
    program,
    vocab: Iterable[Hashable],
    max_seq_len: int,
    *,
    causal: bool = False,
    bos: str = "BOS",
    mlp_exactness: int = 100,
    name: str | None = None,
) -> TracrModel:
    """Compile a RASP ``program`` with tracr and load it into a :class:`TracrModel` (cached per process).

    Args:
      program: a ``tracr.rasp.rasp.SOp`` reading ``rasp.tokens`` (and optionally ``rasp.indices``).
      vocab: the input tokens the program must accept.
      max_seq_len: longest input sequence (without BOS).
      causal, mlp_exactness: passed to ``tracr.compiler.compiling.compile_rasp_to_model``.
      bos: name of the BOS token; must not be in ``vocab``.
      name: display name (default: the program's RASP name).

    Raises:
      TypeError: ``program`` is not a RASP SOp.
      ValueError: tracr cannot compile the program (unsupported RASP features), or bad vocab / length.
    """
    from tracr.compiler import compiling
    from tracr.rasp import rasp

    if not isinstance(program, rasp.SOp):
        raise TypeError(f"compile_rasp expects a tracr RASP SOp (e.g. rasp.Map(...)), got {type(program).__name__}")
    vocab = frozenset(vocab)
    if not vocab:
        raise ValueError("compile_rasp: vocab is empty; pass the set of input tokens the program must accept")
    if not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise ValueError(f"compile_rasp: max_seq_len must be a positive integer, got {max_seq_len!r}")
    key = (program.unique_id, vocab, int(max_seq_len), causal, bos, mlp_exactness)
    if key not in _CACHE:
        try:
            with _jitted_haiku_init():
                _CACHE[key] = compiling.compile_rasp_to_model(
                    program, vocab=set(vocab), max_seq_len=int(max_seq_len), causal=causal, compiler_bos=bos,
                    mlp_exactness=mlp_exactness,
                )
        except NotImplementedError as e:
            raise ValueError(
                f"tracr cannot compile RASP program {program.name!r}: {e}. Rewrite the unsupported expressions "
                "(tracr.compiler.validating.validate(program, inputs) lists them)"
            ) from e
    return from_tracr(_CACHE[key], name=name or program.name)


@contextlib.contextmanager
def _jitted_haiku_init():
    """Run tracr's assembly with its haiku ``init`` under ``jax.jit``: the same parameters, but one XLA compile
    instead of one eager compile per operation (4x faster compiles). Does nothing if tracr's assembler no longer
    uses ``hk.transform`` as expected."""
    import haiku as hk
    from tracr.compiler import assemble

    if getattr(assemble, "hk", None) is not hk:
        yield
        return

    def transform(f, **kwargs):
        t = hk.transform(f, **kwargs)
        return hk.Transformed(init=jax.jit(t.init), apply=t.apply)

    proxy = types.ModuleType("haiku")
    proxy.__dict__.update(hk.__dict__)
    proxy.transform = transform
    assemble.hk = proxy
    try:
        yield
    finally:
        assemble.hk = hk


def from_tracr(assembled, name: str = "tracr") -> TracrModel:
    """Copy a tracr ``AssembledTransformerModel``'s weights into a jaxequiv :class:`Transformer`."""
    cfg_t = assembled.model_config
    if cfg_t.layer_norm:
        raise ValueError("from_tracr: tracr model has layer norm, which tracr's compiler never emits")
    p = {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in assembled.params.items()}
    labels = tuple(assembled.residual_labels)
    tok = p["token_embed"]["embeddings"]
    pos = p["pos_embed"]["embeddings"]
    d_model = tok.shape[1]
    in_enc, out_enc = assembled.input_encoder, assembled.output_encoder
    input_values = tuple(sorted(in_enc.encoding_map, key=in_enc.encoding_map.get))

    output_values = None
    if hasattr(out_enc, "encoding_map"):
        output_values = tuple(sorted(out_enc.encoding_map, key=out_enc.encoding_map.get))
    unembed = _unembedding(assembled, d_model)

    cfg = TransformerConfig(
        vocab_size=tok.shape[0], n_layer=cfg_t.num_layers, n_head=cfg_t.num_heads, d_model=d_model,
        n_ctx=pos.shape[0], d_head=cfg_t.key_size, d_mlp=cfg_t.mlp_hidden_size, positional="learned",
        norm="none", activation="relu", bias=True, tie_embeddings=False, unembed_bias=False,
        d_vocab_out=unembed.shape[1], causal=cfg_t.causal,
    )
    # Abstract init (no random weights, no per-shape eager compiles), then every parameter is set from tracr's.
    model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    model.wte.embedding.set_value(jnp.asarray(tok))
    model.wpe.embedding.set_value(jnp.asarray(pos))
    model.lm_head.kernel.set_value(jnp.asarray(unembed))
    for i, block in enumerate(model.h):
        pre = f"transformer/layer_{i}"
        q, k, v, o = (p[f"{pre}/attn/{n}"] for n in ("query", "key", "value", "linear"))
        block.attn.c_attn.kernel.set_value(jnp.asarray(np.concatenate([q["w"], k["w"], v["w"]], axis=1)))
        block.attn.c_attn.bias.set_value(jnp.asarray(np.concatenate([q["b"], k["b"], v["b"]])))
        block.attn.c_proj.kernel.set_value(jnp.asarray(o["w"]))
        block.attn.c_proj.bias.set_value(jnp.asarray(o["b"]))
        for ours, theirs in (("c_fc", "linear_1"), ("c_proj", "linear_2")):
            getattr(block.mlp, ours).kernel.set_value(jnp.asarray(p[f"{pre}/mlp/{theirs}"]["w"]))
            getattr(block.mlp, ours).bias.set_value(jnp.asarray(p[f"{pre}/mlp/{theirs}"]["b"]))
    leftover = [path for path, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if leftover:
        raise AssertionError(f"from_tracr left parameters unset: {leftover}")
    max_seq_len = pos.shape[0] - 1 if in_enc.bos_token is not None else pos.shape[0]
    return TracrModel(model, labels, input_values, in_enc.bos_token, output_values, max_seq_len, name)


def _unembedding(assembled, d_model: int) -> np.ndarray:
    """tracr's residual -> output projection ``[D, n_out]``, read off by unembedding the identity matrix."""
    import haiku as hk

    def project(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    out = jax.jit(hk.without_apply_rng(hk.transform(project)).apply)({}, jnp.eye(d_model, dtype=jnp.float32))
    return np.asarray(out, np.float32).reshape(d_model, -1)
