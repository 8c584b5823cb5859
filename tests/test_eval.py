"""The protocols measure what they claim: an oracle encoder (features = a known function of the
latents) gets R² near 1, constant or random encoders get R² <= ~0, separable features 100 %."""

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from rayeq.config import ConfigError, load_config
from rayeq.data.pipeline import norm_stats
from rayeq.data.schema import DataError, read_meta
from rayeq.eval.features import extract_features, extract_features_ray, load_checkpoint
from rayeq.eval.protocols import ProtocolSettings, knn_top1, linear_probe, regression
from rayeq.eval.run import evaluate, markdown_table, write_outputs
from rayeq.methods import build_method

# per-protocol settings, small enough for a test (eval.fast still applies its caps and step floor)
PROBE_FAST = ["eval.linear.epochs=5", "eval.rotation.epochs=5", "eval.color.epochs=4", "eval.transforms.epochs=5",
              "eval.rotation.hidden_dim=64", "eval.color.hidden_dim=32", "eval.transforms.hidden_dim=64",
              "eval.fast.min_steps=300"]  # fmt: skip
FAST = ProtocolSettings(epochs=60, lr=1e-3, batch_size=64, hidden_dim=256, min_steps=1500)


@pytest.fixture(scope="module")
def reg_data(tmp_path_factory):
    from rayeq.data.synth3d import generate

    out = tmp_path_factory.mktemp("evaldata") / "set"
    generate(out, classes=3, objects_per_class=40, views=6, size=16, seed=2, workers=1, log=lambda *a: None)
    return out


def oracle(images, batch):
    """Per view: its rotation matrix and the cos/sin and raw value of both hues."""
    lat = batch["latent"].numpy()
    rot = Rotation.from_euler("xyz", lat[:, :3]).as_matrix().reshape(-1, 9)
    hues = lat[:, [3, 6]]
    f = np.concatenate([rot, np.cos(2 * np.pi * hues), np.sin(2 * np.pi * hues), hues], axis=1)
    return torch.tensor(f, dtype=torch.float32)


def constant(images, batch):
    return torch.ones(len(images), 16)


def noise(images, batch):
    return torch.randn(len(images), 16)


def _feats(encoder, data, split):
    mean, std = norm_stats(read_meta(data))
    return extract_features(encoder, data, split, 16, mean, std, pairs_per_object=8, seed=0)


def _pairs(f):
    return torch.cat([f.r1, f.r2], dim=1)


def test_oracle_encoder_gets_r2_near_one(reg_data):
    tr, va = _feats(oracle, reg_data, "train"), _feats(oracle, reg_data, "val")
    assert len(tr.label) == 32 * 3 * 8 and tr.r1.shape == (768, 15)
    color = regression(_pairs(tr), tr.targets["rel_color"], _pairs(va), va.targets["rel_color"], FAST)
    assert color["r2"] > 0.95 and color["r2_per_dim"] > 0.95, color
    slow = ProtocolSettings(epochs=200, batch_size=64, hidden_dim=256)
    rot = regression(_pairs(tr), tr.targets["rel_rotation"], _pairs(va), va.targets["rel_rotation"], slow)
    assert rot["r2"] > 0.9 and rot["r2_per_dim"] > 0.9, rot  # measured 0.96 / 0.94 with 768 pairs
    # the canonical sign (w >= 0) flips where w crosses 0, which is harder to fit: 0.83 measured here
    canon = regression(_pairs(tr), tr.targets["rel_rotation_canonical"], _pairs(va),
                       va.targets["rel_rotation_canonical"], slow)  # fmt: skip
    assert canon["r2"] > 0.75, canon


@pytest.mark.parametrize("encoder", [constant, noise], ids=["constant", "random"])
def test_uninformative_encoders_get_r2_at_most_zero(reg_data, encoder):
    torch.manual_seed(0)
    tr, va = _feats(encoder, reg_data, "train"), _feats(encoder, reg_data, "val")
    for t in ("rel_rotation", "rel_color"):
        res = regression(_pairs(tr), tr.targets[t], _pairs(va), va.targets[t], FAST)
        assert res["r2_per_dim"] <= 0.05, (t, res)
        # SIE's global R² is not 0 for a mean predictor (quaternion dimensions have different means):
        # an uninformative encoder must not beat that floor
        assert res["r2"] <= res["r2_mean_baseline"] + 0.05, (t, res)
    assert regression(_pairs(tr), tr.targets["rel_rotation"], _pairs(va), va.targets["rel_rotation"],
                      FAST)["r2_mean_baseline"] > 0.1  # fmt: skip


def test_linear_and_knn_reach_100_percent_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 5
    x = torch.nn.functional.one_hot(y, 5).float() * 3 + 0.3 * torch.randn(300, 5, generator=g)
    xv_y = torch.arange(100) % 5
    xv = torch.nn.functional.one_hot(xv_y, 5).float() * 3 + 0.3 * torch.randn(100, 5, generator=g)
    assert linear_probe(x, y, xv, xv_y, 5, FAST)["top1"] == 1.0
    assert knn_top1(x, y, xv, xv_y, 5) == 1.0
    shuffled = xv_y[torch.randperm(100, generator=g)]
    assert knn_top1(x, y, xv, shuffled, 5) < 0.5  # labels unrelated to features: near chance


def _checkpoint(tmp_path, data, *overrides):
    """A checkpoint in the format of rayeq.train.loop (without running Ray Train)."""
    base = [f"data.path={data}", "data.image_size=16", "model.stem=compact", "model.projector=[64,64]",
            "method.decoder.width=16", "track.backend=none", *PROBE_FAST,
            f"train.storage_path={tmp_path}"]  # fmt: skip
    cfg = load_config(None, [*base, *overrides])
    torch.manual_seed(0)
    method = build_method(cfg)
    mean, std = norm_stats(read_meta(data))
    ckpt = tmp_path / "myrun" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    torch.save({"model": {f"method.{k}": v for k, v in method.state_dict().items()}, "epoch": 1, "step": 4,
                "config": cfg.to_dict(), "tracker_run_id": None, "metrics": {"val/top1": 0.5},
                "data": {"mean": mean, "std": std, "num_classes": 3}}, ckpt / "state.pt")  # fmt: skip
    return ckpt.parent


def test_eval_on_a_run_writes_json_markdown_and_reuses_cached_features(reg_data, tmp_path):
    run = _checkpoint(tmp_path, reg_data)
    logs = []
    res = evaluate(run, fast=True, log=logs.append)
    m = res["metrics"]
    keys = (
        "linear/full/top1",
        "linear/inv/top1",
        "linear/equi/top1",
        "knn/full/top1",
        "rotation/full/r2",
        "rotation/equi/r2_per_dim",
        "rotation_canonical/inv/r2",
        "color/full/r2",
        "color_cos_sin/equi/r2",
    )
    for key in keys:
        assert key in m and np.isfinite(m[key]), key
    st = res["settings"]
    assert res["fast"] is True and st["extractor"] == "local"
    assert (st["linear"]["epochs"], st["color"]["epochs"], st["color"]["hidden_dim"]) == (5, 4, 32)
    assert st["rotation"]["min_steps"] == 300 and st["knn"] == {"k": 20, "temperature": 0.07}
    path = write_outputs(res, None, overwrite=False)
    assert json.loads(path.read_text())["metrics"] == m
    assert "| rotation/full/r2 |" in path.with_suffix(".md").read_text()
    assert any("encoding" in line for line in logs)
    logs.clear()
    again = evaluate(run, fast=True, protocols=["linear"], log=logs.append)
    assert any("cached" in line for line in logs)  # features are not re-encoded
    assert again["metrics"]["linear/full/top1"] == pytest.approx(m["linear/full/top1"])
    other = evaluate(run, fast=True, protocols=["knn"], overrides=["eval.knn.k=1"], log=logs.append)
    assert other["settings"]["knn"]["k"] == 1 and "linear" not in other["settings"]
    out = tmp_path / "mine.json"
    out.write_text("{}")
    with pytest.raises(DataError, match="--overwrite"):
        write_outputs(res, out, overwrite=False)
    assert out.read_text() == "{}"
    table = markdown_table([res, again])
    assert table.count("myrun") == 2 and "| linear/full/top1 |" in table


def test_eval_refuses_protocols_the_data_cannot_serve(reg_data, tmp_path):
    run = _checkpoint(tmp_path, reg_data)
    with pytest.raises(DataError, match="transforms"):
        evaluate(run, protocols=["transforms"], fast=True, log=lambda *a: 0)
    with pytest.raises(DataError, match="no checkpoint"):
        evaluate(tmp_path, fast=True, log=lambda *a: 0)
    with pytest.raises(ConfigError, match="model.inv_dim"):  # the encoder is fixed by its checkpoint
        evaluate(run, overrides=["model.inv_dim=8"], log=lambda *a: 0)
    with pytest.raises(ConfigError, match="eval.rotation.epochz"):
        evaluate(run, overrides=["eval.rotation.epochz=3"], log=lambda *a: 0)
    with pytest.raises(ConfigError, match="rotaton"):
        evaluate(run, protocols=["rotaton"], log=lambda *a: 0)


def test_ray_data_extraction_matches_local_extraction(reg_data, tmp_path, ray_session):
    """The cluster path (Parquet reads -> encoder actors) gives the same features, in the same order."""
    run = _checkpoint(tmp_path, reg_data)
    loaded = load_checkpoint(run)
    mean, std = loaded.norm_stats(reg_data)
    local = extract_features(loaded.encoder(), reg_data, "val", 16, mean, std, pairs_per_object=2, seed=0)
    remote = extract_features_ray(loaded, reg_data, "val", pairs=2, seed=0, batch_size=32, log=lambda *a: 0)
    assert remote.r1.shape == local.r1.shape == (8 * 3 * 2, loaded.cfg.model.feature_dim)
    assert torch.equal(remote.label, local.label)
    for t in local.targets:
        assert torch.allclose(remote.targets[t], local.targets[t]), t
    assert torch.allclose(remote.r1, local.r1, atol=1e-4) and torch.allclose(remote.r2, local.r2, atol=1e-4)
    assert not torch.allclose(local.r1, local.r2, atol=1e-3)  # two different views per pair


def test_transform_protocol_on_images(tmp_path):
    import io

    from PIL import Image

    from rayeq.data.convert import convert_folder

    g = np.random.default_rng(0)
    for c in range(2):
        d = tmp_path / "imgs" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(30):
            coarse = g.integers(0, 255, (4, 4, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(coarse).resize((32, 32), Image.BILINEAR).save(buf, "PNG")
            (d / f"{i}.png").write_bytes(buf.getvalue())
    convert_folder(tmp_path / "imgs", tmp_path / "data", log=lambda *a: 0)
    run = _checkpoint(tmp_path, tmp_path / "data", "data.source=folder", "data.image_size=32")
    res = evaluate(run, protocols=["transforms"], fast=True, log=lambda *a: 0)
    for fam in ("rotation", "color", "blur", "translation"):
        assert np.isfinite(res["metrics"][f"transforms/{fam}/r2"])
    assert "transforms/mean/r2" in res["metrics"]
