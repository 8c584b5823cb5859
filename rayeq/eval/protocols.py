"""Frozen-feature protocols (SIE/3DIEBench and the paper's), on cached features.

- linear: linear classifier, train split -> val split top-1, per representation part;
- knn: weighted k-NN top-1 on cosine similarity (k, temperature as in DINO: 20, 0.07);
- rotation: the two views' representations concatenated -> MLP 2d -> h -> h -> 4 -> relative
  rotation quaternion; R² both SIE's global-mean way and per dimension; SIE's sign and canonical;
- color: the same inputs -> (delta floor hue, delta light hue); R² both ways (and the cos/sin target);
- transforms: natural images; encode I and g(I) for rotation, colour jitter, blur and translation;
  an MLP predicts g's parameters; R² per transformation and their mean (the paper's protocol).

Pairs for the rotation and colour probes follow SIE's evaluation: every epoch draws a fresh pair of
distinct views for each train object, so the probe sees many pairs per object and cannot learn a
small fixed set by heart; it is scored on fixed seeded pairs of held-out objects, and on fixed pairs of
train objects (`r2_train`) so that a gap between the two shows memorisation.

Every score comes with what a mean predictor gets (`mean_predictor`): R² of predicting the train
targets' mean (SIE's global R² of that is not 0 for quaternions), and the top-1 of always answering
the most frequent train class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion
from rayeq.metrics import R2Accumulator
from rayeq.models import mlp

# pair targets computed from the two views' latents (3DIEBench order)
PAIR_TARGETS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "rel_rotation": lambda a, b: relative_rotation_quaternion(a[:, :3], b[:, :3]),
    "rel_rotation_canonical": lambda a, b: relative_rotation_quaternion(a[:, :3], b[:, :3], canonical=True),
    "rel_color": lambda a, b: relative_color(a, b, "sie"),
    "rel_color_cos_sin": lambda a, b: relative_color(a, b, "cos_sin"),
}


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
    standardise: bool = True  # eval.probe_inputs: standardised (rayeq) or raw (SIE)
    sampling: str = "rayeq"  # eval.sampling: rayeq or sie (one view / pair per object)

    @classmethod
    def from_config(cls, probe, fast=None, protocol: dict[str, str] | None = None) -> ProtocolSettings:
        """From an `eval.<protocol>` section; `fast` (an `eval.fast` section) caps epochs and width; `protocol`
        (`EvalConfig.protocol()`) sets the probe inputs and the sampling."""
        s = cls(probe.epochs, probe.lr, probe.batch_size, getattr(probe, "hidden_dim", 0), probe.seed, probe.min_steps)
        if protocol is not None:
            s.standardise, s.sampling = protocol["probe_inputs"] == "standardised", protocol["sampling"]
        if fast is not None:
            s.epochs = min(s.epochs, fast.max_epochs)
            s.hidden_dim = min(s.hidden_dim, fast.max_hidden_dim)
            s.min_steps = max(s.min_steps, fast.min_steps)
        return s


def _fit(model: nn.Module, epoch_data, n: int, loss_fn, s: ProtocolSettings) -> nn.Module:
    """Adam for s.epochs epochs (at least s.min_steps steps) of shuffled mini-batches of n samples;
    `epoch_data(epoch)` gives that epoch's (x, y), the same tensors or freshly drawn pairs."""
    g = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    model.train()
    steps_per_epoch = max(1, -(-n // s.batch_size))
    epochs = max(s.epochs, -(-s.min_steps // steps_per_epoch))
    for epoch in range(epochs):
        x, y = epoch_data(epoch)
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), s.batch_size):
            idx = perm[i : i + s.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


Z_CLIP = 5.0  # probe inputs: standardised on the train rows, then clipped to +-5 standard deviations
DEAD = 1e-3  # a feature whose train std is below this fraction of the median feature's is set to 0


def _standardise(train: torch.Tensor, *others: torch.Tensor):
    """Each feature to the train rows' mean 0 / std 1, clipped to +-Z_CLIP; a feature (nearly) constant on the train
    rows (std < DEAD x the median std) is 0 everywhere: the probe cannot learn what it means, and on held-out rows it
    would reach any size. An untrained encoder has many such features: measured on the photo set's held-out photos
    (ResNet-18, init seed 2), 11 of 1,024 pair features constant on the train rows and 76 beyond 10 train standard
    deviations (up to 4,342), which put the MLP probe's colour R² at -77."""
    mean, std = train.mean(0), train.std(0)
    live = std >= DEAD * std.median()
    return [torch.where(live, ((t - mean) / (std + 1e-6)).clamp(-Z_CLIP, Z_CLIP), 0.0) for t in (train, *others)]


def probe_inputs(s: ProtocolSettings, train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """The probe's inputs: standardised (`_standardise`) or, as SIE's scripts feed them, the raw features."""
    if s.standardise:
        return _standardise(train.float(), *(t.float() for t in others))
    return [train.float(), *(t.float() for t in others)]


def one_view_per_object(obj: torch.Tensor, g: np.random.Generator) -> np.ndarray:
    """The row of one random view of every object (rows are grouped by object): SIE's classification sample."""
    starts, counts = object_runs(obj)
    return starts + g.integers(0, counts)


def majority_top1(ytr: torch.Tensor, yva: torch.Tensor) -> float:
    """Top-1 of always answering the most frequent train class (chance, for balanced classes)."""
    return float((yva == torch.bincount(ytr).argmax()).float().mean())


def linear_probe(
    xtr, ytr, xva, yva, num_classes: int, s: ProtocolSettings, tr_obj=None, va_obj=None
) -> dict[str, float]:
    """A linear classifier on frozen features. rayeq's sampling: every row (view) a sample, every val row scored.
    SIE's (`s.sampling == "sie"`, 3D data: `tr_obj` / `va_obj` given): one random view per train object per epoch,
    scored on one random view per val object (drawn from the seed; SIE's last epoch draws afresh, unseeded)."""
    torch.manual_seed(s.seed)
    xtr, xva = probe_inputs(s, xtr, xva)
    data, n = (lambda _: (xtr, ytr)), len(xtr)
    if s.sampling == "sie" and tr_obj is not None and va_obj is not None:
        draw = np.random.default_rng(np.random.SeedSequence([s.seed, 29]))

        def data(_):
            rows = torch.from_numpy(one_view_per_object(tr_obj, draw))
            return xtr[rows], ytr[rows]

        n = len(object_runs(tr_obj)[0])
        pick = np.random.default_rng(np.random.SeedSequence([s.seed, 31]))
        rows = torch.from_numpy(one_view_per_object(va_obj, pick))
        xva, yva = xva[rows], yva[rows]
    model = _fit(nn.Linear(xtr.shape[1], num_classes), data, n, F.cross_entropy, s)
    with torch.no_grad():
        return {
            "top1": float((model(xva).argmax(1) == yva).float().mean()),
            "train_top1": float((model(xtr).argmax(1) == ytr).float().mean()),
            "scored": len(yva),
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


def _r2(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    acc = R2Accumulator(y.shape[1])
    acc.update(pred, y)
    return acc.compute()


def regression(xtr, ytr, xva, yva, s: ProtocolSettings) -> dict[str, float]:
    """MLP in -> h -> h -> out on fixed (x, y) (input standardised); R² on the val set, both
    definitions, and what predicting the train mean scores."""
    torch.manual_seed(s.seed)
    xtr, xva = probe_inputs(s, xtr, xva)
    ytr = ytr.float()
    model = _fit(mlp(xtr.shape[1], s.hidden_dim, ytr.shape[1]), lambda _: (xtr, ytr), len(xtr), F.mse_loss, s)
    with torch.no_grad():
        r2 = _r2(model(xva), yva.float())
    base = _r2(ytr.mean(0).expand_as(yva), yva.float())
    return {
        "r2": r2["global"],
        "r2_per_dim": r2["per_dim"],
        "mean": {"r2": base["global"], "r2_per_dim": base["per_dim"]},
    }


def object_runs(obj: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Start row and view count of each object (rows are grouped by object)."""
    o = obj.numpy()
    starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
    return starts, np.diff(np.r_[starts, len(o)])


def view_pairs(obj: torch.Tensor, per_object: int, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows (i, j) of `per_object` random pairs of distinct views of every object with two or more."""
    starts, counts = object_runs(obj)
    keep = counts >= 2
    starts, counts = np.repeat(starts[keep], per_object), np.repeat(counts[keep], per_object)
    a = g.integers(0, counts)
    b = (a + g.integers(1, counts)) % counts  # a different view of the same object
    return starts + a, starts + b


def pair_regression(
    xtr: torch.Tensor,
    tr_obj: torch.Tensor,
    tr_latent: torch.Tensor,
    xva: torch.Tensor,
    va_obj: torch.Tensor,
    va_latent: torch.Tensor,
    target: str,
    s: ProtocolSettings,
    pairs_per_object: int = 10,
    pair_seed: int = 0,
) -> dict:
    """SIE's rotation / colour protocol on per-view features: the MLP reads the concatenated pair
    (2d) and regresses `target` (a PAIR_TARGETS name). Training pairs: one fresh random pair per train
    object per epoch. Scored on `pairs_per_object` fixed pairs per held-out object (`r2`, `r2_per_dim`)
    and per train object (`r2_train`); under SIE's sampling on one pair per object (its last epoch's draw).
    Returns those, the mean predictor's scores under the same keys
    (`mean`), and the held-out pairs' predictions, targets and object rows (for per-class scores)."""
    torch.manual_seed(s.seed)
    to_target = PAIR_TARGETS[target]
    xtr, xva = probe_inputs(s, xtr, xva)
    if s.sampling == "sie":
        pairs_per_object = 1
    lat_tr, lat_va = tr_latent.numpy(), va_latent.numpy()

    def pairs(x, lat, i, j):
        return torch.cat([x[i], x[j]], dim=1), torch.from_numpy(to_target(lat[i], lat[j])).float()

    draw = np.random.default_rng(np.random.SeedSequence([s.seed, 17]))

    def epoch_pairs(_):
        i, j = view_pairs(tr_obj, 1, draw)
        return pairs(xtr, lat_tr, i, j)

    fixed = np.random.default_rng(np.random.SeedSequence([pair_seed, 23]))
    vi, vj = view_pairs(va_obj, pairs_per_object, fixed)
    ti, tj = view_pairs(tr_obj, pairs_per_object, fixed)
    x_va, y_va = pairs(xva, lat_va, vi, vj)
    x_tr, y_tr = pairs(xtr, lat_tr, ti, tj)
    n_objects = len(object_runs(tr_obj)[0])
    out_dim = y_va.shape[1]
    model = _fit(mlp(2 * xtr.shape[1], s.hidden_dim, out_dim), epoch_pairs, n_objects, F.mse_loss, s)
    with torch.no_grad():
        pred_va, pred_tr = model(x_va), model(x_tr)
    held_out, train = _r2(pred_va, y_va), _r2(pred_tr, y_tr)
    mean = y_tr.mean(0)  # the train targets' mean, a constant prediction
    base_va, base_tr = _r2(mean.expand_as(y_va), y_va), _r2(mean.expand_as(y_tr), y_tr)
    return {
        "r2": held_out["global"],
        "r2_per_dim": held_out["per_dim"],
        "r2_train": train["global"],
        "mean": {"r2": base_va["global"], "r2_per_dim": base_va["per_dim"], "r2_train": base_tr["global"]},
        "mean_value": mean,
        "pred": pred_va,
        "target": y_va,
        "rows": torch.from_numpy(vi),
    }
