"""Sparse-autoencoder variants, each implementing :class:`jaxequiv.sae.interface.SAE`.

Each variant is a small frozen config whose *shape* fields (``d_in``, ``d_sae``, ``k``, ...) are static and whose
*scalar* hyper-parameters (``theta``, ``l1``, ...) are pytree leaves, so a stack of configs that differ only in
scalars can be ``jax.vmap``-ed together with their stacked params (see :func:`jaxequiv.sae.train_many`). Every
``loss`` returns a :class:`~jaxequiv.sae.interface.LossOutput`; reconstruction error is always the mean over batch
and features of ``(x_hat - x)**2``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxequiv.io.config import to_dict
from jaxequiv.sae.interface import LossOutput, Params, State

__all__ = ["ReluL1", "TopK", "Matryoshka", "BatchTopK", "JumpReLU", "STSAE", "VARIANTS", "make", "sharded_top_k"]


def _static(**kw):
    return dataclasses.field(metadata={"static": True}, **kw)


def _register(cls):
    """Frozen dataclass + pytree registration: fields marked static are metadata, the rest are leaves."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static")]
    data = [f.name for f in fields if not f.metadata.get("static")]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def _concrete(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Base:
    """Shared validation and helpers; subclasses are registered frozen dataclasses."""

    architecture: ClassVar[str]  # SAELens architecture name written to cfg.json
    name: ClassVar[str]  # jaxequiv variant name
    has_aux_loss: ClassVar[bool] = False

    def __post_init__(self):
        for f in ("d_in", "d_sae"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: {f} must be a positive int, got {v!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not f.metadata.get("static") and _concrete(v) and not math.isfinite(v):
                raise ValueError(f"{type(self).__name__}: {f.name} must be finite, got {v!r}")
            if f.name in ("l1", "l0", "aux_coef") and _concrete(v) and v < 0:
                raise ValueError(f"{type(self).__name__}: {f.name} must be >= 0, got {v!r}")

    # -- defaults shared by the linear-encoder variants ------------------------------------------------------
    def init_state(self) -> State:
        """``since_fired`` (K,) int32: steps since each latent was last non-zero."""
        return {"since_fired": jnp.zeros((self.d_sae,), jnp.int32)}

    def aux_needed(self, state: State) -> jax.Array:
        return jnp.zeros((), bool)

    def update_state(self, state: State, out: LossOutput) -> State:
        return {**state, "since_fired": jnp.where(out.fired, 0, state["since_fired"] + 1)}

    def post_update(self, params: Params) -> Params:
        return params

    def atoms(self, params: Params) -> jax.Array:
        return params["W_dec"]

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """(B, K) codes -> (B, d) reconstruction ``z @ W_dec + b_dec``."""
        return z @ params["W_dec"] + params["b_dec"]

    def _pre(self, params: Params, x: jax.Array) -> jax.Array:
        """(B, d) -> (B, K) ``(x - b_dec) @ W_enc + b_enc``, written as ``x @ W_enc - b_dec @ W_enc + b_enc`` so
        that b_dec's gradient is a (d, K) matrix-vector product, not a third (B, K) x (K, d) matmul."""
        return x @ params["W_enc"] + (params["b_enc"] - params["b_dec"] @ params["W_enc"])

    def config_dict(self) -> dict[str, Any]:
        """JSON-able hyper-parameters (floats for leaves, which must be concrete)."""
        return to_dict(self)

    def static_key(self) -> tuple:
        """Configs with equal static keys can be stacked and vmapped together."""
        return (type(self),) + tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("static"))


def _linear_init(key, d_in: int, d_sae: int, norm: float) -> Params:
    """Decoder rows of norm ``norm`` in random directions, encoder = decoder transposed, zero biases."""
    w = jax.random.normal(key, (d_sae, d_in), jnp.float32)
    w = norm * w / jnp.linalg.norm(w, axis=1, keepdims=True)
    return {"W_enc": w.T, "b_enc": jnp.zeros((d_sae,), jnp.float32), "W_dec": w,
            "b_dec": jnp.zeros((d_in,), jnp.float32)}


def _mse(x_hat, x):
    return jnp.mean(jnp.square(x_hat - x))


def _dense_output(loss, mse, recon, z, aux_loss=None) -> LossOutput:
    """:class:`LossOutput` of a step whose (B, K) training codes ``z`` are dense."""
    active = z != 0
    return LossOutput(loss, mse, recon, jnp.any(active, axis=0), jnp.mean(jnp.sum(active, axis=1)),
                      jnp.min(jnp.where(active, z, jnp.inf), axis=0),
                      jnp.zeros((), mse.dtype) if aux_loss is None else aux_loss)


def _unit_rows(w):
    return w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------------------------
@_register
class ReluL1(_Base):
    """Standard ReLU SAE with an L1 penalty weighted by decoder-row norms.

    ``z = relu((x - b_dec) W_enc + b_enc)``; loss = MSE + ``l1`` * mean_b sum_i z_i ||W_dec_i||.

    Attributes:
      d_in, d_sae: input width d and dictionary size K.
      l1: weight of the L1 penalty on the codes.
    """

    d_in: int = _static()
    d_sae: int = _static()
    l1: float = 1e-3
    architecture: ClassVar[str] = "standard"
    name: ClassVar[str] = "relu_l1"

    def init(self, key) -> Params:
        return _linear_init(key, self.d_in, self.d_sae, 0.1)

    def encode(self, params, x, state=None):
        return jax.nn.relu(self._pre(params, x))

    def loss(self, params, x, key, state, with_aux=True):
        z = self.encode(params, x)
        x_hat = self.decode(params, z)
        mse = _mse(x_hat, x)
        sparsity = jnp.mean(z @ jnp.linalg.norm(params["W_dec"], axis=1))
        return _dense_output(mse + self.l1 * sparsity, mse, x_hat, z)


# ---------------------------------------------------------------------------------------------------------------
_SHARDED_TOP_K = contextvars.ContextVar("sharded_top_k", default=False)


@contextlib.contextmanager
def sharded_top_k():
    """Trace the top-k selections inside this block with ``lax.approx_max_k(recall_target=1.0)``, which keeps
    every candidate (the exact top k, same values and indices) and which XLA partitions along sharded batch and
    stack axes; ``lax.top_k``, used otherwise, is gathered onto every device. :func:`jaxequiv.sae.train_many`
    traces its sharded step in this block."""
    token = _SHARDED_TOP_K.set(True)
    try:
        yield
    finally:
        _SHARDED_TOP_K.reset(token)


def _top_k(x, k):
    """(..., n) -> the k largest values along the last axis and their indices, largest first."""
    if _SHARDED_TOP_K.get():
        return jax.lax.approx_max_k(x, k, recall_target=1.0)
    return jax.lax.top_k(x, k)


def _over_latents(k, body, init):
    """``fori_loop`` over the k selected latents. Each iteration gathers/scatters one (B, d) block of rows,
    which XLA CPU fuses into a vectorised loop (a single (B, k, d) gather or scatter is far slower there)."""
    return jax.lax.fori_loop(0, k, body, init, unroll=min(k, 16))


@jax.custom_vjp
def _selected_pre(xc, w_enc, b_enc, idx, vals):
    """(B, k) pre-activations ``(xc @ w_enc + b_enc)[b, idx[b]]``, already computed densely and passed as
    ``vals``; the backward pass touches only the k selected encoder columns per row."""
    return vals


def _selected_pre_fwd(xc, w_enc, b_enc, idx, vals):
    return vals, (xc, w_enc, idx)


def _selected_pre_bwd(res, g):
    xc, w_enc, idx = res
    k = idx.shape[1]
    w_rows = w_enc.T  # (K, d): one row per latent

    def step(j, acc):
        g_xc, g_rows = acc
        gj = g[:, j, None]
        return g_xc + gj * w_rows[idx[:, j]], g_rows.at[idx[:, j]].add(gj * xc)

    g_xc, g_rows = _over_latents(k, step, (jnp.zeros_like(xc), jnp.zeros_like(w_rows)))
    g_b = jnp.zeros((w_enc.shape[1],), g.dtype).at[idx.reshape(-1)].add(g.reshape(-1))
    return g_xc, g_rows.T, g_b, None, None


_selected_pre.defvjp(_selected_pre_fwd, _selected_pre_bwd)


@jax.custom_vjp
def _sparse_decode(vals, idx, w_dec):
    """Decode only the active latents: sum_j vals[:, j] * w_dec[idx[:, j]], (B, k) x (B, k) -> (B, d)."""
    return _over_latents(idx.shape[1], lambda j, acc: acc + vals[:, j, None] * w_dec[idx[:, j]],
                         jnp.zeros((vals.shape[0], w_dec.shape[1]), w_dec.dtype))


def _sparse_decode_fwd(vals, idx, w_dec):
    return _sparse_decode(vals, idx, w_dec), (vals, idx, w_dec)


def _sparse_decode_bwd(res, g):
    vals, idx, w_dec = res

    def step(j, acc):
        g_vals, g_w = acc
        rows = w_dec[idx[:, j]]
        return g_vals.at[j].set(jnp.sum(g * rows, axis=1)), g_w.at[idx[:, j]].add(vals[:, j, None] * g)

    g_vals, g_w = _over_latents(idx.shape[1], step, (jnp.zeros(idx.shape[::-1], g.dtype), jnp.zeros_like(w_dec)))
    return g_vals.T, None, g_w


_sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


def _dense_from_topk(vals, idx, d_sae):
    rows = jnp.arange(vals.shape[0])[:, None]
    return jnp.zeros((vals.shape[0], d_sae), vals.dtype).at[rows, idx].set(vals)


@_register
class TopK(_Base):
    """TopK SAE (Gao et al. 2024): keep the ``k`` largest pre-activations per row (then ReLU).

    Training does one dense matmul (the detached pre-activations, for the selection); custom VJPs then make the
    decoder and both gradients touch only the k selected latents per row. AuxK: the residual (detached) is
    reconstructed from the ``k_aux`` largest pre-activations among latents dead for ``dead_steps`` steps, weighted
    by ``aux_coef`` and by min(#dead / k_aux, 1). Decoder rows are renormalised to unit norm after each step.

    Attributes:
      d_in, d_sae: input width d and dictionary size K.
      k: latents kept per row.
      dead_steps: steps without firing after which a latent counts as dead (for AuxK).
      k_aux: latents of the AuxK reconstruction (0: d_in // 2).
      aux_coef: weight of the AuxK loss.
    """

    d_in: int = _static()
    d_sae: int = _static()
    k: int = _static(default=32)
    dead_steps: int = _static(default=1000)
    k_aux: int = _static(default=0)  # 0 -> d_in // 2
    aux_coef: float = 1.0 / 32
    architecture: ClassVar[str] = "topk"
    name: ClassVar[str] = "topk"
    has_aux_loss: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
            raise ValueError(f"{type(self).__name__}: k must be an int in [1, d_sae={self.d_sae}], got k={self.k!r}; "
                             f"lower k or raise d_sae")
        if self.dead_steps < 1 or self.k_aux < 0:
            raise ValueError(f"{type(self).__name__}: dead_steps must be >= 1 and k_aux >= 0, "
                             f"got {self.dead_steps}, {self.k_aux}")

    def init(self, key) -> Params:
        return _linear_init(key, self.d_in, self.d_sae, 1.0)

    def post_update(self, params):
        return {**params, "W_dec": _unit_rows(params["W_dec"])}

    def _select(self, params, xc, pre, k):
        """ReLU of the k largest pre-activations per row of the detached (B, K) ``pre``, differentiable through
        the selected encoder columns only: (B, k) values, (B, k) indices."""
        top, idx = _top_k(pre, k)
        return jax.nn.relu(_selected_pre(xc, params["W_enc"], params["b_enc"], idx, top)), idx

    def encode(self, params, x, state=None):
        vals, idx = _top_k(self._pre(params, x), self.k)
        return _dense_from_topk(jax.nn.relu(vals), idx, self.d_sae)

    def aux_needed(self, state: State) -> jax.Array:
        """Whether any latent is dead, i.e. whether AuxK contributes to the loss this step."""
        return jnp.any(state["since_fired"] >= self.dead_steps)

    def _auxk(self, params, xc, residual, pre, state, with_aux):
        """AuxK loss: ``residual`` (B, d) reconstructed from the k_aux largest pre-activations of dead latents;
        skipped by ``lax.cond`` when none is dead. Under vmap both branches of that cond run, so
        :func:`jaxequiv.sae.train_many` checks :meth:`aux_needed` for the whole group and passes
        ``with_aux=False`` when no SAE of it has a dead latent."""
        if not with_aux:
            return jnp.zeros((), xc.dtype)
        k_aux = min(self.k_aux or self.d_in // 2, self.d_sae)
        dead = state["since_fired"] >= self.dead_steps
        n_dead = jnp.sum(dead)

        def aux_loss(_):
            vals, idx = self._select(params, xc, jnp.where(dead, pre, -jnp.inf), k_aux)
            rec = _sparse_decode(vals * dead[idx], idx, params["W_dec"])  # alive picks (< k_aux dead) drop out
            return jnp.minimum(n_dead / k_aux, 1.0) * _mse(rec, residual)

        return jax.lax.cond(n_dead > 0, aux_loss, lambda _: jnp.zeros((), xc.dtype), None)

    def _output(self, loss, mse, x_hat, vals, idx, aux) -> LossOutput:
        """:class:`LossOutput` from the (B, k) selected values and indices."""
        active = (vals > 0).reshape(-1)
        flat = idx.reshape(-1)
        fired = jnp.zeros((self.d_sae,), bool).at[flat].max(active)
        smallest = jnp.full((self.d_sae,), jnp.inf, vals.dtype).at[flat].min(jnp.where(active, vals.reshape(-1),
                                                                                          jnp.inf))
        return LossOutput(loss, mse, x_hat, fired, jnp.mean(jnp.sum(vals > 0, axis=1)), smallest, aux)

    def loss(self, params, x, key, state, with_aux=True):
        xc = x - params["b_dec"]
        pre = jax.lax.stop_gradient(xc @ params["W_enc"] + params["b_enc"])  # the one dense matmul
        vals, idx = self._select(params, xc, pre, self.k)
        x_hat = _sparse_decode(vals, idx, params["W_dec"]) + params["b_dec"]
        mse = _mse(x_hat, x)
        aux = self._auxk(params, xc, jax.lax.stop_gradient(x - x_hat), pre, state, with_aux)
        return self._output(mse + self.aux_coef * aux, mse, x_hat, vals, idx, aux)


# ---------------------------------------------------------------------------------------------------------------
@_register
class Matryoshka(TopK):
    """Matryoshka TopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries.

    Codes are TopK's; each prefix ``W_dec[:m]`` of the dictionary (m in ``prefixes``, increasing, the last is
    d_sae) must reconstruct x on its own from the codes of its first m latents, so early latents learn general
    features. loss = sum over prefixes of MSE(prefix reconstruction) + ``aux_coef`` * AuxK. ``prefixes=()`` means
    (d_sae/8, d_sae/4, d_sae/2, d_sae). Inference is a plain TopK SAE (saved with SAELens's ``topk`` architecture).

    Attributes:
      prefixes: nested dictionary sizes, increasing, the last d_sae (empty: d_sae/8, d_sae/4, d_sae/2, d_sae).
    """

    prefixes: tuple[int, ...] = _static(default=())
    architecture: ClassVar[str] = "topk"
    name: ClassVar[str] = "matryoshka"

    def __post_init__(self):
        super().__post_init__()
        sizes = tuple(self.prefixes) or tuple(sorted({max(self.d_sae >> i, 1) for i in range(4)}))
        if (not all(isinstance(m, int) for m in sizes) or sizes[-1] != self.d_sae
                or any(a >= b for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1):
            raise ValueError(f"Matryoshka: prefixes must be increasing positive ints ending at d_sae={self.d_sae}, "
                             f"got {self.prefixes!r}")
        object.__setattr__(self, "prefixes", sizes)

    def loss(self, params, x, key, state, with_aux=True):
        xc = x - params["b_dec"]
        pre = jax.lax.stop_gradient(xc @ params["W_enc"] + params["b_enc"])
        vals, idx = self._select(params, xc, pre, self.k)
        x_hat, total = params["b_dec"], 0.0
        for lo, hi in zip((0,) + self.prefixes[:-1], self.prefixes):  # add each band of latents [lo, hi)
            x_hat = x_hat + _sparse_decode(jnp.where((idx >= lo) & (idx < hi), vals, 0.0), idx, params["W_dec"])
            total = total + _mse(x_hat, x)
        mse = _mse(x_hat, x)
        aux = self._auxk(params, xc, jax.lax.stop_gradient(x - x_hat), pre, state, with_aux)
        return self._output(total + self.aux_coef * aux, mse, x_hat, vals, idx, aux)


# ---------------------------------------------------------------------------------------------------------------
@_register
class BatchTopK(TopK):
    """BatchTopK SAE (Bussmann et al. 2024): keep the ``k * B`` largest ReLU pre-activations over the whole batch.

    For inference each latent gets its own threshold (a JumpReLU): an exponential moving average (rate
    ``threshold_lr``) of the smallest activation it had when selected; latents never selected fall back to the
    global EMA of the batch's smallest selected activation.

    Attributes:
      threshold_lr: rate of the moving average that sets each latent's inference threshold.
    """

    threshold_lr: float = 0.01
    architecture: ClassVar[str] = "jumprelu"  # saved for inference as SAELens does: a JumpReLU with thresholds
    name: ClassVar[str] = "batchtopk"

    def init_state(self):
        return {**super().init_state(), "threshold": jnp.zeros((self.d_sae,), jnp.float32),
                "seen": jnp.zeros((self.d_sae,), bool), "global_threshold": jnp.zeros((), jnp.float32)}

    def thresholds(self, state) -> jax.Array:
        """(K,) per-latent inference thresholds."""
        return jnp.where(state["seen"], state["threshold"], state["global_threshold"])

    def encode(self, params, x, state=None):
        if state is None:
            raise ValueError("BatchTopK.encode needs the training state (per-latent thresholds); pass state=")
        pre = self._pre(params, x)
        return jnp.where(pre > self.thresholds(state), pre, 0.0)

    def loss(self, params, x, key, state, with_aux=True):
        pre = jax.nn.relu(self._pre(params, x))
        n = x.shape[0] * self.k
        flat = pre.reshape(-1)
        _, sel = _top_k(jax.lax.stop_gradient(flat), n)
        z = jnp.zeros_like(flat).at[sel].set(flat[sel]).reshape(pre.shape)
        x_hat = self.decode(params, z)
        mse = _mse(x_hat, x)
        aux = self._auxk(params, x - params["b_dec"], jax.lax.stop_gradient(x - x_hat), jax.lax.stop_gradient(pre),
                         state, with_aux)
        return _dense_output(mse + self.aux_coef * aux, mse, x_hat, z, aux)

    def update_state(self, state, out):
        """Per-latent thresholds: EMA (rate ``threshold_lr``) of each latent's smallest selected activation
        (``out.min_active``); the global threshold likewise of the batch's smallest."""
        fired, col_min = out.fired, out.min_active
        lr = self.threshold_lr
        thr = jnp.where(fired, jnp.where(state["seen"], (1 - lr) * state["threshold"] + lr * col_min, col_min),
                        state["threshold"])
        gmin = jnp.min(col_min)
        g = state["global_threshold"]
        g = jnp.where(jnp.isfinite(gmin), jnp.where(jnp.any(state["seen"]), (1 - lr) * g + lr * gmin, gmin), g)
        return {"since_fired": jnp.where(fired, 0, state["since_fired"] + 1), "threshold": thr,
                "seen": state["seen"] | fired, "global_threshold": g}


# ---------------------------------------------------------------------------------------------------------------
def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def _jumprelu(x, theta, eps):
    return jnp.where(x > theta, x, 0.0)


def _jumprelu_fwd(x, theta, eps):
    return _jumprelu(x, theta, eps), (x, theta, eps)


def _jumprelu_bwd(res, g):
    x, theta, eps = res
    gx = jnp.where(x > theta, g, 0.0)
    gtheta = -(theta / eps) * _rect((x - theta) / eps) * g
    return gx, jnp.sum(gtheta.reshape(-1, theta.shape[-1]), axis=0), jnp.zeros_like(eps)


_jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def _step(x, theta, eps):
    return (x > theta).astype(x.dtype)


def _step_fwd(x, theta, eps):
    return _step(x, theta, eps), (x, theta, eps)


def _step_bwd(res, g):
    x, theta, eps = res
    gtheta = -(1.0 / eps) * _rect((x - theta) / eps) * g
    return jnp.zeros_like(x), jnp.sum(gtheta.reshape(-1, theta.shape[-1]), axis=0), jnp.zeros_like(eps)


_step.defvjp(_step_fwd, _step_bwd)


@_register
class JumpReLU(_Base):
    """JumpReLU SAE (Rajamanoharan et al. 2024): ``z = pre * 1[pre > threshold]`` per latent.

    The raw per-latent ``threshold`` (K,) is a float32 parameter (clamped at 0 after each step); the jump and the
    L0 penalty get straight-through (rectangle-kernel, bandwidth ``bandwidth``) pseudo-gradients with respect to
    it. loss = MSE + ``l0`` * mean_b ||z||_0.

    Attributes:
      d_in, d_sae: input width d and dictionary size K.
      l0: weight of the L0 penalty on the codes.
      bandwidth: width of the rectangle kernel of the straight-through gradients.
      init_threshold: initial threshold of every latent.
    """

    d_in: int = _static()
    d_sae: int = _static()
    l0: float = 1e-3
    bandwidth: float = 1e-3
    init_threshold: float = 1e-3
    architecture: ClassVar[str] = "jumprelu"
    name: ClassVar[str] = "jumprelu"

    def __post_init__(self):
        super().__post_init__()
        for f in ("bandwidth", "init_threshold"):
            v = getattr(self, f)
            if _concrete(v) and v <= 0:
                raise ValueError(f"JumpReLU: {f} must be > 0, got {v!r}")

    def init(self, key) -> Params:
        p = _linear_init(key, self.d_in, self.d_sae, 0.1)
        p["threshold"] = jnp.full((self.d_sae,), self.init_threshold, jnp.float32)
        return p

    def post_update(self, params):
        return {**params, "threshold": jnp.maximum(params["threshold"], 0.0)}

    def encode(self, params, x, state=None):
        pre = self._pre(params, x)
        return jnp.where(pre > params["threshold"], pre, 0.0)

    def loss(self, params, x, key, state, with_aux=True):
        pre = self._pre(params, x)
        theta = params["threshold"]
        eps = jnp.asarray(self.bandwidth, jnp.float32)
        z = _jumprelu(pre, theta, eps)
        x_hat = self.decode(params, z)
        mse = _mse(x_hat, x)
        l0 = jnp.mean(jnp.sum(_step(pre, theta, eps), axis=-1))
        return _dense_output(mse + self.l0 * l0, mse, x_hat, z)


# ---------------------------------------------------------------------------------------------------------------
def _layer_norm(h, scale, bias, eps=1e-5):
    mu = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
    return (h - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _dropout_keep(key, rate, shape):
    """Dropout keep-mask, True with probability 1 - ``rate``: a counter-based hash of (``key``, element index).

    About ten integer ops per element instead of threefry's ~100 (threefry masks took ~3/4 of a small stsae step);
    elementwise in the key, so vmapped SAEs draw exactly the masks they would draw alone.
    """
    k = jax.random.key_data(key)
    n = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _fmix32(_fmix32(n ^ k[0]) + k[1])
    return bits >= (jnp.asarray(rate, jnp.float32) * 2.0**32).astype(jnp.uint32)


# PyTorch nn.Linear's default weight init U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for an (in, out) kernel
_torch_linear_kernel = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_linear_init(key, fan_in, fan_out, bias=True):
    """PyTorch nn.Linear default: weight (in, out) and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    kw, kb = jax.random.split(key)
    w = _torch_linear_kernel(kw, (fan_in, fan_out), jnp.float32)
    if not bias:
        return w, None
    bound = 1.0 / math.sqrt(fan_in)
    return w, jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)


@_register
class STSAE(_Base):
    """CODEC's sigmoid-threshold SAE (codec.md §2).

    Encoder: [Linear(d->h) -> Dropout -> ReLU -> LayerNorm] twice (second h->h), then bias-free Linear(h->K) ->
    sigmoid, giving u in (0,1)^K. Codes ``z = u * 1[u >= theta]`` with the mask constant under autodiff.
    Decoder ``x_hat = z @ D`` (``relu(D)`` when ``nonneg``), D (K, d) Xavier-uniform, no bias.
    loss = MSE + ``l1`` * mean|D|. ``d_sae`` = N * d_in; ``hidden`` = h (0 -> d_in).

    Attributes:
      d_in, d_sae: input width d and dictionary size K.
      hidden: encoder width h (0: d_in).
      nonneg: non-negative dictionary (the decoder uses relu(D)).
      theta: code threshold in (0, 1).
      l1: weight of the dictionary L1 penalty lambda_D.
      dropout: encoder dropout rate during training.
    """

    d_in: int = _static()
    d_sae: int = _static()
    hidden: int = _static(default=0)
    nonneg: bool = _static(default=False)
    theta: float = 0.8
    l1: float = 5e-5
    dropout: float = 0.05
    architecture: ClassVar[str] = "jaxequiv_stsae"  # no SAELens architecture: SAELens refuses it by this name
    name: ClassVar[str] = "stsae"

    def __post_init__(self):
        super().__post_init__()
        if _concrete(self.theta) and not 0 < self.theta < 1:
            raise ValueError(f"STSAE: theta must lie in (0, 1) (sigmoid codes), got theta={self.theta!r}")
        if _concrete(self.dropout) and not 0 <= self.dropout < 1:
            raise ValueError(f"STSAE: dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise ValueError(f"STSAE: hidden must be an int >= 0 (0 means d_in), got {self.hidden!r}")

    @property
    def h(self) -> int:
        return self.hidden or self.d_in

    def init(self, key) -> Params:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        w1, b1 = _torch_linear_init(k1, self.d_in, self.h)
        w2, b2 = _torch_linear_init(k2, self.h, self.h)
        w3, _ = _torch_linear_init(k3, self.h, self.d_sae, bias=False)
        d = jax.nn.initializers.xavier_uniform()(k4, (self.d_sae, self.d_in), jnp.float32)
        one, zero = jnp.ones((self.h,), jnp.float32), jnp.zeros((self.h,), jnp.float32)
        return {"W_1": w1, "b_1": b1, "ln_1_scale": one, "ln_1_bias": zero, "W_2": w2, "b_2": b2,
                "ln_2_scale": one, "ln_2_bias": zero, "W_enc": w3, "W_dec": d}

    def atoms(self, params):
        return jax.nn.relu(params["W_dec"]) if self.nonneg else params["W_dec"]

    def decode(self, params, z):
        return z @ self.atoms(params)

    def codes_u(self, params, x, key=None):
        """(B, d) -> (B, K) sigmoid codes u before thresholding; dropout active when ``key`` is given."""
        h = x
        for i, k in ((1, 0), (2, 1)):
            h = h @ params[f"W_{i}"] + params[f"b_{i}"]
            if key is not None:
                keep = _dropout_keep(jax.random.fold_in(key, k), self.dropout, h.shape)
                h = jnp.where(keep, h / (1.0 - self.dropout), 0.0)
            h = _layer_norm(jax.nn.relu(h), params[f"ln_{i}_scale"], params[f"ln_{i}_bias"])
        return jax.nn.sigmoid(h @ params["W_enc"])

    def _threshold(self, u):
        return u * jax.lax.stop_gradient((u >= self.theta).astype(u.dtype))

    def encode(self, params, x, state=None):
        return self._threshold(self.codes_u(params, x))

    def loss(self, params, x, key, state, with_aux=True):
        z = self._threshold(self.codes_u(params, x, key))
        x_hat = self.decode(params, z)
        mse = _mse(x_hat, x)
        return _dense_output(mse + self.l1 * jnp.mean(jnp.abs(params["W_dec"])), mse, x_hat, z)


VARIANTS = {c.name: c for c in (ReluL1, TopK, Matryoshka, BatchTopK, JumpReLU, STSAE)}


def make(variant: str, d_in: int, expansion: int | None = None, d_sae: int | None = None, **hyper):
    """Build a variant config by name: ``make("stsae", 512, expansion=3, theta=0.9)``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAE variant {variant!r}; expected one of {sorted(VARIANTS)}")
    if (expansion is None) == (d_sae is None):
        raise ValueError(f"give exactly one of expansion (K = expansion * d_in) or d_sae, got {expansion=}, {d_sae=}")
    return VARIANTS[variant](d_in=d_in, d_sae=d_sae if d_sae is not None else expansion * d_in, **hyper)
