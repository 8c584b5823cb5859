"""Joint-embedding methods: VICReg and SimCLR on the full representation, and the same losses on
the invariant part as the base of xrecon."""

from __future__ import annotations

import torch

from rayeq.config import ExperimentConfig
from rayeq.losses import nt_xent_loss, vicreg_loss
from rayeq.methods.base import SSLMethod, StepOutput
from rayeq.models import Projector, feature_part


class JointEmbedding(SSLMethod):
    """`ssl_part` picks the features the SSL loss sees: "full" (VICReg, SimCLR) or "inv" (xrecon)."""

    ssl_part = "full"

    def __init__(self, cfg: ExperimentConfig, ssl_loss: str):
        super().__init__(cfg)
        self.ssl_loss = ssl_loss
        in_dim = self.feature_dim if self.ssl_part == "full" else self.inv_dim
        self.projector = Projector(in_dim, cfg.model.projector)
        lc = cfg.loss  # the loss weights, fixed at construction
        self.sim_weight, self.std_weight, self.cov_weight = lc.sim_weight, lc.std_weight, lc.cov_weight
        self.temperature = lc.temperature

    def ssl_features(self, r: torch.Tensor) -> torch.Tensor:
        return feature_part(r, self.ssl_part, self.inv_dim)

    def ssl_terms(self, r1: torch.Tensor, r2: torch.Tensor) -> dict[str, torch.Tensor]:
        z1 = self.projector(self.ssl_features(r1))  # (B, D)
        z2 = self.projector(self.ssl_features(r2))
        if self.ssl_loss == "vicreg":
            return vicreg_loss(z1, z2, self.sim_weight, self.std_weight, self.cov_weight)
        if self.ssl_loss == "simclr":
            nt = nt_xent_loss(z1, z2, self.temperature)
            return {"nt_xent": nt, "total": nt}
        raise ValueError(f"unknown SSL loss {self.ssl_loss!r}")

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (_, r1), (_, r2) = out1, out2
        return StepOutput(losses=self.ssl_terms(r1, r2), representations=(r1, r2))
