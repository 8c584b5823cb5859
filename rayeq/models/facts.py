"""What the config must know of the models before any is built (to refuse a bad combination early): the width of each
backbone's features, each stem's total stride, and the width of a cross-attention token source. Plain Python: the
config imports this without importing torch."""

from __future__ import annotations

# Width of the pooled representation (and of the last feature map) of each backbone.
BACKBONE_DIMS = {"resnet18": 512, "resnet50": 2048}
# Total down-sampling of each stem option (stem stride × the strides of layers 2-4).
STEM_STRIDES = {"imagenet": 32, "compact": 16, "small": 8}


def token_width(source: str, model) -> int:
    """Channels of a cross-attention source (`view1.inv`, `view2.equi_pooled`, ...) under `model` (a ModelConfig)."""
    part = source.split(".")[1].removesuffix("_pooled")
    return {"inv": model.inv_dim, "equi": model.equi_dim, "full": model.feature_dim}[part]
