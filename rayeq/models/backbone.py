"""ResNet encoders (torchvision, random init) that return the last feature map and its pooled vector."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from rayeq.models.facts import BACKBONE_DIMS


class ResNetBackbone(nn.Module):
    """torchvision ResNet without its classifier.

    `stem` adapts the input layers to the image size: "imagenet" keeps the 7x7/2 conv and max-pool
    (stride 32); "compact" uses a 3x3/2 conv, no max-pool (stride 16); "small" a 3x3/1 conv, no
    max-pool (stride 8, the usual CIFAR / 3DIEBench-at-64px choice).
    """

    def __init__(self, arch: str = "resnet18", stem: str = "small", zero_init_residual: bool = True):
        super().__init__()
        if arch not in BACKBONE_DIMS:
            raise ValueError(f"unknown backbone {arch!r}; choose from {sorted(BACKBONE_DIMS)}")
        net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
        if stem == "small":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif stem == "compact":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif stem != "imagenet":
            raise ValueError(f"unknown stem {stem!r}; choose from imagenet, compact, small")
        if stem != "imagenet":
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_dim = BACKBONE_DIMS[arch]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.layers(self.stem(x))  # (B, C, h, w)
        pooled = fmap.mean(dim=(2, 3))  # (B, C)
        return fmap, pooled


def split_features(x: torch.Tensor, inv_dim: int, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """SIE's convention: the first `inv_dim` channels are invariant, the rest equivariant.

    Works for pooled vectors (B, C) with dim=1, feature maps (B, C, h, w) with dim=1 and
    token sequences (B, N, C) with dim=-1.
    """
    return x.narrow(dim, 0, inv_dim), x.narrow(dim, inv_dim, x.shape[dim] - inv_dim)


def feature_part(x: torch.Tensor, name: str, inv_dim: int, dim: int = 1) -> torch.Tensor:
    """One named part of features: "full", "inv" or "equi" (see `split_features`)."""
    if name == "full":
        return x
    inv, equi = split_features(x, inv_dim, dim)
    return {"inv": inv, "equi": equi}[name]


def to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C): one token per spatial position."""
    return fmap.flatten(2).transpose(1, 2)
