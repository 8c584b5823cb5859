"""Methods: thin compositions of encoder features and losses, chosen by `method.name`."""

from __future__ import annotations

from rayeq.config import ExperimentConfig
from rayeq.methods.base import MissingTargetError, SSLMethod, StepOutput
from rayeq.methods.joint import JointEmbedding
from rayeq.methods.sie import SIE
from rayeq.methods.xrecon import XRecon


def build_method(cfg: ExperimentConfig) -> SSLMethod:
    name = cfg.method.name
    if name in ("vicreg", "simclr"):
        return JointEmbedding(cfg, ssl_loss=name)
    if name == "sie":
        return SIE(cfg)
    if name == "xrecon":
        return XRecon(cfg)
    raise ValueError(f"unknown method.name {name!r}")


__all__ = ["SIE", "JointEmbedding", "MissingTargetError", "SSLMethod", "StepOutput", "XRecon", "build_method"]
