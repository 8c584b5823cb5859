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
On image data (folders, photos) there is no pose: the heads regress, from the concatenated pair, the relative
parameters of the augmentations that made the two views (view 2's minus view 1's, each family on the scale of its
range at strength 1: `augment.relative_targets`), one MLP per family that is on (rotation angle, colour jitter's four
factors, blur sigma, shift), with `loss.<family>_weight`; the class term reads the set's labels as above. In the
transforms protocol view 1 is the untouched image, so these are the very parameters its probe regresses.
The heads are dropped at evaluation: `encode` gives the backbone's pooled features, as for any method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayeq.config import IMAGE_SOURCES, ExperimentConfig, supervised_families
from rayeq.data.feed.augment import FAMILIES, target_key
from rayeq.data.feed.targets import rotation_matrix_xyz, target_widths
from rayeq.methods.base import MissingTargetError, SSLMethod, StepOutput
from rayeq.models import mlp


class Supervised(SSLMethod):
    def __init__(self, cfg: ExperimentConfig, num_classes: int):
        super().__init__(cfg)
        c, h = self.feature_dim, cfg.method.supervised.hidden_dim
        self.images = cfg.data.source in IMAGE_SOURCES
        self.classifier = nn.Linear(c, num_classes)
        lc = cfg.loss  # the loss weights, fixed at construction
        self.class_weight = lc.class_weight
        if self.images:
            self.family_weights = supervised_families(cfg)
            self.family_heads = nn.ModuleDict({f: mlp(2 * c, h, len(FAMILIES[f])) for f in self.family_weights})
            self.required_keys = ("view1", "view2", *map(target_key, self.family_weights), "label")
            return
        widths = target_widths(cfg.data.color_target, three_d=True)
        self.rotation_head = mlp(2 * c, h, widths["rel_rotation"])
        self.color_head = mlp(2 * c, h, widths["rel_color"])
        self.pose_head = nn.Linear(c, 9)
        self.rotation_weight, self.color_weight, self.pose_weight = lc.rotation_weight, lc.color_weight, lc.pose_weight
        self.required_keys = ("view1", "view2", "rel_rotation", "rel_color", "label", "latent1", "latent2")

    def check_batch(self, batch) -> None:
        missing = [k for k in self.required_keys if k not in batch]
        if missing:
            what = (
                "image pairs with their relative augmentation parameters (the pair maker's aug_<family>) and labels"
                if self.images
                else "relative rotation, colour change and per-view latents, which only 3D sources "
                "(data.source=synth3d or 3diebench) give"
            )
            raise MissingTargetError(
                f"method 'supervised' trains on labels and needs batch keys {list(self.required_keys)}; missing "
                f"{missing}: it reads {what}; for data without them use a self-supervised method."
            )

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (_, r1), (_, r2) = out1, out2
        pair = torch.cat([r1, r2], dim=1)  # (B, 2C)
        both = torch.cat([r1, r2])  # (2B, C): each view is a sample for the per-view heads
        labels = torch.cat([batch["label"], batch["label"]]).long()
        classes = self.class_weight * F.cross_entropy(self.classifier(both).float(), labels)
        if self.images:
            losses = {
                f: self.family_weights[f] * F.mse_loss(head(pair).float(), batch[target_key(f)].float())
                for f, head in self.family_heads.items()
            }
            losses["class"] = classes
        else:
            rotation = F.mse_loss(self.rotation_head(pair).float(), batch["rel_rotation"].float())
            color = F.mse_loss(self.color_head(pair).float(), batch["rel_color"].float())
            euler = torch.cat([batch["latent1"][:, :3], batch["latent2"][:, :3]]).float()
            pose = F.mse_loss(self.pose_head(both).float(), rotation_matrix_xyz(euler).flatten(1))
            losses = {"rotation": self.rotation_weight * rotation, "color": self.color_weight * color,
                      "class": classes, "pose": self.pose_weight * pose}  # fmt: skip
        losses["total"] = sum(losses.values())
        return StepOutput(losses=losses, representations=(r1, r2))
