"""What every method shares: the encoder, the batch contract and the step output."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rayeq.config import ExperimentConfig
from rayeq.models import ResNetBackbone


class MissingTargetError(KeyError):
    """A method was given a batch without the transformation targets it needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class StepOutput:
    """losses: weighted loss terms that sum to losses["total"];
    representations: pooled (B, C) features of view 1 and view 2 (for online probes);
    reconstruction / recon_target: (B, 3, r, r) decoded and target images when the method decodes;
    diagnostics: detached unweighted terms (0-d tensors: no host sync until `metrics` reads them)."""

    losses: dict[str, torch.Tensor]
    representations: tuple[torch.Tensor, torch.Tensor]
    reconstruction: torch.Tensor | None = None
    recon_target: torch.Tensor | None = None
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return self.losses["total"]

    @property
    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.diagnostics.items()}


class SSLMethod(nn.Module):
    """A batch of paired views in, named loss terms out.

    A batch is a dict with "view1" and "view2": (B, 3, H, W) float, normalised; 3D sources add
    "rel_rotation" (B, 4) and "rel_color" (B, 2), and labelled sources "label" (B,).
    """

    required_keys: tuple[str, ...] = ("view1", "view2")

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        self.backbone = ResNetBackbone(m.backbone, m.stem, m.zero_init_residual)
        self.feature_dim = self.backbone.out_dim
        self.inv_dim = m.inv_dim

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen-style evaluation: pooled representation (B, C); inv part = [:, :inv_dim]."""
        return self.backbone(images)[1]

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.required_keys if k not in batch]
        if missing:
            raise MissingTargetError(
                f"method {self.cfg.method.name!r} needs batch keys {list(self.required_keys)}; "
                f"missing {missing} (batch has {sorted(batch)})"
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        self.check_batch(batch)
        f1, r1 = self.backbone(batch["view1"])  # (B, C, h, w), (B, C)
        f2, r2 = self.backbone(batch["view2"])
        return self.loss_terms(batch, (f1, r1), (f2, r2))

    validation_term_names: tuple[str, ...] = ()  # what validation_terms returns

    def validation_terms(self, batch, out1, out2) -> dict[str, torch.Tensor]:
        """Method-specific checks on held-out pairs, reported as val/<name> (xrecon's cross-view check)."""
        return {}

    def loss_terms(self, batch, out1, out2) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError
