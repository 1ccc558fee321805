"""PyTorch reference modules whose ``state_dict`` keys equal torchvision's ResNet and timm's ViT.

torchvision and timm do not install beside the pinned torch, so parity tests and the adapter benchmark build
these instead: same topology, same key names, same numerics (torchvision ResNet v1.5, timm
``VisionTransformer`` with class-token pooling). Importing this module imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TorchResNet", "torch_resnet", "TorchViT"]


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _downsample(c_in, planes * 4, stride)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + (x if self.downsample is None else self.downsample(x)))


def _downsample(c_in: int, c_out: int, stride: int):
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class TorchResNet(nn.Module):
    """torchvision ``ResNet`` (NCHW): ``block`` ``"basic"`` or ``"bottleneck"``, ``width`` 64 in torchvision;
    ``stem="small"`` swaps the 7x7 stride-2 conv and max-pool for a 3x3 stride-1 conv (jaxequiv's small stem)."""

    def __init__(self, block: str = "basic", layers=(2, 2, 2, 2), width: int = 64, num_classes: int = 1000,
                 in_channels: int = 3, stem: str = "imagenet"):
        super().__init__()
        cls = _Basic if block == "basic" else _Bottleneck
        k, s = (7, 2) if stem == "imagenet" else (3, 1)
        self.conv1 = nn.Conv2d(in_channels, width, k, s, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        c = width
        for i, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(cls(c, width * 2**i, 2 if i > 0 and j == 0 else 1))
                c = width * 2**i * cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_resnet(depth: int, **kwargs) -> TorchResNet:
    """torchvision ``resnet18`` / ``resnet34`` / ``resnet50`` topology."""
    spec = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}[depth]
    return TorchResNet(*spec, **kwargs)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        return self.proj((w.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
    """timm ``VisionTransformer`` (``vit_base_patch16_224`` defaults), NCHW input, class-token pooling.

    ``forward`` returns logits; ``hidden`` lists the residual stream after the embedding and every block.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_dim=None):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img_size // patch_size) ** 2, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(embed_dim, num_heads, mlp_dim or 4 * embed_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.hidden(x)[-1])[:, 0])

    def hidden(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        out = [x]
        for block in self.blocks:
            out.append(block(out[-1]))
        return out
