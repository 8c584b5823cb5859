"""VICReg terms (Bardes, Ponce, LeCun, ICLR 2022), as pure functions.

Variance and covariance need the whole batch: under DDP the embeddings are gathered across
ranks with gradients; the invariance term is a per-sample mean and stays local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayeq.losses.distributed import gather_with_grad


def invariance_term(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(z1, z2)


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on the per-dimension std of z (N, D), pushed towards at least 1."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances of z (N, D), divided by D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)  # (D, D)
    off = cov - torch.diag(torch.diag(cov))
    return off.pow(2).sum() / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    std_weight: float = 25.0,
    cov_weight: float = 1.0,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """z1, z2: (B, D) embeddings of the two views. Returns the weighted terms and their sum."""
    sim = invariance_term(z1, z2)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    std = variance_term(z1) / 2 + variance_term(z2) / 2
    cov = covariance_term(z1) + covariance_term(z2)
    terms = {"sim": sim_weight * sim, "std": std_weight * std, "cov": cov_weight * cov}
    terms["total"] = terms["sim"] + terms["std"] + terms["cov"]
    return terms
