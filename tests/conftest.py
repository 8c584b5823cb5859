import os
import shutil
from pathlib import Path

import pytest
import torch

from rayeq.config import load_config


def pytest_configure(config):
    """The session's own cache directory (decoded copies, floors, built-in sets), set before Ray starts so its
    workers see it too; the user's ~/.cache/rayeq is never written by the tests."""
    import tempfile

    os.environ["RAYEQ_CACHE"] = tempfile.mkdtemp(prefix="rayeq-test-cache-")
    # token auth, said before anything imports Ray (as the CLI does): Ray reads it once, on import, and a test that
    # runs `rayeq.cli.main` in this process must not change it under the session's Ray instance
    os.environ.setdefault("RAY_AUTH_MODE", "token")


TIERS = ("default", "full", "all")


def pytest_addoption(parser):
    parser.addoption(
        "--tier",
        choices=TIERS,
        default="default",
        help="default: the core and one Ray path of each feature (the README's test command, at most 10 minutes on "
        "2 cores); full: the second tier alone (tests marked `full`: multi-node faults, job submission, studies end "
        "to end, the longer Ray runs); all: both. CI runs default, then full (docs/TESTING.md)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests that use the shared Ray instance are the Ray tests (`-m ray`); the rest is the fast core (`-m "not
    ray"`), which runs without Ray and is what mutation testing runs (docs/TESTING.md). `--tier` keeps the default
    tier's tests, the second tier's (`full`), or all; the others are deselected (and counted as such)."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    tier = config.getoption("--tier")
    if tier != "all":
        keep = [item for item in items if (item.get_closest_marker("full") is not None) == (tier == "full")]
        dropped = [item for item in items if item not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    # modules without Ray first (the session's Ray instance, once started, slows them by ~15 %), then those with
    # Ray, the multi-node cluster last; each module's tests stay together and in order
    ray_modules = {item.module.__name__ for item in items if item.get_closest_marker("ray")}
    items.sort(key=lambda item: (item.module.__name__ in ray_modules, item.module.__name__ == "test_multinode"))


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


def assert_same_state(got, want, where="state"):
    """Every tensor, number and key of a (nested) state dict equal."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for k in want:
            assert_same_state(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def rendered_set(tmp_path_factory, name: str, **settings) -> Path:
    """A small synth3d set, rendered once per test session. Under mutation testing (mutmut runs every mutant as
    a new session, from its mutants/ copy) it is rendered once for the whole run, in mutants/.test-data/: the
    sets are only read, and rendering them for each of ~2,400 mutants would cost more than the tests."""
    from rayeq.data.make.synth3d import generate

    def render(out: Path) -> None:
        generate(out, **settings, workers=1, log=lambda *a: None)

    if "MUTANT_UNDER_TEST" not in os.environ:
        out = tmp_path_factory.mktemp("data") / name
        render(out)
        return out
    out = Path.cwd() / ".test-data" / name
    if not (out / "meta.json").is_file():
        tmp = out.with_name(f"{name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        render(tmp)
        try:
            tmp.rename(out)  # atomic: another worker may have finished first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def tiny_synth3d(tmp_path_factory):
    """4 classes x 5 objects x 4 views at 32 px, rendered once per test session (about a second)."""
    return rendered_set(tmp_path_factory, "synth3d", classes=4, objects_per_class=5, views=4, size=32, seed=0)


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
    """The built-in data sets (standard and the quickstart's small one), made tiny (3 classes x 10 objects x 3
    views) in a private cache."""
    import rayeq.data.builtin as builtin

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    for name in ("DATA", "SMALL_DATA"):
        monkeypatch.setattr(builtin, name, dict(classes=3, objects_per_class=10, views=3, size=32, seed=0))
    monkeypatch.setattr(builtin, "_announced", set())
    return tmp_path


def indexed_aim_repo(repo_dir):
    """The Aim repo at `repo_dir`, indexed first: a closed run is only visible to the SDK once the repo is
    indexed (what `aim up` does on start)."""
    import subprocess
    import sys
    import warnings

    aim_cli = Path(sys.executable).with_name("aim")
    subprocess.run([str(aim_cli), "storage", "--repo", str(repo_dir), "reindex", "--yes"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from aim import Repo

    return Repo(str(repo_dir))
