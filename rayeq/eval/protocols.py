"""Frozen-feature protocols (SIE/3DIEBench and the paper's), on cached features.

- linear: linear classifier, train split -> val split top-1, per representation part;
- knn: weighted k-NN top-1 on cosine similarity (k, temperature as in DINO: 20, 0.07);
- rotation: the two views' representations concatenated -> MLP 2d -> h -> h -> 4 -> relative
  rotation quaternion; R² both SIE's global-mean way and per dimension; SIE's sign and canonical;
- color: the same inputs -> (delta floor hue, delta light hue); R² both ways (and the cos/sin target);
- transforms: natural images; encode I and g(I) for rotation, colour jitter, blur and translation;
  an MLP predicts g's parameters; R² per transformation and their mean (the paper's protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayeq.eval.metrics import R2Accumulator
from rayeq.train.probes import regression_mlp


@dataclass
class ProtocolSettings:
    """One probe's optimisation. SIE's 300 epochs are ~49k steps on 3DIEBench but a few hundred on a
    small set: with min_steps a probe runs at least that many optimiser steps whatever the data size."""

    epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 256
    hidden_dim: int = 1024
    seed: int = 0
    min_steps: int = 0

    @classmethod
    def from_config(cls, probe, fast=None) -> ProtocolSettings:
        """From an `eval.<protocol>` section; `fast` (an `eval.fast` section) caps epochs and width."""
        s = cls(probe.epochs, probe.lr, probe.batch_size, getattr(probe, "hidden_dim", 0), probe.seed,
                probe.min_steps)  # fmt: skip
        if fast is not None:
            s.epochs = min(s.epochs, fast.max_epochs)
            s.hidden_dim = min(s.hidden_dim, fast.max_hidden_dim)
            s.min_steps = max(s.min_steps, fast.min_steps)
        return s


def part(r: torch.Tensor, name: str, inv_dim: int) -> torch.Tensor:
    return {"full": r, "inv": r[:, :inv_dim], "equi": r[:, inv_dim:]}[name]


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, s: ProtocolSettings) -> nn.Module:
    """Adam on (x, y) for s.epochs epochs of shuffled mini-batches (SIE: Adam 1e-3, batch 256)."""
    g = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    model.train()
    steps_per_epoch = max(1, -(-len(x) // s.batch_size))
    epochs = max(s.epochs, -(-s.min_steps // steps_per_epoch))
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), s.batch_size):
            idx = perm[i : i + s.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _standardise(train: torch.Tensor, *others: torch.Tensor):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(t - mean) / std for t in (train, *others)]


def linear_probe(xtr, ytr, xva, yva, num_classes: int, s: ProtocolSettings) -> dict[str, float]:
    torch.manual_seed(s.seed)
    xtr, xva = _standardise(xtr.float(), xva.float())
    model = _fit(nn.Linear(xtr.shape[1], num_classes), xtr, ytr, F.cross_entropy, s)
    with torch.no_grad():
        return {
            "top1": float((model(xva).argmax(1) == yva).float().mean()),
            "train_top1": float((model(xtr).argmax(1) == ytr).float().mean()),
        }


@torch.no_grad()
def knn_top1(xtr, ytr, xva, yva, num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN (DINO's): cosine similarity, top-k neighbours vote with exp(sim / T)."""
    xtr, xva = F.normalize(xtr.float(), dim=1), F.normalize(xva.float(), dim=1)
    correct = 0
    for i in range(0, len(xva), 1024):
        sim = xva[i : i + 1024] @ xtr.T  # (b, N)
        top, idx = sim.topk(min(k, len(xtr)), dim=1)
        votes = torch.zeros(len(top), num_classes).scatter_add_(1, ytr[idx], (top / temperature).exp())
        correct += int((votes.argmax(1) == yva[i : i + 1024]).sum())
    return correct / len(xva)


def regression(xtr, ytr, xva, yva, s: ProtocolSettings) -> dict[str, float]:
    """MLP in -> h -> h -> out (input standardised); R² on the val set, both definitions."""
    torch.manual_seed(s.seed)
    xtr, xva = _standardise(xtr.float(), xva.float())
    model = _fit(regression_mlp(xtr.shape[1], s.hidden_dim, ytr.shape[1])[1:], xtr, ytr.float(), F.mse_loss, s)
    acc, base = R2Accumulator(ytr.shape[1]), R2Accumulator(ytr.shape[1])
    with torch.no_grad():
        acc.update(model(xva), yva.float())
        # what predicting each target dimension's train mean scores: 0 per dimension, but not 0 for
        # SIE's global-mean R² when dimensions have different means (quaternions: w)
        base.update(ytr.float().mean(0).expand_as(yva), yva.float())
    r2, b = acc.compute(), base.compute()
    return {"r2": r2["global"], "r2_per_dim": r2["per_dim"], "r2_mean_baseline": b["global"]}
