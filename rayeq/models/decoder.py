"""A small upsampling conv decoder from a token map to an image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ConvDecoder(nn.Module):
    """(B, in_dim, h, w) -> (B, 3, out_size, out_size).

    1x1 conv to `width` channels, then one stage per factor of two between h and out_size; each stage
    upsamples x2 (bilinear) and applies `depth` 3x3 conv + BN + ReLU blocks, halving the width (down to
    32). A final 3x3 conv gives RGB; a last resize covers sizes that are not h * 2^k.
    """

    def __init__(self, in_dim: int, in_size: int, out_size: int, width: int = 256, depth: int = 1):
        super().__init__()
        self.out_size = out_size
        stages = max(0, math.ceil(math.log2(out_size / in_size))) if out_size > in_size else 0
        layers: list[nn.Module] = [nn.Conv2d(in_dim, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(stages):
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            nxt = max(32, ch // 2)
            for j in range(depth):
                layers += [
                    nn.Conv2d(ch if j == 0 else nxt, nxt, 3, padding=1, bias=False),
                    nn.BatchNorm2d(nxt),
                    nn.ReLU(inplace=True),
                ]
            ch = nxt
        layers.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if y.shape[-1] != self.out_size or y.shape[-2] != self.out_size:
            y = F.interpolate(y, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return y
