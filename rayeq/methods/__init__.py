"""Methods: thin compositions of encoder features and losses, chosen by `method.name`."""

from __future__ import annotations

from rayeq.config import RECON_METHODS, ExperimentConfig
from rayeq.methods.base import MissingTargetError, SSLMethod, StepOutput
from rayeq.methods.joint import JointEmbedding
from rayeq.methods.sie import SIE
from rayeq.methods.supervised import Supervised
from rayeq.methods.xrecon import XRecon

# What each method reads besides the images (shown wherever its results appear). "supervised" is the
# ceiling, not a self-supervised method.
USES_LABELS = {"sie": "uses rotation labels", "supervised": "uses labels: transformation targets, classes"}


def method_label(name: str) -> str:
    """`sie [uses rotation labels]`, `vicreg`: a method's name with the labels it trains on."""
    return f"{name} [{USES_LABELS[name]}]" if name in USES_LABELS else name


def build_method(cfg: ExperimentConfig, num_classes: int | None = None) -> SSLMethod:
    """`num_classes` is needed by `supervised` (its classifier); the other methods ignore it."""
    name = cfg.method.name
    if name in ("vicreg", "simclr"):
        return JointEmbedding(cfg, ssl_loss=name)
    if name == "sie":
        return SIE(cfg)
    if name in RECON_METHODS:  # between: xrecon with design B's target (config.MethodConfig.between_ts)
        return XRecon(cfg)
    if name == "supervised":
        if not num_classes:
            raise ValueError("method.name='supervised' needs the number of classes of its data set (num_classes)")
        return Supervised(cfg, num_classes)
    raise ValueError(f"unknown method.name {name!r}")


__all__ = [
    "SIE",
    "USES_LABELS",
    "JointEmbedding",
    "MissingTargetError",
    "SSLMethod",
    "StepOutput",
    "Supervised",
    "XRecon",
    "build_method",
    "method_label",
]
