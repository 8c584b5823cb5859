"""Optimisers (AdamW, Adam, LARS) and the warmup + cosine schedule, with the learning rate scaled
by the global batch (lr * global_batch / base_batch_size)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rayeq.config import ExperimentConfig


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as used by SimCLR/VICReg: SGD with momentum whose per-layer step is
    scaled by trust * ||w|| / ||g + wd w||; biases and norm parameters (1-D) get no weight decay and
    no adaptation."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, trust: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust=trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    q = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["trust"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def scaled_lr(cfg: ExperimentConfig) -> float:
    o = cfg.optim
    return o.lr * cfg.train.batch_size / o.base_batch_size if o.scale_lr else o.lr


def build_optimizer(params: list[nn.Parameter], cfg: ExperimentConfig) -> torch.optim.Optimizer:
    o, lr = cfg.optim, scaled_lr(cfg)
    fused = bool(params) and all(p.is_cuda for p in params)  # one kernel for all parameters on a GPU
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay, fused=fused)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay, fused=fused)
    if o.name == "lars":
        return LARS(params, lr=lr, weight_decay=o.weight_decay)
    raise ValueError(f"unknown optim.name {o.name!r}")


def build_scheduler(opt: torch.optim.Optimizer, cfg: ExperimentConfig, steps_per_epoch: int):
    """Linear warmup over optim.warmup_epochs, then cosine decay to 0 at train.epochs (per step)."""
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
