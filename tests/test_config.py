from pathlib import Path

import pytest
import yaml

from rayeq.config import ConfigError, ExperimentConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_documented_values():
    cfg = load_config()
    assert cfg.method.name == "xrecon"
    assert cfg.model.inv_dim == 256 and cfg.model.feature_dim == 512 and cfg.model.equi_dim == 256
    assert cfg.method.xattn.query == "target.equi_pooled" and cfg.method.xattn.key == "source.inv"
    assert cfg.method.xattn.learned_projections is False and cfg.loss.recon_weight == 1.0


def test_dotted_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "loss.recon_weight=0.5",
            "model.projector=[64, 32]",
            "method.xattn.heads=4",
            "augment.color.strength=0.3",
            "train.use_gpu=true",
        ],
    )
    assert cfg.loss.recon_weight == 0.5
    assert cfg.model.projector == [64, 32]
    assert cfg.method.xattn.heads == 4
    assert cfg.augment.color.strength == pytest.approx(0.3)
    assert cfg.train.use_gpu is True


def test_override_beats_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: {recon_weight: 3.0}\nmethod: {name: xrecon}\n")
    assert load_config(p).loss.recon_weight == 3.0
    assert load_config(p, ["loss.recon_weight=0.25"]).loss.recon_weight == 0.25


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("loss.recon_wieght=1", ["loss.recon_wieght", "did you mean 'loss.recon_weight'", "allowed"]),
        ("losss.recon_weight=1", ["losss", "did you mean 'loss'"]),
        ("loss.recon_weight.x=1", ["loss.recon_weight", "is a value, not a section"]),
        ("noequals", ["not of the form"]),
    ],
)
def test_unknown_keys_in_overrides_are_named(override, fragments):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    for frag in fragments:
        assert frag in str(exc.value)


def test_unknown_key_in_yaml_is_named_with_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  xattn:\n    headz: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "method.xattn.headz" in msg and "did you mean 'method.xattn.heads'" in msg and "learned_projections" in msg


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("loss.recon_weight=-1", ["loss.recon_weight", "greater than or equal to 0", "-1"]),
        ("method.name=byol", ["method.name", "'vicreg', 'simclr', 'sie', 'xrecon', 'between' or 'supervised'", "byol"]),
        ("data.image_size=8", ["data.image_size", "greater than or equal to 16"]),
        ("loss.temperature=0", ["loss.temperature", "greater than 0"]),
        ("method.xattn.query=left.equi", ["method.xattn.query", "target.equi"]),
        ("train.name=a/b", ["train.name", "pattern"]),
    ],
)
def test_invalid_values_name_key_and_allowed_range(override, fragments):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    for frag in fragments:
        assert frag in str(exc.value), str(exc.value)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model.inv_dim=512"], ["model.inv_dim=512", "[1, 511]"]),
        (["model.inv_dim=100"], ["parameter-free attention", "model.inv_dim=256", "learned_projections"]),
        (["method.name=sie", "data.source=folder"], ["method.name='sie'", "data.source"]),
        (["method.xattn.heads=3"], ["method.xattn.heads=3", "divide"]),
        (["data.image_size=16", "model.stem=imagenet"], ["data.image_size=16", "stride 32"]),
        (["train.batch_size=10", "train.num_workers=3"], ["train.batch_size=10", "train.num_workers=3"]),
    ],
)
def test_inconsistent_settings_are_refused(overrides, fragments):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    for frag in fragments:
        assert frag in str(exc.value), str(exc.value)


def test_learned_projections_allow_unequal_split():
    cfg = load_config(None, ["model.inv_dim=100", "method.xattn.learned_projections=true", "method.xattn.heads=4"])
    assert cfg.model.equi_dim == 412


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = load_config(None, ["method.name=sie", "loss.equi_weight=2.5", "model.projector=[512,256]"])
    path = cfg.dump(tmp_path / "resolved.yaml")
    back = load_config(path)
    assert back == cfg
    assert back.to_yaml() == cfg.to_yaml()
    assert yaml.safe_load(path.read_text())["loss"]["equi_weight"] == 2.5


def test_fingerprint_tracks_model_settings_not_epochs():
    a = load_config()
    assert a.fingerprint() == load_config(None, ["train.epochs=7"]).fingerprint()
    assert a.fingerprint() != load_config(None, ["loss.recon_weight=2"]).fingerprint()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("loss: {recon_weight: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert load_config(None, []) != cfg  # each shipped config differs from the bare defaults


def test_shipped_configs_cover_every_method():
    names = {load_config(p).method.name for p in CONFIGS}
    assert names == {"vicreg", "simclr", "sie", "xrecon", "between", "supervised"}


@pytest.mark.parametrize("data", ["synth3d", "3diebench"])
def test_sie_ships_both_equivariance_factors_and_they_differ_in_nothing_else(data):
    """SIE's README trains with --equi-factor 0.45; its main.py defaults to 4.5 (docs/METHOD.md)."""
    readme = load_config(CONFIGS[0].parent / f"sie_{data}.yaml").to_dict()
    mainpy = load_config(CONFIGS[0].parent / f"sie_{data}_mainpy_default.yaml").to_dict()
    assert (readme["loss"].pop("equi_weight"), mainpy["loss"].pop("equi_weight")) == (0.45, 4.5)
    assert mainpy["train"].pop("name") == readme["train"].pop("name") + "_mainpy_default"
    assert readme == mainpy


def test_a_wrong_value_names_the_file_or_the_overrides_it_came_from(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: abc\n")
    with pytest.raises(ConfigError, match=r"config file '.*bad\.yaml': invalid config:\n  train\.epochs"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"the overrides given with config file '.*good\.yaml'(.|\n)*train\.epochs"):
        load_config(good, ["train.epochs=abc"])
    assert load_config(good).train.epochs == 3  # the file itself was not changed by the failed overrides
