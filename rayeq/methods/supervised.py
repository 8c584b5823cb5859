"""The supervised ceiling: the same backbone trained with the labels the probes ask for.

Not a self-supervised method: it reads the relative rotation, the colour change, the class and each
view's own pose from the batch, and is the reference an equivariant SSL method is compared against
(`rayeq eval` labels it "uses labels" everywhere). Heads on the pooled representation (B, C):
- rotation: MLP on the concatenated pair (B, 2C) -> relative quaternion (B, 4), as the eval probe;
- colour: the same input -> (delta floor hue, delta light hue) (B, 2), or its cos/sin (B, 4);
- class: a linear classifier on each view;
- pose: a linear map of each view to its own rotation matrix (B, 9). The relative rotation is a
  product of two absolute poses; regressing each view's pose directly makes pose features arise much
  sooner (measured in docs/DATA.md). `loss.pose_weight=0` trains on the probe targets alone.
The heads are dropped at evaluation: `encode` gives the backbone's pooled features, as for any method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayeq.config import ExperimentConfig
from rayeq.data.feed.targets import rotation_matrix_xyz, target_widths
from rayeq.methods.base import MissingTargetError, SSLMethod, StepOutput
from rayeq.models import mlp


class Supervised(SSLMethod):
    required_keys = ("view1", "view2", "rel_rotation", "rel_color", "label", "latent1", "latent2")

    def __init__(self, cfg: ExperimentConfig, num_classes: int):
        super().__init__(cfg)
        c, h = self.feature_dim, cfg.method.supervised.hidden_dim
        widths = target_widths(cfg.data.color_target, three_d=True)
        self.rotation_head = mlp(2 * c, h, widths["rel_rotation"])
        self.color_head = mlp(2 * c, h, widths["rel_color"])
        self.classifier = nn.Linear(c, num_classes)
        self.pose_head = nn.Linear(c, 9)
        lc = cfg.loss  # the loss weights, fixed at construction
        self.rotation_weight, self.color_weight = lc.rotation_weight, lc.color_weight
        self.class_weight, self.pose_weight = lc.class_weight, lc.pose_weight

    def check_batch(self, batch) -> None:
        missing = [k for k in self.required_keys if k not in batch]
        if missing:
            raise MissingTargetError(
                f"method 'supervised' trains on labels and needs batch keys {list(self.required_keys)}; missing "
                f"{missing}. Only 3D sources (data.source=synth3d or 3diebench) give relative rotation, colour "
                "change and per-view latents; for other data use a self-supervised method."
            )

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (_, r1), (_, r2) = out1, out2
        pair = torch.cat([r1, r2], dim=1)  # (B, 2C)
        both = torch.cat([r1, r2])  # (2B, C): each view is a sample for the per-view heads
        rotation = F.mse_loss(self.rotation_head(pair).float(), batch["rel_rotation"].float())
        color = F.mse_loss(self.color_head(pair).float(), batch["rel_color"].float())
        labels = torch.cat([batch["label"], batch["label"]]).long()
        classes = F.cross_entropy(self.classifier(both).float(), labels)
        euler = torch.cat([batch["latent1"][:, :3], batch["latent2"][:, :3]]).float()
        pose = F.mse_loss(self.pose_head(both).float(), rotation_matrix_xyz(euler).flatten(1))
        losses = {
            "rotation": self.rotation_weight * rotation,
            "color": self.color_weight * color,
            "class": self.class_weight * classes,
            "pose": self.pose_weight * pose,
        }
        losses["total"] = sum(losses.values())
        return StepOutput(losses=losses, representations=(r1, r2))
