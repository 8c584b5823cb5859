"""SimCLR's NT-Xent loss (Chen et al., ICML 2020) with negatives from every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayeq.losses.distributed import gather_with_grad, rank


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """z1, z2: (B, D) embeddings of the two views of B images.

    Each of the 2B local anchors has one positive (its other view) and 2N-2 negatives, N being the
    global batch when gathered across ranks. Returns the mean cross-entropy over local anchors.
    """
    b = z1.shape[0]
    z_local = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D): [view1; view2]
    if gather:
        g1, g2 = gather_with_grad(F.normalize(z1, dim=1)), gather_with_grad(F.normalize(z2, dim=1))
    else:
        g1, g2 = z_local[:b], z_local[b:]
    n = g1.shape[0]
    z_all = torch.cat([g1, g2])  # (2N, D): [all view1; all view2]
    logits = z_local @ z_all.T / temperature  # (2B, 2N)
    offset = rank() * b if n != b else 0
    idx = torch.arange(b, device=z1.device) + offset  # global index of each local sample
    self_cols = torch.cat([idx, idx + n])  # an anchor's own column
    pos_cols = torch.cat([idx + n, idx])  # its other view
    rows = torch.arange(2 * b, device=z1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_cols] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, pos_cols)
