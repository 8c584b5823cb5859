"""SIE (Garrido, Najman, LeCun, ICML 2023), following facebookresearch/SIE's `SIE` model.

The representation is split into invariant and equivariant parts, each with its own projector
(widths scaled by the split ratio). The invariant embeddings of the two views are pulled
together; the equivariant embedding of view 2 is predicted from view 1's by W(q) z, where a
linear hypernetwork maps the relative rotation quaternion q to W. Variance and covariance
terms act on the concatenated embeddings, plus a variance term on the predictions.
"""

from __future__ import annotations

import torch

from rayeq.config import ExperimentConfig
from rayeq.losses import covariance_term, gather_with_grad, invariance_term, variance_term
from rayeq.methods.base import MissingTargetError, SSLMethod, StepOutput
from rayeq.models import HyperPredictor, Projector, split_features


def _scaled(widths: list[int], ratio: float) -> list[int]:
    return [max(1, round(w * ratio)) for w in widths]


class SIE(SSLMethod):
    required_keys = ("view1", "view2", "rel_rotation")

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        equi_dim = self.feature_dim - self.inv_dim
        widths = cfg.model.projector
        self.projector_inv = Projector(self.inv_dim, _scaled(widths, self.inv_dim / self.feature_dim))
        self.projector_equi = Projector(equi_dim, _scaled(widths, equi_dim / self.feature_dim))
        self.predictor = HyperPredictor(
            self.projector_equi.out_dim, param_dim=4, kind=cfg.method.sie.hypernetwork, bias=cfg.method.sie.bias
        )
        lc = cfg.loss  # the loss weights, fixed at construction
        self.sim_weight, self.equi_weight = lc.sim_weight, lc.equi_weight
        self.std_weight, self.cov_weight = lc.std_weight, lc.cov_weight

    def check_batch(self, batch) -> None:
        if "rel_rotation" not in batch:
            raise MissingTargetError(
                "method 'sie' needs per-pair rotation targets: the batch has no 'rel_rotation' (B, 4) "
                "quaternion. Use a 3D source (data.source=synth3d or 3diebench), or another method "
                "(xrecon needs no transformation parameters)."
            )
        super().check_batch(batch)

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (_, r1), (_, r2) = out1, out2
        (i1, e1), (i2, e2) = split_features(r1, self.inv_dim), split_features(r2, self.inv_dim)
        inv1, inv2 = self.projector_inv(i1), self.projector_inv(i2)
        equi1, equi2 = self.projector_equi(e1), self.projector_equi(e2)
        q = batch["rel_rotation"].to(equi1.dtype)  # (B, 4)
        pred2 = self.predictor(equi1, q)  # (B, d_equi): predicted equivariant embedding of view 2

        sim_inv = invariance_term(inv1, inv2)
        sim_equi = invariance_term(pred2, equi2)
        z1 = gather_with_grad(torch.cat([inv1, equi1], dim=1))
        z2 = gather_with_grad(torch.cat([inv2, equi2], dim=1))
        std = variance_term(z1) / 2 + variance_term(z2) / 2
        pred_std = variance_term(gather_with_grad(pred2)) / 2
        cov = covariance_term(z1) + covariance_term(z2)
        losses = {
            "sim": self.sim_weight * sim_inv,
            "equi": self.equi_weight * self.sim_weight * sim_equi,
            "std": self.std_weight * std,
            "pred_std": self.std_weight * pred_std,
            "cov": self.cov_weight * cov,
        }
        losses["total"] = sum(losses.values())
        diagnostics = {"equi_mse": sim_equi.detach(), "inv_mse": sim_inv.detach()}
        return StepOutput(losses=losses, representations=(r1, r2), diagnostics=diagnostics)
