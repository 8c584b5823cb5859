"""Study files are checked before any run starts (unknown keys, arms or grid values the config refuses,
keys the study owns, eval protocols and metrics that do not exist, a baseline that is not an arm);
runs expand arm x setting x seed; the summary's statistics, marks, floors and ceiling."""

import json
import math
from pathlib import Path

import pytest
import yaml

from rayeq.campaign.spec import base_config
from rayeq.config import ConfigError
from rayeq.study.spec import check_study, eval_metric_names, expand, load_study
from rayeq.study.summary import ABOVE, BELOW, FLOOR_MARK, markdown, summarise, write_summary


def _study(tmp_path, **changes):
    spec = {
        "name": "t",
        "base": {"config": None, "overrides": ["train.epochs=2"]},
        "arms": {"vicreg": {"method.name": "vicreg"}, "xrecon": {"method.name": "xrecon"}},
        "seeds": [0, 1],
    }
    spec.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _check(path, tmp_path):
    from rayeq.config import IMAGE_SOURCES

    spec = load_study(path)
    base, _ = base_config(spec)
    return spec, check_study(spec, base, tmp_path / "study", three_d=base.data.source not in IMAGE_SOURCES)


def test_shipped_studies_pass_every_check_that_needs_no_data(tmp_path):
    files = sorted(Path("studies").glob("*.yaml"))
    assert {f.stem for f in files} >= {"smoke", "methods_cpu", "methods_gpu", "methods_cluster", "xattn_ablation"}
    for f in files:
        spec, configs = _check(f, tmp_path)
        assert len(configs) == spec.num_samples >= 4, f
        assert all(c.train.seed in spec.seeds for c in configs.values())


def test_methods_studies_compare_the_papers_arms_against_the_supervised_ceiling(tmp_path):
    for name in ("methods_cpu", "methods_gpu", "methods_cluster"):
        spec, configs = _check(Path("studies") / f"{name}.yaml", tmp_path)
        assert len(spec.seeds) == 3 and spec.summary.ceiling == "supervised" and spec.baseline == "vicreg", name
        methods = {(c.method.name, c.method.base) for c in configs.values()}
        assert {("vicreg", "vicreg"), ("simclr", "vicreg"), ("sie", "vicreg"), ("xrecon", "vicreg")} <= {
            (m, b if m == "xrecon" else "vicreg") for m, b in methods
        }, name
        assert ("xrecon", "simclr") in methods and any(m == "supervised" for m, _ in methods), name


def test_transforms_studies_score_the_four_families_beside_the_supervised_ceiling(tmp_path):
    """The photo study and the renders study: the same arms and training, the paper's four families on at strength
    1; on the photos only the transforms protocol (held-out photos are no training class), top-1 on the renders."""
    specs = {name: _check(Path("studies") / f"{name}.yaml", tmp_path) for name in ("transforms_cpu",
                                                                                "transforms_renders_cpu")}  # fmt: skip
    for name, (spec, configs) in specs.items():
        assert len(spec.seeds) == 3 and spec.summary.ceiling == "supervised" and spec.baseline == "vicreg", name
        methods = {(c.method.name, c.method.base if c.method.name == "xrecon" else None) for c in configs.values()}
        assert methods == {("vicreg", None), ("simclr", None), ("xrecon", "vicreg"), ("xrecon", "simclr"),
                           ("supervised", None)}, name  # fmt: skip
        for c in configs.values():
            assert all(getattr(c.augment, f).enabled and getattr(c.augment, f).strength == 1
                       for f in ("rotation", "color", "blur", "translation")), name  # fmt: skip
        assert spec.summary.metrics[0] == "transforms/mean/r2", name
    (photos, pc), (renders, rc) = specs["transforms_cpu"], specs["transforms_renders_cpu"]
    assert {c.data.source for c in pc.values()} == {"photos"} and {c.data.source for c in rc.values()} == {"renders"}
    assert photos.eval.protocols == ["transforms"] and "linear/full/top1" in renders.summary.metrics
    strip = lambda cfgs: {k: v.to_dict()["train"] for k, v in cfgs.items()}  # noqa: E731
    assert strip(pc) == strip(rc)  # the same training protocol on both sets
    bad = _study(tmp_path, base={"config": "configs/transforms_cpu.yaml"}, eval={"protocols": ["linear"]},
                 summary={"metrics": ["linear/full/top1"]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"eval.protocols \['linear'\] cannot score.*allows \['transforms'\]"):
        _check(bad, tmp_path)


def test_the_cpu_ablations_run_each_cross_view_design_on_the_transforms_protocol(tmp_path):
    """Issue 29's ablations: today's default against A (k = 4, 16, 64), B and C (0.75, 0.9), 3 seeds, on the renders
    and on the photos, with the transforms studies' training and each run's cross-view checks in the summary."""
    specs = {name: _check(Path("studies") / f"{name}.yaml", tmp_path)
             for name in ("xattn_ablation_cpu", "xattn_ablation_photos_cpu")}  # fmt: skip
    _, transforms = _check(Path("studies") / "transforms_renders_cpu.yaml", tmp_path)
    train = next(c for c in transforms.values() if c.method.name == "xrecon").to_dict()["train"]
    for name, (spec, configs) in specs.items():
        assert len(spec.seeds) == 3 and spec.baseline == "default", name
        by_arm = {k.rsplit("-s", 1)[0]: c for k, c in configs.items()}
        assert {c.method.name for c in by_arm.values()} == {"xrecon"}, name
        d = by_arm["default"].method
        assert d.xattn.residual and not d.xattn.target_code and not d.intermediate and d.target_mask == 0, name
        assert sorted(c.method.xattn.target_code for c in by_arm.values() if not c.method.xattn.residual) == [4, 16, 64]
        assert sorted(c.method.target_mask for c in by_arm.values() if c.method.target_mask) == [0.75, 0.9], name
        assert [c.method.intermediate for c in by_arm.values() if c.method.intermediate] == [[0.3333, 0.6667]], name
        assert all(c.to_dict()["train"] | {"name": "", "storage_path": "", "seed": 0}
                   == train | {"name": "", "storage_path": "", "seed": 0} for c in configs.values()), name  # fmt: skip
        assert {"val/recon_other_view_ratio", "val/recon_view2_swapped_ratio"} <= set(spec.summary.train_metrics)
    assert {c.data.source for c in specs["xattn_ablation_photos_cpu"][1].values()} == {"photos"}
    assert {c.data.source for c in specs["xattn_ablation_cpu"][1].values()} == {"renders"}


def test_runs_expand_arm_setting_seed_with_their_overrides(tmp_path):
    path = _study(tmp_path, grid={"loss.recon_weight": [0.3, 3]}, seeds=[7])
    spec, configs = _check(path, tmp_path)
    runs = expand(spec)
    assert [r.name for r in runs] == [
        "vicreg-recon_weight_0.3-s7",
        "vicreg-recon_weight_3-s7",
        "xrecon-recon_weight_0.3-s7",
        "xrecon-recon_weight_3-s7",
    ]
    assert runs[3].group == "xrecon [recon_weight=3]" and runs[3].overrides == {
        "method.name": "xrecon",
        "loss.recon_weight": 3,
    }
    cfg = configs["xrecon-recon_weight_3-s7"]
    assert cfg.loss.recon_weight == 3 and cfg.train.seed == 7 and cfg.method.name == "xrecon"
    assert cfg.train.name == "xrecon-recon_weight_3-s7" and cfg.train.storage_path == str(tmp_path / "study" / "runs")
    assert cfg.track.experiment == "t"  # every run of the study side by side in Aim


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": {"a": {"method.nmae": "vicreg"}}}, "arm 'a'.*method.nmae"),
        ({"arms": {"a": {"method.name": "byol"}}}, "arm 'a'.*method.name"),
        ({"arms": {"a b": {}}}, "arm names"),
        ({"arms": {}}, "arms"),
        ({"arms": {"a": {"train.seed": 3}}}, "arms.a.train.seed: set by the study"),
        ({"grid": {"train.name": ["x"]}}, "grid.train.name: set by the study"),
        ({"grid": {"loss.recon_weight": []}}, "grid.loss.recon_weight has no values"),
        ({"grid": {"loss.recon_weight": [-1]}}, "recon_weight=-1.*loss.recon_weight"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"seeds": []}, "seeds"),
        ({"summary": {"baseline": "simclr"}}, "summary.baseline='simclr' is not an arm"),
        ({"summary": {"ceiling": "sup"}}, "summary.ceiling='sup' is not an arm"),
        ({"summary": {"metrics": ["rotation/full/R2"]}}, "rotation/full/R2.*not reported"),
        ({"summary": {"metrics": ["linear/full/top1"]}, "eval": {"protocols": ["rotation"]}}, "linear/full/top1"),
        ({"eval": {"protocols": ["transforms"]}}, "transforms.*cannot score"),
        ({"eval": {"overrides": ["train.epochs=3"]}}, "eval.KEY=VALUE"),
        ({"eval": {"protocols": ["lineer"]}}, "eval.protocols"),
        ({"eval": {"overrides": ["eval.parts=[equi]"]}}, "rotation/full/r2.*not reported"),
        ({"eval": {"overrides": ["eval.train_rows=1"]}}, "eval.train_rows"),
        ({"seeds": [0], "extra": 1}, "extra: unknown key"),
    ],
)
def test_bad_studies_are_refused_naming_the_culprit(tmp_path, change, message):
    with pytest.raises(ConfigError, match=f"(?s){message}"):
        _check(_study(tmp_path, **change), tmp_path)


def test_eval_metric_names_are_what_eval_reports():
    three_d = eval_metric_names(["linear", "rotation", "color"], three_d=True)
    assert {"linear/full/top1", "rotation/equi/r2", "color_cos_sin/inv/r2_per_dim"} <= set(three_d)
    assert not any(m.startswith(("knn", "transforms")) for m in three_d)
    images = eval_metric_names(["transforms", "knn"], three_d=False)
    assert {"transforms/blur/r2", "transforms/mean/r2", "knn/equi/top1"} <= set(images)


def test_the_fingerprint_ignores_where_results_go_and_how_they_are_shown(tmp_path):
    a = load_study(_study(tmp_path))
    b = load_study(_study(tmp_path, storage_path="elsewhere", summary={"ceiling": "xrecon"}))
    c = load_study(_study(tmp_path, seeds=[0, 2]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def _rows():
    """vicreg (baseline) and xrecon, 3 seeds each; a ceiling arm; one run missing."""
    rows = []
    values = {"vicreg": [0.10, 0.12, 0.14], "xrecon": [0.30, 0.33, 0.36], "supervised": [0.9, 0.9, 0.9]}
    tops = {"vicreg": [0.5, 0.6, 0.7], "xrecon": [0.55, 0.65, 0.75], "supervised": [0.95, 0.95, 0.95]}
    for arm in values:
        for seed in range(3):
            rows.append(
                {
                    "run": f"{arm}-s{seed}", "arm": arm, "setting": "", "seed": seed, "status": "done",
                    "rotation/full/r2": values[arm][seed], "linear/full/top1": tops[arm][seed],
                    "random_init/rotation/full/r2": 0.2, "mean_predictor/rotation/full/r2": 0.0,
                    "random_init/linear/full/top1": 0.3, "mean_predictor/linear/full/top1": 0.1,
                    "val/recon": 0.5 if arm == "xrecon" else None,
                },
            )  # fmt: skip
    rows.append({"run": "xrecon-s3", "arm": "xrecon", "setting": "", "seed": 3, "status": "not run"})
    return rows


def _summary_spec(tmp_path):
    path = _study(
        tmp_path,
        arms={"vicreg": {}, "xrecon": {}, "supervised": {}},
        summary={"metrics": ["rotation/full/r2", "linear/full/top1"], "ceiling": "supervised", "baseline": "vicreg"},
    )
    return load_study(path)


def test_summary_statistics_marks_floors_and_ceiling(tmp_path):
    s = summarise(_rows(), _summary_spec(tmp_path))
    groups = {g["group"]: g for g in s["groups"]}
    x = groups["xrecon"]["metrics"]["rotation/full/r2"]
    assert x["n"] == 3 and x["mean"] == pytest.approx(0.33) and x["min"] == 0.30 and x["max"] == 0.36
    assert x["std"] == pytest.approx(math.sqrt(((0.03**2) * 2) / 2))  # sample std over the seeds
    assert s["baseline"] == "vicreg" and s["ceiling_mean"] == pytest.approx(
        {"rotation/full/r2": 0.9, "linear/full/top1": 0.95}
    )
    assert s["floors"]["mean_predictor"] == pytest.approx({"rotation/full/r2": 0.0, "linear/full/top1": 0.1})
    assert s["floors"]["random_init"] == pytest.approx({"rotation/full/r2": 0.2, "linear/full/top1": 0.3})
    # xrecon's seeds all lie above vicreg's: marked; its top-1 range overlaps: not marked
    assert groups["xrecon"]["marks"] == {"rotation/full/r2": ABOVE}
    # vicreg's rotation mean 0.12 is below the untrained encoder's 0.2: at or below a floor
    assert groups["vicreg"]["marks"] == {"rotation/full/r2": FLOOR_MARK}
    assert groups["supervised"]["marks"] == {"rotation/full/r2": ABOVE, "linear/full/top1": ABOVE}
    assert s["runs"] == {"total": 10, "done": 9, "missing": ["xrecon-s3"]}
    assert groups["xrecon"]["metrics"]["val/recon"]["mean"] == 0.5 and "val/recon" not in groups["vicreg"]["metrics"]
    flipped = [{**r, "rotation/full/r2": -r["rotation/full/r2"]} if "rotation/full/r2" in r and r["arm"] == "xrecon"
               else r for r in _rows()]  # fmt: skip
    below = summarise(flipped, _summary_spec(tmp_path))
    assert {g["group"]: g["marks"] for g in below["groups"]}["xrecon"]["rotation/full/r2"] == FLOOR_MARK + BELOW


def test_summary_files_table_and_figure(tmp_path):
    spec = _summary_spec(tmp_path)
    out = write_summary(_rows(), spec, tmp_path / "d", log=lambda *a: None)
    d = tmp_path / "d"
    assert not out["complete"]
    md = (d / "summary.md").read_text()
    assert (
        "| xrecon | 3 | 0.330 ± 0.030 (0.300–0.360)↑ | 0.650 ± 0.100 (0.550–0.750) |" in md
        and "untrained encoder (floor) | | 0.200 | 0.300" in md
    )
    assert "ceiling (supervised, mean) | | 0.900 | 0.950" in md and "1 of 10 runs have no result yet: xrecon-s3" in md
    assert json.loads((d / "summary.json").read_text())["groups"][1]["group"] == "xrecon"
    assert (d / "results.csv").read_text().count("\n") == 11
    from PIL import Image

    img = Image.open(d / "summary.png")
    assert img.size[0] >= 2 * img.size[1]  # two panels side by side
    assert "val/recon" in markdown(out["summary"])


def test_a_study_recorded_before_a_config_key_existed_still_resumes_and_a_changed_base_does_not(tmp_path):
    from rayeq.campaign.run import check_saved, record_of
    from rayeq.config import load_config

    spec = load_study("studies/methods_cpu.yaml")
    base = load_config(None, ["data.image_size=32"])
    record = record_of(spec, [], base)
    old = json.loads(json.dumps(record))
    for key in ("preset", "probe_inputs", "batchnorm", "sampling", "normalization"):  # keys added by issue 31
        del old["base"]["eval"][key]
    saved = tmp_path / "study.yaml"
    saved.write_text(yaml.safe_dump(old))
    check_saved(saved, record, spec, resume=True)  # the same base, as this version writes it
    changed = record_of(spec, [], load_config(None, ["data.image_size=48"]))
    with pytest.raises(ConfigError, match="different study file or base config"):
        check_saved(saved, changed, spec, resume=True)
    old["base"]["eval"]["no_such_key"] = 1  # a base this version cannot read is not the same base
    saved.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="different study file or base config"):
        check_saved(saved, record, spec, resume=True)
