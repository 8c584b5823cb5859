"""Encoders, heads, cross-attention and decoder: plain PyTorch modules; `facts.py`: what the config knows of them.

The names below load their module on first use, so that `rayeq.models.facts` (which the config reads) imports no
torch."""

import importlib

_HOME = {
    "ConvDecoder": "decoder",
    "CrossAttention": "xattn",
    "HyperPredictor": "heads",
    "Projector": "heads",
    "ResNetBackbone": "backbone",
    "feature_part": "backbone",
    "linear_classifier": "heads",
    "mlp": "heads",
    "regression_mlp": "heads",
    "split_features": "backbone",
    "to_tokens": "backbone",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'rayeq.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rayeq.models.{_HOME[name]}"), name)
