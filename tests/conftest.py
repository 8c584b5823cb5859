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


@pytest.fixture(scope="session")
def tiny_synth3d(tmp_path_factory):
    """4 classes x 5 objects x 4 views at 32 px, rendered once per test session (about a second)."""
    from rayeq.data.synth3d import generate

    out = tmp_path_factory.mktemp("data") / "synth3d"
    generate(out, classes=4, objects_per_class=5, views=4, size=32, seed=0, workers=1, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray instance for the whole test session, in a private temp dir (never `ray stop`)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,  # `ray job submit` needs it; bound to loopback
            dashboard_host="127.0.0.1",
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch):
    """The built-in data set, made tiny (3 classes x 10 objects x 3 views) in a private cache."""
    import rayeq.quickstart as qs

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(qs, "DATA", dict(classes=3, objects_per_class=10, views=3, size=32, seed=0))
    return tmp_path
