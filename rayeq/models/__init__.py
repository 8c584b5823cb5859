"""Encoders, heads, cross-attention and decoder: plain PyTorch modules."""

from rayeq.models.backbone import ResNetBackbone, feature_part, split_features, to_tokens
from rayeq.models.decoder import ConvDecoder
from rayeq.models.heads import HyperPredictor, Projector, linear_classifier, mlp, regression_mlp
from rayeq.models.xattn import CrossAttention

__all__ = [
    "ConvDecoder",
    "CrossAttention",
    "HyperPredictor",
    "Projector",
    "ResNetBackbone",
    "feature_part",
    "linear_classifier",
    "mlp",
    "regression_mlp",
    "split_features",
    "to_tokens",
]
