"""CODEC's stsae in PyTorch (needs the ``torch`` extra). SAELens has no such architecture, so this small module
is the way to use a jaxequiv stsae from a torch pipeline::

    from jaxequiv.sae.torch_stsae import load_stsae
    sae = load_stsae("runs/sae/stsae_x3_seed0")  # an nn.Module in eval mode
    z = sae.encode(x)          # (B, d) raw activations -> (B, K) codes
    x_hat = sae.decode(z)      # (B, K) -> (B, d), in the activations' units

Inference only (no dropout, no loss). The maths, as :class:`jaxequiv.sae.STSAE`: ``h = LN(relu(x W_1 + b_1))``,
``h = LN(relu(h W_2 + b_2))`` (LayerNorm eps 1e-5), ``u = sigmoid(h W_enc)``, ``z = u * [u >= theta]``,
``x_hat = z D`` with ``D = relu(W_dec)`` when ``nonneg`` else ``W_dec``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from jaxequiv.sae import variants as V
from jaxequiv.sae.io import load_sae

__all__ = ["STSAEModule", "load_stsae"]


class STSAEModule(nn.Module):
    """CODEC's sigmoid-threshold SAE for inference; parameters named as in jaxequiv (``W_*`` are (in, out))."""

    def __init__(self, cfg: V.STSAE):
        super().__init__()
        self.theta, self.nonneg = float(cfg.theta), bool(cfg.nonneg)
        shapes = {"W_1": (cfg.d_in, cfg.h), "b_1": (cfg.h,), "ln_1_scale": (cfg.h,), "ln_1_bias": (cfg.h,),
                  "W_2": (cfg.h, cfg.h), "b_2": (cfg.h,), "ln_2_scale": (cfg.h,), "ln_2_bias": (cfg.h,),
                  "W_enc": (cfg.h, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in)}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape), requires_grad=False))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, K) thresholded sigmoid codes."""
        h = x
        for i in (1, 2):
            h = torch.relu(h @ getattr(self, f"W_{i}") + getattr(self, f"b_{i}"))
            h = nn.functional.layer_norm(h, h.shape[-1:], getattr(self, f"ln_{i}_scale"), getattr(self, f"ln_{i}_bias"),
                                         eps=1e-5)
        u = torch.sigmoid(h @ self.W_enc)
        return u * (u >= self.theta)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) -> (B, d)."""
        return z @ (torch.relu(self.W_dec) if self.nonneg else self.W_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def load_stsae(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> STSAEModule:
    """An stsae folder written by :func:`jaxequiv.sae.save_sae` as an eval-mode :class:`STSAEModule`."""
    cfg, params, _ = load_sae(path)
    if not isinstance(cfg, V.STSAE):
        raise ValueError(f"{os.fspath(path)} holds a {cfg.name} SAE, not an stsae; load it with SAELens "
                         "(sae_lens.SAE.load_from_disk) instead")
    module = STSAEModule(cfg)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    return module.to(dtype).eval()
