"""Online probes on detached features, trained alongside the encoder as SIE and solo-learn do: they
measure the representation during training without sending gradients into it.

Each head starts with a non-affine BatchNorm, so it sees standardised features whatever their scale.
- linear classifiers on the full pooled representation and on its invariant part (top-1);
- for 3D data, MLPs (2C -> h -> h -> out) on the two views' concatenated representations that
  regress the relative rotation quaternion and the colour change (R², both definitions); for image data the
  same MLPs regress the relative parameters of each augmentation family the pairs vary (aug_<family>_r2).

`FloorProbes` trains the same heads on a frozen copy of the encoder as it was initialised: the floor
(`*/floor/*` metrics) that every online probe number is read against.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rayeq.metrics import AccuracyAccumulator, R2Accumulator
from rayeq.models import linear_classifier, regression_mlp, split_features


class OnlineProbes(nn.Module):
    def __init__(self, feature_dim: int, inv_dim: int, num_classes: int, regress: dict[str, int], hidden: int):
        super().__init__()
        self.inv_dim = inv_dim
        self.classifier = linear_classifier(feature_dim, num_classes)
        self.classifier_inv = linear_classifier(inv_dim, num_classes)
        self.regressors = nn.ModuleDict({k: regression_mlp(2 * feature_dim, hidden, d) for k, d in regress.items()})

    def forward(self, r1: torch.Tensor, r2: torch.Tensor, batch: dict[str, torch.Tensor]):
        """r1, r2: (B, C) representations (detached here). Returns (loss, outputs for the metrics)."""
        r1, r2 = r1.detach().float(), r2.detach().float()
        both = torch.cat([r1, r2])  # each view is a sample for classification
        labels = torch.cat([batch["label"], batch["label"]])
        logits = self.classifier(both)
        logits_inv = self.classifier_inv(split_features(both, self.inv_dim)[0])
        loss = F.cross_entropy(logits, labels) + F.cross_entropy(logits_inv, labels)
        outputs = {"logits": logits, "logits_inv": logits_inv, "labels": labels}
        pair = torch.cat([r1, r2], dim=1)  # (B, 2C)
        for key, head in self.regressors.items():
            pred = head(pair)
            loss = loss + F.mse_loss(pred, batch[key].float())
            outputs[key] = (pred, batch[key].float())
        return loss, outputs


class FloorProbes(nn.Module):
    """The online probes on a frozen, untrained copy of the backbone (taken before any step)."""

    def __init__(self, backbone: nn.Module, probes: OnlineProbes):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).eval().requires_grad_(False)
        self.probes = probes

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics stay those of the initialisation
        return self

    def forward(self, batch: dict[str, torch.Tensor]):
        with torch.no_grad():
            _, r1 = self.backbone(batch["view1"])
            _, r2 = self.backbone(batch["view2"])
        return self.probes(r1, r2, batch)


class ProbeMetrics:
    """Epoch accumulators for the probes' outputs; exact across ranks after all_reduce()."""

    def __init__(self, regress: dict[str, int], device):
        self.top1, self.top1_inv = AccuracyAccumulator(device), AccuracyAccumulator(device)
        self.r2 = {k: R2Accumulator(d, device) for k, d in regress.items()}

    def update(self, outputs) -> None:
        self.top1.update(outputs["logits"], outputs["labels"])
        self.top1_inv.update(outputs["logits_inv"], outputs["labels"])
        for k, acc in self.r2.items():
            acc.update(*outputs[k])

    def compute(self, prefix: str) -> dict[str, float]:
        for acc in (self.top1, self.top1_inv, *self.r2.values()):
            acc.all_reduce()
        out = {f"{prefix}/{TOP1}": self.top1.compute(), f"{prefix}/{TOP1_INV}": self.top1_inv.compute()}
        for k, acc in self.r2.items():
            r2 = acc.compute()
            name = r2_name(k)
            out[f"{prefix}/{name}"] = r2["global"]  # SIE's definition
            out[f"{prefix}/{name}{PER_DIM}"] = r2["per_dim"]
            out[f"{prefix}/{name}_mean_predictor"] = r2["global_mean_predictor"]
        return out


# the online probes' metric names (under `train/`, `val/`, and `.../floor/` for the untrained encoder's probes)
TOP1, TOP1_INV = "top1", "top1_inv"  # the linear probe on all channels, on the invariant ones
PER_DIM = "_per_dim"  # R² per target dimension, then averaged (a mean predictor scores 0)
R2_NAMES = {"rel_rotation": "rot_r2", "rel_color": "color_r2"}


def r2_name(target: str) -> str:
    """A regression target's metric name: rot_r2 and color_r2 (3D), aug_<family>_r2 (image sets)."""
    return R2_NAMES.get(target, f"{target}_r2")


def probe_names(targets) -> list[str]:
    """The online probes' metric names for these regression targets: top-1 (all, invariant), then each target's R²
    (SIE's) and per-dimension R²."""
    return [TOP1, TOP1_INV] + [f"{r2_name(t)}{s}" for t in targets for s in ("", PER_DIM)]


def reported_metric_names(three_d: bool, has_val: bool, floor: bool = False, regress: dict | None = None) -> list[str]:
    """The probe and throughput metrics every training report holds (what sweeps may tune against);
    with `floor`, also the untrained encoder's (`train/floor/top1`, ...). `regress`: the run's regression targets
    (`RunInfo.regress`; by default a 3D set's)."""
    targets = regress if regress is not None else dict.fromkeys(R2_NAMES) if three_d else {}
    probe = probe_names(targets)
    prefixes = ["train", "val"] if has_val else ["train"]
    if floor:
        prefixes += [f"{p}/floor" for p in prefixes]
    return [f"{p}/{m}" for p in prefixes for m in probe] + ["images_per_sec", "epoch_images_per_sec"]
