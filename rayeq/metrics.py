"""R² and accuracy, computed from sufficient statistics so that they add up exactly across batches
and ranks (sum, sum of squares and residuals are additive; the mean is not).

Two R² definitions (report both and say which):
- "global" (SIE's `r2_score`): one mean over all target entries,
  R² = 1 - sum (y - ŷ)² / sum (y - mean(y))², sums over samples and dimensions;
- "per_dim" (sklearn's default, uniform average): R² computed per target dimension, then averaged.
"""

from __future__ import annotations

import torch


def _sum_across_ranks(*tensors: torch.Tensor) -> None:
    from rayeq.losses.distributed import world_size

    if world_size() > 1:
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)


class R2Accumulator:
    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        # stats rows: sum y, sum y², sum (y - ŷ)², per dimension; plus the count
        self.stats = torch.zeros(3, dim, dtype=torch.float64, device=device)
        self.n = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        y, p = target.double(), pred.double()
        self.stats[0] += y.sum(0)
        self.stats[1] += (y * y).sum(0)
        self.stats[2] += ((y - p) ** 2).sum(0)
        self.n += y.shape[0]

    def all_reduce(self) -> None:
        _sum_across_ranks(self.stats, self.n)

    def compute(self) -> dict[str, float]:
        n = self.n.clamp(min=1)
        s, ss, res = self.stats
        tot_dim = ss - s * s / n  # per-dimension sum of squares around the dimension's mean
        grand_mean = s.sum() / (n * s.numel())
        tot_global = ss.sum() - 2 * grand_mean * s.sum() + n * s.numel() * grand_mean**2
        per_dim = 1 - res / tot_dim.clamp(min=1e-12)
        return {
            "global": float(1 - res.sum() / tot_global.clamp(min=1e-12)),
            "per_dim": float(per_dim.mean()),
            # what predicting each dimension's mean scores under the global definition (0 per dimension)
            "global_mean_predictor": float(1 - tot_dim.sum() / tot_global.clamp(min=1e-12)),
        }


def r2_global(pred: torch.Tensor, target: torch.Tensor) -> float:
    acc = R2Accumulator(target.shape[1])
    acc.update(pred, target)
    return acc.compute()["global"]


def r2_per_dim(pred: torch.Tensor, target: torch.Tensor) -> float:
    acc = R2Accumulator(target.shape[1])
    acc.update(pred, target)
    return acc.compute()["per_dim"]


class AccuracyAccumulator:
    def __init__(self, device: torch.device | str = "cpu"):
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.n = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (logits.argmax(1) == labels).sum()
        self.n += labels.numel()

    def all_reduce(self) -> None:
        _sum_across_ranks(self.correct, self.n)

    def compute(self) -> float:
        return float(self.correct / self.n.clamp(min=1))
