"""ResNet (He et al. 2016) in torchvision's topology and module names, as a flax nnx module.

Layout is **NHWC**: inputs ``[B, H, W, C]``, convolution kernels HWIO (a torch ``Conv2d`` weight OIHW maps to
``kernel = W.transpose(2, 3, 1, 0)``; a torch ``Linear`` weight maps to ``kernel = W.T``). Padding is explicit
and torch-style (3 for the 7x7 stride-2 stem, 1 for every 3x3, max-pool 3x3 stride 2 padding 1), never XLA's
``"SAME"``, which pads asymmetrically at stride 2 and so disagrees with torch on even input sizes.

Attribute paths equal torchvision's ``state_dict`` keys up to the parameter name: ``conv1``, ``bn1``,
``layer1`` ... ``layer4`` (lists of blocks, so ``layer2.0.conv1``), ``layer2.0.downsample.0`` (conv) and
``.1`` (BatchNorm), ``fc``. Parameter names: ``kernel`` (conv, fc), ``bias`` (fc), and for BatchNorm
``scale`` / ``bias`` / ``mean`` / ``var`` (torch ``weight`` / ``bias`` / ``running_mean`` / ``running_var``).

Sites (axes ``batch, height, width, channel`` unless noted):

* ``"maxpool"``: the stem output (ImageNet stem), or ``"relu"`` for the small stem (3x3 stride-1 conv, no pool);
* ``"layer{i}.{j}"``: every block output, after the residual add and the final ReLU;
* ``"avgpool"``: global average pool, axes ``batch, channel``;
* ``"fc"``: logits, axes ``batch, channel``.

Modules are created in **eval mode** (BatchNorm uses its running statistics), which is what every analysis
wants; call ``model.train()`` before a hand-written training loop (``jaxequiv.train.fit`` does it for you) and
``model.eval()`` after.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxequiv.sites import site

__all__ = ["BatchNorm", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]

_IMAGE_AXES = ("batch", "height", "width", "channel")

# torchvision's initialisation: kaiming-normal (fan_out, ReLU gain) convs; torch's default Linear weight
# init U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_fc_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class BatchNorm(nnx.Module):
    """BatchNorm over the last (channel) axis with torch semantics.

    In train mode (``use_running_average=False``) it normalises with the batch's biased variance and updates
    ``mean <- (1 - momentum) * mean + momentum * batch_mean`` and ``var`` likewise with the *unbiased* batch
    variance, exactly as ``torch.nn.BatchNorm2d`` (``momentum=0.1`` there is flax's ``momentum=0.9``).
    In eval mode it uses the running statistics. Input ``[..., C]``.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 use_running_average: bool = True):
        self.scale = nnx.Param(jnp.asarray(np.ones(num_features, np.float32)))
        self.bias = nnx.Param(jnp.asarray(np.zeros(num_features, np.float32)))
        self.mean = nnx.BatchStat(jnp.asarray(np.zeros(num_features, np.float32)))
        self.var = nnx.BatchStat(jnp.asarray(np.ones(num_features, np.float32)))
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


# Output maps of at most this many positions are convolved as patches @ kernel: XLA:CPU's convolution is
# pathologically slow there (a 3x3, 256-channel conv on 2x2 maps: ~50x slower than the matmul, forward+backward).
_MATMUL_CONV_MAX_POSITIONS = 4


def _conv_general_dilated(x, kernel, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, **kwargs):
    """``lax.conv_general_dilated``, computed as an explicit patch matmul for tiny NHWC output maps.

    Args:
      x: ``[B, H, W, C_in]``; kernel: ``[kh, kw, C_in, C_out]`` (HWIO); padding: ``((top, bottom), (left, right))``.
    """
    kh, kw, c_in, c_out = kernel.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = window_strides
    ho = (x.shape[1] + pt + pb - kh) // sh + 1
    wo = (x.shape[2] + pl + pr - kw) // sw + 1
    plain = all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation)) and feature_group_count == 1
    if ho * wo > _MATMUL_CONV_MAX_POSITIONS or not plain:
        return jax.lax.conv_general_dilated(x, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                            feature_group_count=feature_group_count, **kwargs)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    patches = [xp[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :]
               for dy in range(kh) for dx in range(kw)]  # (dy, dx) order = the kernel's HW order
    patches = jnp.stack(patches, axis=3).reshape(x.shape[0], ho, wo, kh * kw * c_in)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


def _conv(c_in: int, c_out: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free conv with torch padding ``(k - 1) // 2`` on each side."""
    p = (k - 1) // 2
    return nnx.Conv(c_in, c_out, kernel_size=(k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                    use_bias=False, kernel_init=_conv_init, conv_general_dilated=_conv_general_dilated, rngs=rngs)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (stride on the first) plus identity or 1x1-conv shortcut; ResNet-18/34's block."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(c_in, planes, 3, stride, rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = _conv(planes, planes, 3, 1, rngs)
        self.bn2 = BatchNorm(planes)
        self.downsample = _shortcut(c_in, planes * self.expansion, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return nnx.relu(h + _apply_shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision "v1.5"), 1x1 expand by 4; ResNet-50's block."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(c_in, planes, 1, 1, rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = _conv(planes, planes, 3, stride, rngs)
        self.bn2 = BatchNorm(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1, 1, rngs)
        self.bn3 = BatchNorm(planes * self.expansion)
        self.downsample = _shortcut(c_in, planes * self.expansion, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = nnx.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return nnx.relu(h + _apply_shortcut(self.downsample, x))


def _shortcut(c_in: int, c_out: int, stride: int, rngs: nnx.Rngs):
    """``[conv1x1, BatchNorm]`` when the shape changes (torchvision's ``downsample``), else ``None``."""
    if stride == 1 and c_in == c_out:
        return None
    return nnx.List([_conv(c_in, c_out, 1, stride, rngs), BatchNorm(c_out)])


def _apply_shortcut(downsample, x: jax.Array) -> jax.Array:
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    """ResNet on NHWC images.

    Args:
      block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+).
      layers: blocks per stage, e.g. ``(2, 2, 2, 2)``; stage ``i`` (1-based) is attribute ``layer{i}`` with
        ``width * 2**(i-1)`` planes, stride 1 for the first stage and 2 after.
      width: planes of the first stage (64 in torchvision; 8 or 16 for small models).
      num_classes: outputs of ``fc``.
      in_channels: input channels (3 for RGB, 1 for MNIST/digits).
      stem: ``"imagenet"`` (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or ``"small"`` (3x3 stride-1 conv,
        BN, ReLU; for 8x8, 28x28 or 32x32 inputs).
      rngs: ``nnx.Rngs`` for the initial weights.

    Call: ``model(x)`` with ``x: [B, H, W, in_channels]`` float -> logits ``[B, num_classes]``.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), *, width: int = 64,
                 num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet", rngs: nnx.Rngs):
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        layers = tuple(int(n) for n in layers)
        if not layers or min(layers) < 1:
            raise ValueError(f"layers must be a non-empty sequence of positive block counts, got {layers}")
        block_cls = _BLOCKS[block]
        self.in_channels = in_channels
        self.stem = stem
        self.num_stages = len(layers)
        self.conv1 = _conv(in_channels, width, 7 if stem == "imagenet" else 3, 2 if stem == "imagenet" else 1,
                           rngs)
        self.bn1 = BatchNorm(width)
        c = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block_cls(c, planes, 2 if (i > 0 and j == 0) else 1, rngs=rngs))
                c = planes * block_cls.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.fc = nnx.Linear(c, num_classes, kernel_init=_fc_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            hint = ""
            if x.ndim == 4 and x.shape[1] == self.in_channels:
                hint = "; it looks like NCHW: transpose with x.transpose(0, 2, 3, 1)"
            raise ValueError(f"ResNet expects NHWC images [batch, height, width, {self.in_channels}], "
                             f"got shape {tuple(x.shape)}{hint}")
        h = nnx.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            h = nnx.max_pool(h, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            h = site("maxpool", h, axes=_IMAGE_AXES)
        else:
            h = site("relu", h, axes=_IMAGE_AXES)
        for i in range(1, self.num_stages + 1):
            for j, blk in enumerate(getattr(self, f"layer{i}")):
                h = site(f"layer{i}.{j}", blk(h), axes=_IMAGE_AXES)
        h = site("avgpool", jnp.mean(h, axis=(1, 2)), axes=("batch", "channel"))
        return site("fc", self.fc(h), axes=("batch", "channel"))


def resnet18(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ``resnet18`` (11,689,512 parameters at 1000 classes); ``kwargs`` go to :class:`ResNet`."""
    return ResNet("basic", (2, 2, 2, 2), num_classes=num_classes, rngs=rngs, **kwargs)


def resnet34(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ``resnet34`` (21,797,672 parameters at 1000 classes)."""
    return ResNet("basic", (3, 4, 6, 3), num_classes=num_classes, rngs=rngs, **kwargs)


def resnet50(*, num_classes: int = 1000, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision ``resnet50`` (25,557,032 parameters at 1000 classes)."""
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes=num_classes, rngs=rngs, **kwargs)
