"""The SAE interface every variant implements (:class:`SAE`) and the one loss output they all return
(:class:`LossOutput`).

An SAE config is a frozen, pytree-registered dataclass: its *shape* fields (``d_in``, ``d_sae``, ``k``, ...)
are static and its *scalar* hyper-parameters (``theta``, ``l1``, ...) are leaves, so configs that differ only in
scalars stack and ``jax.vmap`` together with their stacked params (:func:`jaxequiv.sae.train_many`). Params and
statistics are plain dicts of arrays; every method is a pure function of them. Shapes: ``B`` rows, ``d = d_in``
features, ``K = d_sae`` latents.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax

__all__ = ["SAE", "LossOutput", "Params", "State"]

Params = dict[str, jax.Array]
State = dict[str, jax.Array]


class LossOutput(NamedTuple):
    """What ``SAE.loss`` returns, with the same fields for every variant.

    Attributes:
      loss: () the training objective (what the optimiser minimises).
      mse: () reconstruction error, the mean over batch and features of ``(recon - x)**2``.
      recon: (B, d) training-mode reconstruction.
      fired: (K,) bool, latent non-zero on at least one row of the batch.
      l0: () float32, mean number of non-zero codes per row.
      min_active: (K,) smallest non-zero code of each latent over the batch, ``+inf`` where it did not fire.
      aux_loss: () the auxiliary loss before its coefficient (the TopK family's AuxK); 0 for variants without one
        or when called with ``with_aux=False``.
    """

    loss: jax.Array
    mse: jax.Array
    recon: jax.Array
    fired: jax.Array
    l0: jax.Array
    min_active: jax.Array
    aux_loss: jax.Array


@runtime_checkable
class SAE(Protocol):
    """A sparse-autoencoder variant (see :mod:`jaxequiv.sae.variants` for the implementations).

    ``has_aux_loss`` says whether ``loss`` can add an auxiliary term that is usually off (TopK's AuxK); a vmapped
    group of such SAEs asks ``aux_needed`` and passes ``with_aux=False`` on steps where no member needs it.
    """

    name: ClassVar[str]  # jaxequiv variant name ("stsae", "topk", ...)
    architecture: ClassVar[str]  # SAELens architecture name written to cfg.json
    has_aux_loss: ClassVar[bool]
    d_in: int
    d_sae: int

    def init(self, key: jax.Array) -> Params:
        """Initial params from a typed key: float32 arrays, e.g. ``W_enc`` (d, K), ``W_dec`` (K, d)."""

    def init_state(self) -> State:
        """Non-gradient training statistics: ``since_fired`` (K,) int32 steps since each latent last fired, plus
        variant extras."""

    def encode(self, params: Params, x: jax.Array, state: State | None = None) -> jax.Array:
        """(B, d) -> (B, K) codes in inference mode."""

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """(B, K) codes -> (B, d) reconstruction."""

    def loss(self, params: Params, x: jax.Array, key: jax.Array | None, state: State,
             with_aux: bool = True) -> LossOutput:
        """Training loss of a (B, d) batch; ``key`` drives training-time noise (dropout), may be None for
        variants without any."""

    def aux_needed(self, state: State) -> jax.Array:
        """() bool: whether the auxiliary loss contributes at this state (always False without one)."""

    def update_state(self, state: State, out: LossOutput) -> State:
        """Statistics after a step, from that step's :class:`LossOutput`."""

    def post_update(self, params: Params) -> Params:
        """Projection run after each optimiser step (unit decoder rows, non-negative thresholds, ...)."""

    def atoms(self, params: Params) -> jax.Array:
        """(K, d) dictionary rows as used by ``decode``."""

    def static_key(self) -> tuple:
        """Configs with equal static keys stack and vmap together."""

    def config_dict(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; ``type(cfg)(**cfg.config_dict())`` rebuilds the config."""
