"""`rayeq bench` runs end to end on a tiny built-in set and reports every figure it promises (the
figures themselves are measured by the command, not asserted against targets here)."""

import json
import math

import pytest

from rayeq import bench
from rayeq.config import ConfigError


@pytest.mark.slow
def test_bench_throughput_plain_loop_and_reconstruction_overhead(tiny_builtin):
    out = tiny_builtin / "bench.json"
    lines = []
    res = bench.bench_throughput("xrecon", size=32, batch=8, steps=3, epochs=3, val_steps=1, repeats=2, threads=1,
                                 skip_ray=True, out=str(out), log=lines.append)  # fmt: skip
    epochs = [line.split(":")[0].strip() for line in lines if "(a) epoch" in line]
    assert epochs == ["(a) epoch 1/3", "(a) epoch 2/3", "(a) epoch 3/3"]  # progress as the run goes
    saved = json.loads(out.read_text())
    assert saved["plain"]["median"] == pytest.approx(res["plain"]["median"]) and res["plain"]["median"] > 0
    assert len(saved["plain"]["repeats"]) == 2 and saved["torch_threads"] == 1  # epochs 2 and 3: the first warms up
    whole = saved["plain"]["whole_run"]
    assert whole["images"] == 2 * 8 * 3 * 3
    assert whole["images_per_sec"] == pytest.approx(whole["images"] / whole["seconds"])
    # the whole run pays the loaders' start, validation and checkpoints: slower than its steady epochs
    assert whole["images_per_sec"] < saved["plain"]["median"]
    assert 0 < whole["outside_epochs_s"] < whole["seconds"]
    tx, tb = saved["step_time_s"]["xrecon"]["median"], saved["step_time_s"]["vicreg"]["median"]
    assert tx > 0 and tb > 0 and math.isclose(saved["recon_overhead_pct"], 100 * (tx / tb - 1))
    with pytest.raises(ConfigError, match="--epochs 1: at least 2"):
        bench.bench_throughput("xrecon", epochs=1, skip_ray=True, log=lambda *a: None)
    with pytest.raises(ConfigError, match="--overwrite"):
        bench.check_out(str(out), overwrite=False)
    bench.check_out(str(out), overwrite=True)


@pytest.mark.full  # whole Ray runs timed: the second tier
def test_bench_ray_path_and_data(tiny_builtin, ray_session):
    lines = []
    res = bench.ray_path(bench.bench_config("vicreg", 32, 8, 1), steps=2, epochs=2, val_steps=1, log=lambda *a: None,
                         progress=lines.append)  # fmt: skip
    assert any(line.strip().startswith("(b) epoch 1/2: ") for line in lines), lines  # progress as the run logs epochs
    assert 0 < res["whole_run"]["outside_epochs_s"] < res["whole_run"]["seconds"]
    assert len(res["repeats"]) == 1 and res["median"] > 0
    assert res["whole_run"]["images"] == 2 * 8 * 2 * 2 and 0 < res["whole_run"]["images_per_sec"] < res["median"]
    floor = bench.ray_train_floor(bench.bench_config("vicreg", 32, 8, 1), repeats=1)
    # an empty trainer's start and end is part of every Ray run: shorter than this run, and not free
    assert 0.5 < floor["seconds"] < res["whole_run"]["seconds"] and len(floor["repeats"]) == 1
    assert bench.break_even(10.0) == pytest.approx(190.0)  # 190 / (190 + 10) = 0.95
    cpu = res["coordinator_cpu"]  # the run's SplitCoordinator processes are on this node: their CPU was sampled
    assert cpu["samples"] >= 2 and cpu["whole_run_cores"] is not None and 0 <= cpu["whole_run_cores"] < 2
    data = bench.bench_data(size=32, batch=8, seconds=2, log=lambda *a: None, feed=1000, sizes=(16, 32),
                            render_sizes=(32,), synth3d_objects=2)  # fmt: skip
    for key in ("synth3d_images_per_sec", "training_pairs_per_sec", "data_over_training_ratio"):
        assert data[key] > 0, key
    assert data["render"]["sizes"]["32"]["torch_cpu_images_per_s_per_core"] > 0
    assert data["ray_data_pairs_per_sec"]["median"] > 0 and data["ray_data_actors"] == 1  # CPUs - 1 on 2 cores
    per_core = data["pairs_per_s_per_core"]
    assert set(per_core) == {"builtin-decoded", "builtin-png", "jpeg-256", "jpeg-256-decoded"}
    assert set(per_core["builtin-decoded"]) == {"16", "32"} and set(per_core["jpeg-256"]) == {"32"}
    assert all(rate > 0 for by in per_core.values() for rate in by.values())
    cores = data["feed"]["cores_needed"]
    assert cores["jpeg-256"]["32"] == math.ceil(1000 / per_core["jpeg-256"]["32"])


def test_cpu_split_between_training_and_data():
    assert bench.data_resources(2, 1, None) == (1, 0.9)  # 1 training thread, 1 data CPU (0.1: validation)
    assert bench.data_resources(16, 1, 14) == (14, 1.0)
    with pytest.raises(ConfigError, match="leaves no CPU for data"):
        bench.data_resources(2, 2, None)
    assert bench.bf16_peak("NVIDIA H200") == 989.0 and bench.bf16_peak("some CPU") is None


@pytest.mark.slow
def test_step_flops_scale_with_the_batch(tiny_builtin):
    small = bench.step_flops(bench.bench_config("vicreg", 32, 4, 1), "cpu")
    large = bench.step_flops(bench.bench_config("vicreg", 32, 8, 1), "cpu")
    assert small > 1e9 and 1.8 < large / small < 2.2  # forward + backward of the step, linear in the batch
