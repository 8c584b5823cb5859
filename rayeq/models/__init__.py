"""Encoders, heads, cross-attention and decoder: plain PyTorch modules."""

from rayeq.models.backbone import ResNetBackbone, split_features, to_tokens
from rayeq.models.decoder import ConvDecoder
from rayeq.models.heads import HyperPredictor, Projector, mlp
from rayeq.models.xattn import CrossAttention

__all__ = [
    "ConvDecoder",
    "CrossAttention",
    "HyperPredictor",
    "Projector",
    "ResNetBackbone",
    "mlp",
    "split_features",
    "to_tokens",
]
