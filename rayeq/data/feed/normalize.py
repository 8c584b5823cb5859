"""Image normalisation: the per-channel statistics a data set stores, and the one mapping between
stored uint8 images and the normalised float tensors encoders see (and back, for pictures)."""

from __future__ import annotations

from typing import Any

import torch

# facebookresearch/SIE's fixed normalisation (main.py and its eval_*.py scripts): 3DIEBench's per-channel mean / std
SIE_MEAN, SIE_STD = [0.5016, 0.5037, 0.5060], [0.1030, 0.0999, 0.0969]


def norm_stats(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per-channel mean/std stored with the data (computed from the generated or converted images)."""
    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, when the data has none
    return list(mean), [max(s, 1e-3) for s in std]


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, 3, H, W) uint8 (or float in 0..255) -> normalised float on the images' device."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def denormalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised float images -> (B, 3, H, W) uint8 on the CPU (for pictures)."""
    x = x.detach().float().cpu()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x * s + m).clamp(0, 1) * 255).to(torch.uint8)
