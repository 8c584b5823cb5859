"""Cross-rank gathering that keeps gradients, and a no-op in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) from every rank along dim 0 -> (world*B, ...).

    The backward pass sums the incoming gradients over ranks and hands each rank its slice, so
    a loss that every rank computes on the global batch gets the right gradient under DDP's
    gradient averaging.
    """
    if world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x.contiguous()), dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward all-reduces the gradients of every gathered copy and returns this
    rank's slice (VICReg's FullGatherLayer). Needs the same shape on every rank (drop_last)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]
