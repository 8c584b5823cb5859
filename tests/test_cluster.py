"""The cluster launcher config passes Ray's own validation offline, and the image builds from
files that exist."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config


def test_cluster_yaml_is_valid_for_ray_up():
    cfg = yaml.safe_load(Path("cluster/aws-gpu.yaml").read_text())
    full = fillout_defaults(cfg)
    validate_config(full)
    assert full["head_node_type"] == "head" and full["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("--dashboard-host=127.0.0.1" in c for c in full["head_start_ray_commands"])  # dashboard on loopback
    broken = dict(cfg, head_node_type="nohead")
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(fillout_defaults(broken))


def test_dockerfile_copies_what_exists_and_pins_the_stack():
    lines = Path("cluster/Dockerfile").read_text().splitlines()
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]].endswith("ray:2.60.0-py311-gpu")
    for line in lines:
        if line.startswith("COPY"):
            for src in line.split()[2:-1]:
                assert Path(src).exists(), src
    assert any("-c constraints.txt" in line for line in lines)


def test_no_server_is_bound_beyond_the_cluster():
    """Aim's tracking server has no authentication: nothing rayeq ships binds it (or anything else) to every
    interface; on the launcher head it listens on the private address, and Aim stays below 4.x."""
    shipped = [*Path("cluster").rglob("*"), *Path("rayeq").rglob("*.py")]
    for path in (p for p in shipped if p.is_file()):
        assert "0.0.0.0" not in path.read_text(), path
    cfg = yaml.safe_load(Path("cluster/aws-gpu.yaml").read_text())
    aim = [c for c in cfg["head_start_ray_commands"] if "aim server" in c]
    assert len(aim) == 1 and "--host \"$(hostname -I | cut -d' ' -f1)\"" in aim[0]
    assert '"aim>=3.29,<4"' in Path("pyproject.toml").read_text()


def test_gcp_config_is_valid_for_ray_up():
    cfg = yaml.safe_load(Path("cluster/gcp-gpu.yaml").read_text())
    full = fillout_defaults(cfg)
    validate_config(full)
    gpu = full["available_node_types"]["gpu_worker"]
    assert full["provider"]["type"] == "gcp" and gpu["resources"]["GPU"] == 1 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["guestAccelerators"][0]["acceleratorCount"] == 1
    assert {"onHostMaintenance": "TERMINATE"} in gpu["node_config"]["scheduling"]  # GPU VMs cannot live-migrate
    assert any("--dashboard-host=127.0.0.1" in c for c in full["head_start_ray_commands"])
    assert full["idle_timeout_minutes"] <= 15 and full["max_workers"] <= 8  # what bounds the bill
