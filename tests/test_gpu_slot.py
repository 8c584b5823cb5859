"""dev/gpu/: what a lent GPU machine is sent (dev/gpu/prepare -> carry.py) and the study it runs (dev/gpu/run), checked
here so the script cannot rot between the rare days a GPU is lent; `bash dev/gpu/run --rehearse` runs it end to end
on a CPU (docs/PERFORMANCE.md)."""

import importlib.util
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _carry():
    spec = importlib.util.spec_from_file_location("carry", ROOT / "dev" / "gpu" / "carry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_carry_holds_what_the_device_lacks_and_nothing_it_has():
    carry = _carry()
    pins = carry.closure()
    assert {"ray", "pydantic", "pydantic-core", "matplotlib", "psutil", "msgpack", "click"} <= set(pins)
    assert not set(pins) & carry.DEVICE_HAS  # torch, numpy, pyarrow, ... are on the device already
    import importlib.metadata as md

    assert pins["ray"] == md.version("ray") and pins["pydantic"] == md.version("pydantic")  # pinned to this venv
    # what is stripped is never Ray's own processes
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    for binary in ("core/src/ray/gcs/gcs_server", "core/src/ray/raylet/raylet"):
        assert (ray_dir / binary).is_file()
        assert not any(f"ray/{binary}".startswith(s + "/") for s in carry.STRIP), binary


def test_pack_unzips_every_wheel_strips_and_packs_one_site(tmp_path):
    carry = _carry()
    wheels = []
    for name, files in (("ray", {"ray/__init__.py": "x", "ray/rllib/big.py": "y" * 1000, "ray/core/gcs": "z"}),
                        ("click", {"click/__init__.py": "c"})):  # fmt: skip
        w = tmp_path / f"{name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            for f, text in files.items():
                z.writestr(f, text)
        wheels.append(w)
    sizes = carry.pack(wheels, tmp_path)
    with tarfile.open(tmp_path / "site.tar.xz") as t:
        names = set(t.getnames())
    assert {"ray/__init__.py", "ray/core/gcs", "click/__init__.py"} <= names
    assert not any(n.startswith("ray/rllib") for n in names)
    assert not (tmp_path / "site").exists() and sizes["packed_mb"] > 0 and sizes["unpacked_mb"] < 0.001


def test_the_slot_study_answers_the_3d_question_in_one_gpu_loan(tmp_path):
    from rayeq.campaign.spec import base_config
    from rayeq.config import IMAGE_SOURCES
    from rayeq.study.spec import check_study, load_study

    spec = load_study(ROOT / "studies" / "methods_gpu_slot.yaml")
    base, _ = base_config(spec)
    configs = check_study(spec, base, tmp_path / "s", three_d=base.data.source not in IMAGE_SOURCES)
    assert base.data.source == "synth3d" and base.data.image_size == 64 and base.model.backbone == "resnet18"
    assert {c.method.name for c in configs.values()} == {"vicreg", "xrecon", "supervised"} and len(spec.seeds) >= 2
    assert all(c.train.use_gpu and c.train.gpus_per_worker == 1 for c in configs.values())
    assert spec.summary.ceiling == "supervised" and spec.baseline == "vicreg"
    assert {"rotation", "color", "linear"} <= set(spec.eval.protocols)
    # sized to the loan: 6 runs x 5 epochs x 54 steps of 512 pairs at the H200's 11,500 images/s (PERFORMANCE.md)
    steps = len(configs) * base.train.epochs * (27_600 // base.train.batch_size)
    assert steps * base.train.batch_size * 2 / 11_500 < 240  # under 4 minutes of steps, the rest for start and eval


def test_the_run_script_checks_first_renders_there_and_summarises_whatever_finished():
    run = (ROOT / "dev" / "gpu" / "run").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "dev" / "gpu" / "run")], check=True)  # it parses
    order = [
        run.index(s)
        for s in (
            "torch.cuda.is_available()",
            "ray.init(include_dashboard",
            "data synth3d",
            " study ",
            "--summary-only",
        )
    ]
    assert order == sorted(order)  # CUDA and Ray are checked before anything costs time
    assert "studies/methods_gpu_slot.yaml" in run and '--device "$DEVICE"' in run and "DEVICE=cuda" in run
    assert "--rehearse" in run and "collect.py" in run


@pytest.mark.parametrize("summary", [True, False])
def test_collect_copies_the_results_and_sums_throughput_and_memory(tmp_path, summary):
    spec = importlib.util.spec_from_file_location("collect", ROOT / "dev" / "gpu" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    study, out = tmp_path / "study", tmp_path / "out"
    (study / "runs" / "xrecon-s0").mkdir(parents=True)
    (study / "evals").mkdir()
    (study / "evals" / "xrecon-s0.json").write_text("{}")
    if summary:
        (study / "summary.md").write_text("| arm |")
    rows = [{"epoch": 1, "images_per_sec": 9000.0, "epoch_seconds": 30.0},
            {"epoch": 2, "images_per_sec": 11000.0, "epoch_seconds": 25.0}]  # fmt: skip
    (study / "runs" / "xrecon-s0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.mkdir()
    (out / "gpu_samples.csv").write_text("1200, 50\n11600, 97\n")
    res = collect.collect(study, out)
    assert res["runs"]["xrecon-s0"] == {"epochs": 2, "images_per_sec_per_epoch": [9000.0, 11000.0],
                                        "images_per_sec_after_epoch_1": 11000.0, "train_seconds": 55.0}  # fmt: skip
    assert res["gpu_memory"] == {"peak_mib": 11600.0, "samples": 2}
    assert (out / "evals" / "xrecon-s0.json").is_file() and (out / "summary.md").is_file() == summary
