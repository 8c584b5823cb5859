import pytest
import torch

from rayeq.config import load_config

FAST = ["model.stem=compact", "model.projector=[128,128]", "method.decoder.width=64"]


@pytest.fixture
def fast_cfg():
    """A small but complete config: compact stem and narrow heads so CPU tests stay quick."""

    def make(*overrides: str, size: int = 32):
        return load_config(None, [*FAST, f"data.image_size={size}", *overrides])

    return make


def smooth_pairs(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth random images (learnable to reconstruct) and random unit quaternions."""
    g = torch.Generator().manual_seed(seed)

    def img():
        coarse = torch.randn(batch, 3, 4, 4, generator=g)
        return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    q = torch.nn.functional.normalize(torch.randn(batch, 4, generator=g), dim=1)
    return {"view1": img(), "view2": img(), "rel_rotation": q}
