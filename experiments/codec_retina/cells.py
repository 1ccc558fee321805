"""Simulated retinal ganglion cells: stimulus movies, LN cells of four types, Poisson spike counts.

A cell is linear-nonlinear (LN): its generator signal is the stimulus filtered by a space-time separable receptive
field, ``g(t) = sum_lag k_t[lag] * <k_s, s[t - lag]>``, and its rate is ``r(t) = r_max * softplus(gain * g(t) /
g_ref + bias)``, where ``g_ref = ||k_s|| ||k_t||`` is the generator's standard deviation under unit-variance white
noise (so every cell has the same dynamic range there). Spike counts per frame are Poisson with mean ``r``.

Types (:data:`TYPES`): polarity ON (+1, excited by light increments in the receptive-field centre) or OFF (-1)
times kinetics *sustained* (a monophasic temporal filter: a step gives a lasting response) or *transient* (a
biphasic filter whose lobes nearly cancel: a step gives a response that decays back). Spatial filters are
differences of Gaussians (centre minus a weaker, wider surround) placed on one jittered-grid mosaic per type, as
real ganglion-cell types tile the retina independently. Each cell draws its own centre size and time constant
around its type's values, so cells of a type are similar, not identical.

Movies are ``[T, H, W]`` float32 contrast (zero mean): Gaussian white noise (unit variance per pixel), or "pink"
noise whose amplitude spectrum falls as 1/f in space and in time (natural-like: spatially and temporally
correlated), at a lower pixel contrast so that both drive the cells over a similar range.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["TYPES", "Cells", "white_noise", "pink_noise", "temporal_filter", "dog", "make_cells", "generator",
           "rates", "spikes", "windows"]

#: (name, polarity, kinetics) of the four ground-truth types, in label order.
TYPES = (("ON sustained", 1, "sustained"), ("ON transient", 1, "transient"),
         ("OFF sustained", -1, "sustained"), ("OFF transient", -1, "transient"))


@dataclasses.dataclass(frozen=True)
class Cells:
    """A population of LN cells.

    Attributes:
      labels: ``[n]`` type index into :data:`TYPES`.
      centres: ``[n, 2]`` receptive-field centres (row, column) in pixels.
      spatial: ``[n, H, W]`` spatial filters (difference of Gaussians, signed by polarity).
      temporal: ``[n, L]`` temporal filters, lag 0 (the current frame) first.
      gain, bias, r_max: the output nonlinearity ``r_max * softplus(gain * g / g_ref + bias)``.
    """

    labels: np.ndarray
    centres: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    gain: float
    bias: float
    r_max: float

    @property
    def g_ref(self) -> np.ndarray:
        """``[n]`` generator std under unit white noise: ``||k_s|| ||k_t||``."""
        return np.linalg.norm(self.spatial.reshape(len(self.labels), -1), axis=1) * np.linalg.norm(self.temporal,
                                                                                                    axis=1)


def white_noise(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """``[frames, size, size]`` independent standard normal pixels."""
    return rng.standard_normal((frames, size, size), dtype=np.float32)


def pink_noise(rng: np.random.Generator, frames: int, size: int, *, contrast: float = 0.3, corner: float = 0.1,
               block: int = 1024) -> np.ndarray:
    """``[frames, size, size]`` noise with amplitude ``1/(f_s + 1/size) * 1/(f_t + corner)`` (separable 1/f in
    space and time above the corner frequencies, f in cycles per pixel or frame), zero mean, pixel standard
    deviation ``contrast`` (lower than white noise's 1: its power is concentrated where the cells are sensitive).

    Drawn in independent blocks of ``block`` frames (one FFT each), so memory stays small."""
    out = np.empty((frames, size, size), np.float32)
    for lo in range(0, frames, block):
        n = min(block, frames - lo)
        ft = np.abs(np.fft.fftfreq(n))[:, None, None]
        fy = np.fft.fftfreq(size)[None, :, None]
        fx = np.fft.rfftfreq(size)[None, None, :]
        amp = 1.0 / ((np.sqrt(fy**2 + fx**2) + 1.0 / size) * (ft + corner))
        amp[0, 0, 0] = 0.0  # no DC
        phase = np.exp(2j * np.pi * rng.random(amp.shape))
        x = np.fft.irfftn(amp * phase * rng.standard_normal(amp.shape), s=(n, size, size), axes=(0, 1, 2))
        out[lo:lo + n] = contrast * x / x.std()
    return out


def temporal_filter(kinetics: str, lags: int, tau: float) -> np.ndarray:
    """``[lags]`` unit-norm temporal filter, lag 0 first: a gamma kernel ``u^3 exp(-u)`` (``u = (lag + 1/2)/tau``)
    for "sustained"; that kernel minus 0.9 x a slower one (2 tau), scaled to the same area, for "transient"."""
    def gamma(t):
        u = (np.arange(lags) + 0.5) / t
        k = u**3 * np.exp(-u)
        return k / k.sum()

    if kinetics == "sustained":
        k = gamma(tau)
    elif kinetics == "transient":
        k = gamma(tau) - 0.9 * gamma(2 * tau)
    else:
        raise ValueError(f"kinetics must be 'sustained' or 'transient', got {kinetics!r}")
    return k / np.linalg.norm(k)


def dog(size: int, centre: np.ndarray, sigma: float, surround: float = 2.5, weight: float = 0.7) -> np.ndarray:
    """``[size, size]`` difference of Gaussians: a unit-area centre (std ``sigma``) minus ``weight`` x a unit-area
    surround (std ``surround * sigma``), centred at ``centre`` (row, column)."""
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2

    def g(s):
        return np.exp(-d2 / (2 * s * s)) / (2 * np.pi * s * s)

    return g(sigma) - weight * g(surround * sigma)


def make_cells(seed: int, size: int, lags: int, per_type: int, *, margin: float = 4.0, sigma: float = 1.2,
               tau: float = 1.2, jitter: float = 0.1, gain: float = 2.0, bias: float = -1.0,
               r_max: float = 1.0) -> Cells:
    """``per_type`` cells of each of the four :data:`TYPES` on a ``size`` x ``size`` field.

    Each type's centres form its own jittered grid inside ``[margin, size - 1 - margin]``; every cell draws its
    centre std and time constant as ``sigma`` and ``tau`` times ``1 + jitter * N(0, 1)`` (clipped to +-2 jitter).
    """
    if per_type < 1 or size <= 2 * margin:
        raise ValueError(f"need per_type >= 1 and size > 2 * margin; got per_type={per_type}, size={size}, "
                         f"margin={margin}")
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(per_type)))
    span = size - 1 - 2 * margin
    labels, centres, spatial, temporal = [], [], [], []
    for t, (_, polarity, kinetics) in enumerate(TYPES):
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
        cells = grid[rng.permutation(len(grid))[:per_type]]
        pos = margin + (cells + 0.5 + rng.uniform(-0.3, 0.3, cells.shape)) * span / side
        for p in pos:
            s, k = (1 + np.clip(jitter * rng.standard_normal(2), -2 * jitter, 2 * jitter)) * (sigma, tau)
            labels.append(t)
            centres.append(p)
            spatial.append(polarity * dog(size, p, s))
            temporal.append(temporal_filter(kinetics, lags, k))
    return Cells(np.asarray(labels), np.asarray(centres), np.asarray(spatial, np.float32),
                 np.asarray(temporal, np.float32), gain, bias, r_max)


def generator(cells: Cells, movie: np.ndarray) -> np.ndarray:
    """``[T, n]`` generator signals ``g(t) = sum_lag k_t[lag] <k_s, s[t - lag]>`` (frames before 0 count as 0)."""
    proj = movie.reshape(len(movie), -1) @ cells.spatial.reshape(len(cells.labels), -1).T  # [T, n]
    lags = cells.temporal.shape[1]
    out = np.zeros_like(proj)
    for lag in range(lags):
        out[lag:] += cells.temporal[:, lag] * proj[: len(proj) - lag]
    return out


def rates(cells: Cells, movie: np.ndarray) -> np.ndarray:
    """``[T, n]`` expected spike counts per frame."""
    z = cells.gain * generator(cells, movie) / cells.g_ref + cells.bias
    return (cells.r_max * np.logaddexp(0.0, z)).astype(np.float32)


def spikes(rng: np.random.Generator, rate: np.ndarray) -> np.ndarray:
    """Poisson spike counts with mean ``rate`` (same shape), as float32."""
    return rng.poisson(rate).astype(np.float32)


def windows(movie: np.ndarray, lags: int) -> np.ndarray:
    """``[T - lags + 1, H, W, lags]`` read-only view: row i holds frames ``i .. i + lags - 1`` as channels, the
    oldest first, so row i is the history the cells' response at frame ``i + lags - 1`` depends on."""
    return np.lib.stride_tricks.sliding_window_view(movie, lags, axis=0)
