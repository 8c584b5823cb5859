"""The protocols measure what they claim: an oracle encoder (features = a known function of the
latents) gets R² near 1, constant or random encoders get R² <= ~0, an encoder that memorised its
train objects lands at the floor on held-out ones, separable features 100 %; every result carries
its floors (untrained encoder, mean predictor) and marks what does not beat them."""

import functools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.spatial.transform import Rotation

from rayeq.checkpoint import LoadedCheckpoint
from rayeq.config import ConfigError, load_config
from rayeq.data.feed.normalize import norm_stats
from rayeq.data.schema import DataError, read_meta
from rayeq.eval.features import Features, extract_features, extract_features_ray
from rayeq.eval.output import markdown_table, write_outputs
from rayeq.eval.protocols import ProtocolSettings, knn_top1, linear_probe, pair_regression, view_pairs
from rayeq.eval.run import evaluate
from rayeq.methods import build_method
from rayeq.report import FLOOR_MARK
from rayeq.rundir import load_checkpoint

from conftest import rendered_set

# per-protocol settings, small enough for a test (eval.fast still applies its caps and step floor)
PROBE_FAST = ["eval.linear.epochs=5", "eval.rotation.epochs=5", "eval.color.epochs=4", "eval.transforms.epochs=5",
              "eval.rotation.hidden_dim=64", "eval.color.hidden_dim=32", "eval.transforms.hidden_dim=64",
              "eval.fast.min_steps=300"]  # fmt: skip
FAST = ProtocolSettings(epochs=60, lr=1e-3, batch_size=64, hidden_dim=256, min_steps=1500)


@pytest.fixture(scope="module")
def reg_data(tmp_path_factory):
    return rendered_set(tmp_path_factory, "evaldata", classes=3, objects_per_class=40, views=6, size=16, seed=2)


@functools.lru_cache
def _view_facts(data, size: int = 16) -> dict[bytes, tuple]:
    """Every stored view of a 3D set, as an encoder receives it (decoded, resized, normalised), by its bytes
    -> (latents, label, object id, split): what a hand-made encoder needs to know and rayeq does not pass."""
    from rayeq.data.feed.augment import resize
    from rayeq.data.feed.normalize import normalize
    from rayeq.data.schema import decode_image, open_dataset

    mean, std = norm_stats(read_meta(data))
    facts = {}
    for shard in open_dataset(data)[1]:
        for row in pq.read_table(shard).to_pylist():
            for i, png in enumerate(row["images"]):
                x = normalize(resize(torch.from_numpy(decode_image(png)).permute(2, 0, 1), size)[None], mean, std)
                facts[x[0].numpy().tobytes()] = (row["latents"][i], row["label"], row["object_id"], row["split"])
    return facts


class ByImage:
    """A hand-made encoder `fn(images, batch)` behind the `encode(images)` rayeq calls: each image is looked up
    among the data set's views, and `batch` holds per image its `latent`, `label`, `object_id` and `split`."""

    def __init__(self, fn, data, size: int = 16):
        self.fn, self.facts = fn, _view_facts(data, size)

    def to(self, device):
        return self

    def encode(self, images):
        rows = [self.facts[x.numpy().tobytes()] for x in images]
        batch = {"latent": torch.tensor(np.array([r[0] for r in rows], dtype=np.float32)),
                 "label": torch.tensor([r[1] for r in rows]), "object_id": [r[2] for r in rows],
                 "split": [r[3] for r in rows]}  # fmt: skip
        return self.fn(images, batch)


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
    return extract_features(ByImage(encoder, data), data, split, 16, mean, std)


def _probe(tr, va, target, s=FAST, part=slice(None)):
    return pair_regression(tr.r[:, part], tr.obj, tr.latent, va.r[:, part], va.obj, va.latent, target, s)


def test_features_hold_every_view_grouped_by_object(reg_data):
    tr = _feats(oracle, reg_data, "train")
    assert tr.r.shape == (32 * 3 * 6, 15) and tr.n_objects == 96
    assert torch.equal(tr.obj, torch.arange(96).repeat_interleave(6))  # objects are contiguous runs of 6 views
    # the oracle's features are a function of each row's own latents: features and latents stay aligned
    rot = Rotation.from_euler("xyz", tr.latent[:, :3].numpy()).as_matrix().reshape(-1, 9)
    np.testing.assert_allclose(tr.r[:, :9].numpy(), rot, atol=1e-5)
    i, j = view_pairs(tr.obj, 5, np.random.default_rng(0))
    assert len(i) == 96 * 5 and (tr.obj[i] == tr.obj[j]).all() and (i != j).all()
    # eval.train_rows: the first N objects only, every view of each, the same features as in the full set
    mean, std = norm_stats(read_meta(reg_data))
    capped = extract_features(ByImage(oracle, reg_data), reg_data, "train", 16, mean, std, max_rows=10)
    assert capped.r.shape == (10 * 6, 15) and capped.n_objects == 10
    full_rows = {tuple(r) for r in tr.r.numpy().round(5).tolist()}
    assert all(tuple(r) in full_rows for r in capped.r.numpy().round(5).tolist())


@pytest.mark.slow
def test_oracle_encoder_gets_r2_near_one(reg_data):
    tr, va = _feats(oracle, reg_data, "train"), _feats(oracle, reg_data, "val")
    color = _probe(tr, va, "rel_color")
    assert color["r2"] > 0.95 and color["r2_per_dim"] > 0.95, color
    slow = ProtocolSettings(epochs=200, batch_size=64, hidden_dim=256, min_steps=3000)
    rot = _probe(tr, va, "rel_rotation", slow)
    assert rot["r2"] > 0.9 and rot["r2_per_dim"] > 0.85, rot
    assert rot["mean"]["r2"] > 0.1 and abs(rot["mean"]["r2_per_dim"]) < 0.05  # SIE's global R² of the mean
    # the canonical sign (w >= 0) flips where w crosses 0, which is harder to fit
    assert _probe(tr, va, "rel_rotation_canonical", slow)["r2"] > 0.75


@pytest.mark.parametrize("encoder", [constant, noise], ids=["constant", "random"])
def test_uninformative_encoders_get_r2_at_most_zero(reg_data, encoder):
    torch.manual_seed(0)
    tr, va = _feats(encoder, reg_data, "train"), _feats(encoder, reg_data, "val")
    for t in ("rel_rotation", "rel_color"):
        res = _probe(tr, va, t)
        assert res["r2_per_dim"] <= 0.05, (t, res)
        # SIE's global R² is not 0 for a mean predictor (quaternion dimensions have different means):
        # an uninformative encoder must not beat that floor
        assert res["r2"] <= res["mean"]["r2"] + 0.05, (t, res)


class Memorising:
    """Oracle features on train objects, noise on held-out ones: what an encoder that learnt its training
    objects by heart, and nothing that transfers, looks like to the probes."""

    def to(self, device):
        return self

    def __call__(self, images, batch):
        f = oracle(images, batch)
        held_out = torch.tensor([s == "val" for s in batch["split"]])
        f[held_out] = torch.randn(int(held_out.sum()), f.shape[1])
        return torch.cat([f, torch.zeros(len(f), 512 - f.shape[1])], dim=1)  # a ResNet-18's width


@pytest.mark.slow
def test_a_memorising_encoder_lands_at_the_floor_on_held_out_objects(reg_data):
    torch.manual_seed(0)
    enc = Memorising()
    tr, va = _feats(enc, reg_data, "train"), _feats(enc, reg_data, "val")
    slow = ProtocolSettings(epochs=200, batch_size=64, hidden_dim=256, min_steps=3000)
    rot = _probe(tr, va, "rel_rotation", slow)
    assert rot["r2_train"] > 0.85, rot  # it fits the train objects' pairs ...
    assert rot["r2"] <= rot["mean"]["r2"] + 0.05 and rot["r2_per_dim"] <= 0.05, rot  # ... and nothing else


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
    method = build_method(cfg, num_classes=3)
    mean, std = norm_stats(read_meta(data))
    ckpt = tmp_path / "myrun" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    torch.save({"model": {f"method.{k}": v for k, v in method.state_dict().items()}, "epoch": 1, "step": 4,
                "config": cfg.to_dict(), "tracker_run_id": None, "metrics": {"val/top1": 0.5},
                "data": {"mean": mean, "std": std, "num_classes": 3}}, ckpt / "state.pt")  # fmt: skip
    return ckpt.parent


@pytest.mark.slow
def test_eval_on_a_run_writes_json_markdown_and_reuses_cached_features(reg_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
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
        "rotation/full/r2_train",
        "rotation/equi/r2_per_dim",
        "rotation_canonical/inv/r2",
        "color/full/r2",
        "color_cos_sin/equi/r2",
    )
    for key in keys:
        assert key in m and np.isfinite(m[key]), key
    # the floors: the same metric keys, measured on an untrained encoder and by a mean predictor
    floors = res["floors"]
    assert set(floors["random_init"]) == set(m) == set(floors["mean_predictor"])
    assert floors["mean_predictor"]["linear/full/top1"] == pytest.approx(1 / 3, abs=0.01)  # balanced classes
    assert floors["mean_predictor"]["rotation/full/r2"] > 0.1  # SIE's global R² of the mean quaternion
    assert floors["mean_predictor"]["rotation/full/r2_per_dim"] < 0.01
    assert res["at_or_below_floor"] == [
        k for k in m if m[k] <= max(floors["random_init"][k], floors["mean_predictor"][k])
    ]
    assert set(res["per_class"]["classes"]) == set(read_meta(reg_data)["classes"])
    st = res["settings"]
    assert res["fast"] is True and st["extractor"] == "local"
    assert (st["linear"]["epochs"], st["color"]["epochs"], st["color"]["hidden_dim"]) == (5, 4, 32)
    assert st["rotation"]["min_steps"] == 300 and st["knn"] == {"k": 20, "temperature": 0.07}
    path = write_outputs(res, None, overwrite=False)
    assert json.loads(path.read_text())["metrics"] == m
    md = path.with_suffix(".md").read_text()
    assert "| rotation/full/r2 |" in md and "untrained encoder" in md and "mean predictor" in md
    assert any("encoding" in line for line in logs) and any("floor" in line for line in logs)
    logs.clear()
    again = evaluate(run, fast=True, protocols=["linear"], log=logs.append)
    assert any("cached" in line and "features" in line for line in logs)  # features are not re-encoded
    assert any("floor" in line and "cached" in line for line in logs)  # nor is the floor re-measured
    assert again["metrics"]["linear/full/top1"] == pytest.approx(m["linear/full/top1"])
    assert again["floors"]["random_init"] == {k: v for k, v in floors["random_init"].items() if k.startswith("linear")}
    other = evaluate(run, fast=True, protocols=["knn"], overrides=["eval.knn.k=1"], log=logs.append)
    assert other["settings"]["knn"]["k"] == 1 and "linear" not in other["settings"]
    assert set(other["floors"]["random_init"]) == set(other["metrics"])  # a floor for these settings
    out = tmp_path / "mine.json"
    out.write_text("{}")
    with pytest.raises(DataError, match="--overwrite"):
        write_outputs(res, out, overwrite=False)
    assert out.read_text() == "{}"
    table = markdown_table([res, again])
    header = table.splitlines()[0]
    assert header.count("myrun (xrecon") == 2 and "| linear/full/top1 |" in table
    assert header.count("untrained encoder (myrun)") == 2  # the two runs' floors differ: one column each


@pytest.mark.slow
@pytest.mark.full  # the rule and the mark are tests/test_report.py's in the default tier
def test_metrics_at_or_below_their_floor_are_marked_in_every_table(reg_data, tmp_path, monkeypatch):
    """A memorising encoder: its held-out rotation R² is no better than the floors, and says so."""
    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    slow = ["eval.rotation.epochs=100", "eval.rotation.hidden_dim=128", "eval.fast.max_hidden_dim=128",
            "eval.fast.min_steps=1200"]  # fmt: skip
    run = _checkpoint(tmp_path, reg_data, "method.name=supervised", *slow)
    real_encoder = LoadedCheckpoint.encoder
    memorising = ByImage(Memorising(), reg_data)
    monkeypatch.setattr(LoadedCheckpoint, "encoder",
                        lambda self: memorising if self.state.epoch > 0 else real_encoder(self))  # fmt: skip
    torch.manual_seed(0)
    res = evaluate(run, fast=True, protocols=["rotation"], log=lambda *a: 0)
    m, floors = res["metrics"], res["floors"]
    assert m["rotation/full/r2_train"] > 0.85, m["rotation/full/r2_train"]  # it fits the pairs it saw
    assert m["rotation/full/r2"] <= floors["mean_predictor"]["rotation/full/r2"] + 0.05
    assert "rotation/full/r2" in res["at_or_below_floor"] and "rotation/full/r2_train" not in res["at_or_below_floor"]
    lines = {line.split(" | ")[0]: line for line in markdown_table([res]).splitlines()}
    assert FLOOR_MARK in lines["| rotation/full/r2"] and FLOOR_MARK not in lines["| rotation/full/r2_train"]
    assert "uses labels" in markdown_table([res])  # the supervised ceiling is labelled as such
    assert res["uses_labels"] and res["method"] == "supervised"


class SplitParts:
    """An encoder whose invariant part (the first model.inv_dim = 256 channels) holds the class and nothing else,
    and whose equivariant part holds each view's pose and hues (the oracle) and nothing else."""

    def to(self, device):
        return self

    def __call__(self, images, batch):
        n = len(images)
        inv = torch.zeros(n, 256)
        inv[torch.arange(n), batch["label"]] = 3.0
        inv[:, :8] += 0.3 * torch.randn(n, 8)
        equi = oracle(images, batch)
        return torch.cat([inv, equi, torch.zeros(n, 256 - equi.shape[1])], dim=1)


@pytest.mark.slow
def test_eval_reads_the_invariant_and_equivariant_channels_it_names(reg_data, tmp_path, monkeypatch):
    """linear/inv and rotation/equi see what sits in their channels; linear/equi and rotation/inv do not."""
    from rayeq.eval.measure import measure, settings_for

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    run = _checkpoint(tmp_path, reg_data, "eval.rotation.hidden_dim=128", "eval.fast.max_hidden_dim=128",
                      "eval.fast.min_steps=1500")  # fmt: skip
    monkeypatch.setattr(LoadedCheckpoint, "encoder", lambda self: ByImage(SplitParts(), reg_data))
    loaded = load_checkpoint(run)
    assert loaded.cfg.model.inv_dim == 256
    torch.manual_seed(0)
    res = measure(loaded, reg_data, read_meta(reg_data), ["linear", "rotation"], settings_for(loaded.cfg, True),
                  False, lambda *a: 0)  # fmt: skip
    m, floor = res["metrics"], res["mean_predictor"]
    assert m["linear/inv/top1"] > 0.95 and m["linear/full/top1"] > 0.95, m
    assert m["linear/equi/top1"] < 0.6, m  # 3 balanced classes: chance 1/3
    assert m["rotation/equi/r2"] > floor["rotation/equi/r2"] + 0.3, (m, floor)
    assert m["rotation/inv/r2"] <= floor["rotation/inv/r2"] + 0.05, (m, floor)
    # eval.parts: only the parts named are probed (each part costs its own probes)
    loaded.cfg = loaded.cfg.model_copy(update={"eval": loaded.cfg.eval.model_copy(update={"parts": ["equi"]})})
    res = measure(loaded, reg_data, read_meta(reg_data), ["linear"], settings_for(loaded.cfg, True), False,
                  lambda *a: 0)  # fmt: skip
    assert set(res["metrics"]) == {"linear/equi/top1"} and res["metrics"]["linear/equi/top1"] < 0.6


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
    local = extract_features(loaded.encoder(), reg_data, "val", 16, mean, std)
    remote = extract_features_ray(loaded, reg_data, "val", batch_size=32, log=lambda *a: 0)
    assert remote.r.shape == local.r.shape == (8 * 3 * 6, loaded.cfg.model.feature_dim)
    assert torch.equal(remote.label, local.label) and torch.equal(remote.obj, local.obj)
    assert torch.equal(remote.latent, local.latent)
    assert torch.allclose(remote.r, local.r, atol=1e-4)
    assert not torch.allclose(local.r[0], local.r[1], atol=1e-3)  # two different views of one object
    capped = extract_features_ray(loaded, reg_data, "val", batch_size=32, log=lambda *a: 0, max_rows=5)
    assert capped.r.shape == (5 * 6, loaded.cfg.model.feature_dim) and capped.n_objects == 5


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """2 classes x 80 smooth random 32-px images, converted to rayeq's image format."""
    import io

    from PIL import Image

    from rayeq.data.make.convert import convert_folder

    tmp = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    for c in range(2):
        d = tmp / "imgs" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(80):
            coarse = g.integers(0, 255, (4, 4, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(coarse).resize((32, 32), Image.BILINEAR).save(buf, "PNG")
            (d / f"{i}.png").write_bytes(buf.getvalue())
    convert_folder(tmp / "imgs", tmp / "data", log=lambda *a: 0)
    return tmp / "data"


class Encoder:
    """A function of the normalised images as an encoder (`encode`)."""

    def __init__(self, fn):
        self.fn = fn

    def to(self, device):
        return self

    def encode(self, images):
        return self.fn(images)


def pixels(x):
    """An encoder that keeps the image: the normalised pixels, flattened."""
    return x.flatten(1)


def image_statistics(x):
    """A hand-made encoder: the brightness-weighted centre (x, y), log mean and log standard deviation of the
    (un-normalised) brightness. Translation moves the centre, blur lowers the deviation, brightness the mean."""
    luma = (x * 0.2 + 0.5).mean(1).clamp(min=0)  # (B, H, W), roughly back in [0, 1]
    w = luma / luma.sum((1, 2), keepdim=True)
    coords = torch.arange(x.shape[-1], dtype=x.dtype)
    cx, cy = (w.sum(1) * coords).sum(1), (w.sum(2) * coords).sum(1)
    return torch.stack([cx, cy, luma.mean((1, 2)).log(), luma.std((1, 2)).log()], 1)


def test_transform_pairs_hold_the_image_and_its_transform_by_the_recorded_parameters(image_data):
    """Each sample of a family is (I, g(I)) with g's parameters as its target: re-applying the target
    parameters to I gives g(I), for every family."""
    from rayeq.data.feed.augment import IDENTITY, apply_params
    from rayeq.eval.transforms import FAMILIES, _encode_split

    mean, std = norm_stats(read_meta(image_data))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    feats = _encode_split(Encoder(pixels), image_data, "val", 32, mean, std, seed=0)

    def image(flat):
        return ((flat.view(3, 32, 32) * s + m) * 255).round().clamp(0, 255).to(torch.uint8)

    for fam, idx in FAMILIES.items():
        x, y = feats[fam]
        assert y.shape[1] == len(idx) and len(x) >= 10
        assert (y != torch.tensor(IDENTITY[idx])).all(), fam  # every sample is transformed
        for k in range(5):
            orig, moved = image(x[k, : 3 * 32 * 32]), image(x[k, 3 * 32 * 32 :])
            p = IDENTITY.copy()
            p[idx] = y[k].numpy()
            torch.testing.assert_close(apply_params(orig, p, 32), moved, atol=1, rtol=0, msg=fam)


@pytest.mark.slow
def test_transform_protocol_on_images(image_data, tmp_path, monkeypatch):
    """The whole protocol runs through `rayeq eval`; a hand-made encoder of image statistics lets the probe read
    translation, blur and rotation far above what the mean predictor scores; a constant encoder does not beat it."""
    from rayeq.eval.measure import measure, settings_for

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    run = _checkpoint(tmp_path, image_data, "data.source=folder", "data.image_size=32")
    res = evaluate(run, protocols=["transforms"], fast=True, log=lambda *a: 0)
    mean_predictor = res["floors"]["mean_predictor"]
    for fam in ("rotation", "color", "blur", "translation", "mean"):
        assert np.isfinite(res["metrics"][f"transforms/{fam}/r2"]) and f"transforms/{fam}/r2_global" in res["metrics"]
        # the headline is per dimension: a mean predictor has no skill on any family, the family mean included
        assert abs(mean_predictor[f"transforms/{fam}/r2"]) < 0.05, (fam, mean_predictor)
    # the global figure credits it on colour jitter (brightness/contrast/saturation near 1, hue near 0)
    assert mean_predictor["transforms/color/r2_global"] > 0.5
    loaded = load_checkpoint(run)
    settings = settings_for(loaded.cfg, False)
    settings["transforms"] = ProtocolSettings(epochs=300, batch_size=64, hidden_dim=256, min_steps=3000)
    scores = {}
    for name, enc in (("stats", image_statistics), ("constant", lambda x: torch.ones(len(x), 8))):
        monkeypatch.setattr(LoadedCheckpoint, "encoder", lambda self, enc=enc: Encoder(enc))
        torch.manual_seed(0)
        scores[name] = measure(loaded, image_data, read_meta(image_data), ["transforms"], settings, False,
                               lambda *a: 0)  # fmt: skip
    # measured: translation 0.98, blur 0.82, rotation 0.56 (the centre turns about the image centre) against
    # mean predictors at 0.00; colour has 4 parameters and the statistics see only brightness
    for fam, at_least in (("translation", 0.9), ("blur", 0.6), ("rotation", 0.3)):
        key = f"transforms/{fam}/r2"
        assert scores["stats"]["metrics"][key] > at_least > scores["stats"]["mean_predictor"][key], (fam, scores)
    for key, v in scores["constant"]["metrics"].items():
        assert v <= scores["constant"]["mean_predictor"][key] + 0.05, (key, scores)


def test_the_cross_view_grid_decodes_with_each_input_swapped(reg_data, tmp_path):
    """`rayeq eval RUN --cross-view-grid PNG`: titled rows (target, other view, own views, other view swapped,
    target swapped) of held-out pairs, each swap the reconstruction with another pair's input (the batch rolled by
    one); refused for a method without a decoder and for an existing picture without --overwrite."""
    from PIL import Image

    from rayeq.data.feed.pipeline import iter_pairs, to_model_batch
    from rayeq.eval.crossview import cross_view_rows, write_cross_view_grid

    run = _checkpoint(tmp_path, reg_data, "method.name=xrecon", "method.decoder.recon_size=8")
    out = write_cross_view_grid(run, tmp_path / "grid.png", pairs=4, log=lambda *a: None)
    img = Image.open(out)
    assert img.height == 5 * 8 * 3 and img.width == 170 + 4 * 8 * 3  # 5 rows of 4 pairs at 8 px, enlarged 3 times
    loaded = load_checkpoint(run)
    method = loaded.encoder()
    raw = next(iter_pairs(loaded.cfg, "val", batch_size=4))
    batch = to_model_batch(raw, *loaded.norm_stats(reg_data))
    rows = dict(cross_view_rows(method, batch))
    assert list(rows) == ["target: view 1", "other view: 2", "own views", "other view swapped", "target swapped"]
    with torch.no_grad():
        f1, f2 = method.backbone(batch["view1"])[0], method.backbone(batch["view2"])[0]
        torch.testing.assert_close(rows["own views"], method.reconstruct({1: f1, 2: f2}, 1))
        torch.testing.assert_close(rows["other view swapped"], method.reconstruct({1: f1, 2: f2.roll(1, 0)}, 1))
        torch.testing.assert_close(rows["target swapped"], method.reconstruct({1: f1.roll(1, 0), 2: f2}, 1))
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        write_cross_view_grid(run, out, pairs=4)
    with pytest.raises(ConfigError, match="needs an xrecon or between checkpoint"):
        write_cross_view_grid(_checkpoint(tmp_path / "v", reg_data, "method.name=vicreg"), tmp_path / "g2.png")


# --------------------------------------------------------------------------- eval.preset: rayeq's protocol or SIE's
def test_the_sie_preset_sets_each_protocol_item_and_a_set_item_overrides_it(reg_data, tmp_path):
    from rayeq.config import EVAL_PRESETS, from_dict

    assert load_config(None, []).eval.protocol() == EVAL_PRESETS["rayeq"]
    sie = load_config(None, ["eval.preset=sie"]).eval
    assert sie.protocol() == {"probe_inputs": "raw", "batchnorm": "train", "sampling": "sie", "normalization": "sie"}
    one = load_config(None, ["eval.preset=sie", "eval.batchnorm=eval"]).eval.protocol()
    assert one["batchnorm"] == "eval" and one["probe_inputs"] == "raw"  # the rest stays SIE's
    assert load_config(None, ["eval.probe_inputs=raw"]).eval.protocol()["sampling"] == "rayeq"
    # a stored config (every key written out) still follows a preset given later, as `rayeq eval --set` does
    stored = load_config(None, []).to_dict()
    stored["eval"]["preset"] = "sie"
    assert from_dict(stored).eval.protocol() == EVAL_PRESETS["sie"]
    with pytest.raises(ConfigError, match="eval.batchnorm"):
        load_config(None, ["eval.batchnorm=frozen"])
    with pytest.raises(ConfigError, match="eval.preset"):
        load_config(None, ["eval.preset=solo"])
    # SIE's normalisation: its fixed 3DIEBench constants, whatever the encoder was trained with
    loaded = load_checkpoint(_checkpoint(tmp_path, reg_data))
    assert tuple(loaded.norm_stats(reg_data)) == tuple(norm_stats(read_meta(reg_data)))
    loaded.cfg = load_config(None, [f"data.path={reg_data}", "eval.normalization=sie"])
    assert tuple(loaded.norm_stats(reg_data)) == ([0.5016, 0.5037, 0.5060], [0.1030, 0.0999, 0.0969])


class PerImage:
    """A per-image function behind `encode` that records the train/eval mode it was called in."""

    def __init__(self):
        self.modes, self.training = [], False

    def to(self, device):
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def encode(self, images):
        self.modes.append(self.training)
        return images.mean((2, 3))


def test_batchnorm_in_train_mode_shuffles_batches_keeps_row_order_and_moves_the_running_statistics(reg_data):
    mean, std = norm_stats(read_meta(reg_data))
    enc = PerImage()
    plain = extract_features(enc, reg_data, "train", 16, mean, std, batch_size=64)
    assert not any(enc.modes)
    enc.modes.clear()
    shuffled = extract_features(enc, reg_data, "train", 16, mean, std, batch_size=64, batchnorm_train_seed=0)
    assert all(enc.modes) and not enc.training  # every batch in train mode, back in eval mode after
    torch.testing.assert_close(shuffled.r, plain.r)  # each row its own image's features, in the rows' order
    # a real encoder: its BatchNorm normalises each batch by the batch's statistics, and the running ones move
    cfg = load_config(None, [f"data.path={reg_data}", "data.image_size=16", "model.stem=compact", "method.name=vicreg"])
    torch.manual_seed(0)
    method = build_method(cfg, num_classes=3).eval()
    bn = next(m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    frozen = extract_features(method, reg_data, "val", 16, mean, std, batch_size=64)
    assert torch.equal(bn.running_mean, before)  # eval mode leaves them
    batch_stats = extract_features(method, reg_data, "val", 16, mean, std, batch_size=64, batchnorm_train_seed=0)
    assert not torch.equal(bn.running_mean, before) and not method.training
    gap = (batch_stats.r - frozen.r).abs().mean() / frozen.r.abs().mean()
    assert gap > 0.05, float(gap)  # the same images, other features


def test_raw_probe_inputs_see_the_features_scale_and_standardised_ones_do_not(reg_data):
    from dataclasses import replace

    from rayeq.eval.protocols import probe_inputs

    tr, va = _feats(oracle, reg_data, "train"), _feats(oracle, reg_data, "val")
    s = ProtocolSettings(epochs=3, batch_size=64, hidden_dim=32)
    x, y = probe_inputs(s, tr.r * 7 + 3, va.r)
    assert x.mean(0).abs().max() < 1e-4 and (x.std(0) - 1).abs().max() < 1e-3
    raw = replace(s, standardise=False)
    xr, yr = probe_inputs(raw, tr.r * 7 + 3, va.r)
    assert torch.equal(xr, tr.r * 7 + 3) and torch.equal(yr, va.r)  # SIE's: as they come
    runs = {}
    for name, settings in (("std", s), ("raw", raw)):
        for scale in (1.0, 50.0):
            scaled = [Features(f.r * scale, f.label, f.obj, f.latent) for f in (tr, va)]
            runs[name, scale] = _probe(*scaled, "rel_color", settings)["r2"]
    assert runs["std", 1.0] == pytest.approx(runs["std", 50.0], abs=1e-4)
    assert abs(runs["raw", 1.0] - runs["raw", 50.0]) > 1e-3


def test_sie_sampling_draws_one_view_per_object_per_epoch_and_scores_one_per_object(reg_data):
    from rayeq.eval.protocols import one_view_per_object

    tr, va = _feats(oracle, reg_data, "train"), _feats(oracle, reg_data, "val")
    g = np.random.default_rng(0)
    first, second = one_view_per_object(tr.obj, g), one_view_per_object(tr.obj, g)
    assert len(first) == tr.n_objects and torch.equal(tr.obj[first], torch.arange(tr.n_objects))
    assert (first != second).any()  # a fresh draw each epoch
    s = ProtocolSettings(epochs=3, batch_size=64, hidden_dim=32)
    sie = ProtocolSettings(epochs=3, batch_size=64, hidden_dim=32, sampling="sie")
    assert linear_probe(tr.r, tr.label, va.r, va.label, 3, s, tr.obj, va.obj)["scored"] == len(va.label)
    assert linear_probe(tr.r, tr.label, va.r, va.label, 3, sie, tr.obj, va.obj)["scored"] == va.n_objects
    assert len(_probe(tr, va, "rel_color", s)["rows"]) == 10 * va.n_objects  # eval.pairs_per_object
    assert len(_probe(tr, va, "rel_color", sie)["rows"]) == va.n_objects


@pytest.mark.slow
def test_eval_under_the_sie_preset_names_it_and_keeps_its_own_features_and_floors(reg_data, tmp_path, monkeypatch):
    from rayeq.eval.features import split_features

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    run = _checkpoint(tmp_path, reg_data, "eval.parts=[full]")
    ours = evaluate(run, fast=True, protocols=["linear", "color"], log=lambda m: None)
    logs = []
    sie = evaluate(run, fast=True, protocols=["linear", "color"], overrides=["eval.preset=sie"], log=logs.append)
    assert (ours["preset"], sie["preset"]) == ("rayeq", "sie") and sie["protocol"]["batchnorm"] == "train"
    assert not any("cached" in line and "features" in line for line in logs)  # other features: encoded afresh
    assert any("BatchNorm in train mode" in line for line in logs)
    assert not any("floor" in line and "cached" in line for line in logs)  # and a floor of its own
    assert sie["metrics"]["color/full/r2"] != ours["metrics"]["color/full/r2"]
    held_out = _feats(oracle, reg_data, "val")
    assert f"on {held_out.n_objects} val views" in "".join(logs) and held_out.n_objects < len(held_out.label)
    assert "Measured under eval.preset=sie" in markdown_table([sie])
    mixed = markdown_table([ours, sie])
    assert "eval.preset=rayeq / eval.preset=sie" in mixed
    one = evaluate(run, fast=True, protocols=["linear"], overrides=["eval.probe_inputs=raw"], log=lambda m: None)
    assert "eval.preset=rayeq with eval.probe_inputs=raw" in markdown_table([one])
    loaded = load_checkpoint(run)
    loaded.cfg = load_config(None, [f"data.path={reg_data}", "eval.preset=sie", "eval.extractor=ray"])
    with pytest.raises(ConfigError, match="eval.extractor=local"):  # refused before anything is encoded
        split_features(loaded, reg_data, use_ray=True)


@pytest.mark.slow
def test_protocol_items_evaluate_each_sie_item_alone_beside_both_presets(reg_data, tmp_path, monkeypatch, capsys):
    from rayeq.cli import main

    monkeypatch.setenv("RAYEQ_CACHE", str(tmp_path / "cache"))
    run = _checkpoint(tmp_path, reg_data, "eval.parts=[full]")
    out = tmp_path / "items.json"
    assert main(["eval", str(run), "--fast", "--protocols", "linear", "--protocol-items", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    variants = res["variants"]
    items = ["probe_inputs=raw", "batchnorm=train", "sampling=sie", "normalization=sie"]
    assert list(variants) == ["rayeq", *items, "sie"]
    for name, r in variants.items():  # each variant departs from rayeq's protocol by its own item only
        changed = {k for k, v in r["protocol"].items() if v != variants["rayeq"]["protocol"][k]}
        assert changed == ({name.split("=")[0]} if "=" in name else set() if name == "rayeq" else set(r["protocol"]))
    plain = evaluate(run, fast=True, protocols=["linear"], log=lambda m: None)
    assert variants["rayeq"]["metrics"] == plain["metrics"]
    md = out.with_suffix(".md").read_text()
    assert md.count("| linear/full/top1 |") == 1 and "`batchnorm=train`" in md
    sie = variants["sie"]["metrics"]["linear/full/top1"] - plain["metrics"]["linear/full/top1"]
    assert f"({sie:+.3f})" in md  # the change from rayeq's protocol, per variant
    assert "wrote" in capsys.readouterr().out
    before = out.read_text()  # an existing --out is kept, refused before any work
    assert main(["eval", str(run), "--fast", "--protocols", "linear", "--protocol-items", "--out", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == before
