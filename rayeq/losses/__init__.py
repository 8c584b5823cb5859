"""Losses as pure functions of tensors; correct under DDP, unchanged in one process."""

from rayeq.losses.distributed import gather_with_grad
from rayeq.losses.recon import reconstruction_loss, resize_target
from rayeq.losses.simclr import nt_xent_loss
from rayeq.losses.vicreg import covariance_term, invariance_term, variance_term, vicreg_loss

__all__ = [
    "covariance_term",
    "gather_with_grad",
    "invariance_term",
    "nt_xent_loss",
    "reconstruction_loss",
    "resize_target",
    "variance_term",
    "vicreg_loss",
]
