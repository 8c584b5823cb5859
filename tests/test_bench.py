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
    res = bench.bench_throughput("xrecon", size=32, batch=8, steps=3, repeats=2, threads=1, skip_ray=True,
                                 out=str(out), log=lambda *a: None)  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["plain"]["median"] == pytest.approx(res["plain"]["median"]) and res["plain"]["median"] > 0
    assert len(saved["plain"]["repeats"]) == 2 and saved["torch_threads"] == 1
    tx, tb = saved["step_time_s"]["xrecon"]["median"], saved["step_time_s"]["vicreg"]["median"]
    assert tx > 0 and tb > 0 and math.isclose(saved["recon_overhead_pct"], 100 * (tx / tb - 1))
    with pytest.raises(ConfigError, match="--overwrite"):
        bench.check_out(str(out), overwrite=False)
    bench.check_out(str(out), overwrite=True)


def test_bench_ray_path_and_data(tiny_builtin, ray_session):
    res = bench.ray_path(bench.bench_config("vicreg", 32, 8, 1), repeats=1, log=lambda *a: None)
    assert len(res["repeats"]) == 1 and res["median"] > 0
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
    assert bench.data_resources(2, 1, None) == (1, 0.7)  # 1 training thread, 1 data CPU (0.3: reads, validation)
    assert bench.data_resources(16, 1, 14) == (14, 1.0)
    with pytest.raises(ConfigError, match="leaves no CPU for data"):
        bench.data_resources(2, 2, None)
    assert bench.bf16_peak("NVIDIA H200") == 989.0 and bench.bf16_peak("some CPU") is None


@pytest.mark.slow
def test_step_flops_scale_with_the_batch(tiny_builtin):
    small = bench.step_flops(bench.bench_config("vicreg", 32, 4, 1), "cpu")
    large = bench.step_flops(bench.bench_config("vicreg", 32, 8, 1), "cpu")
    assert small > 1e9 and 1.8 < large / small < 2.2  # forward + backward of the step, linear in the batch
