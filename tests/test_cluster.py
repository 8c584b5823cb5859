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
    # Aim is an extra: the image must ask for it, since the cluster configs run `aim server` on the head
    assert any(line.startswith("RUN pip install") and '".[aim]"' in line for line in lines), lines


def test_no_server_is_bound_beyond_the_cluster():
    """Aim's tracking server has no authentication: nothing rayeq ships binds it (or anything else) to every
    interface; on the launcher head it listens on the private address, and Aim stays below 4.x."""
    shipped = [*Path("cluster").rglob("*"), *Path("rayeq").rglob("*.py")]
    for path in (p for p in shipped if p.is_file()):
        assert "0.0.0.0" not in path.read_text(), path
    cfg = yaml.safe_load(Path("cluster/aws-gpu.yaml").read_text())
    aim = [c for c in cfg["head_start_ray_commands"] if "aim server" in c]
    assert len(aim) == 1 and "--host \"$(hostname -I | cut -d' ' -f1)\"" in aim[0]
    assert '"aim>=3.29,<4;' in Path("pyproject.toml").read_text()


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


# The fields KubeRay's CRDs (ray.io/v1) require, with their types and enums, as a JSON schema: what
# `kubectl apply` would refuse, checked here without a Kubernetes cluster.
_CONTAINERS = {
    "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["name", "image"],
              "properties": {"name": {"type": "string"}, "image": {"type": "string"}}},
}  # fmt: skip
_POD_TEMPLATE = {
    "type": "object", "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"], "properties": {"containers": _CONTAINERS}}},
}  # fmt: skip
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _ray_io(kind: str, spec: dict) -> dict:
    """A ray.io/v1 object of `kind`: the envelope every KubeRay resource has, around its spec's schema."""
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind},
                       "metadata": {"type": "object", "required": ["name"]}, "spec": spec},
    }  # fmt: skip


RAYCLUSTER_SCHEMA = _ray_io(
    "RayCluster",
    {
            "type": "object", "required": ["headGroupSpec"],
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "authOptions": {"type": "object", "properties": {"mode": {"enum": ["disabled", "token"]},
                                                                 "secretName": {"type": "string"}}},
                "autoscalerOptions": {"type": "object", "properties": {
                    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                    "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}}},
                "headGroupSpec": {
                    "type": "object", "required": ["template"],
                    "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                   "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE},
                },
                "workerGroupSpecs": {"type": "array", "items": {
                    "type": "object", "required": ["groupName", "template"],
                    "properties": {"groupName": {"type": "string"}, "rayStartParams": _STR_MAP,
                                   "replicas": {"type": "integer", "minimum": 0},
                                   "minReplicas": {"type": "integer", "minimum": 0},
                                   "maxReplicas": {"type": "integer", "minimum": 0},
                                   "template": _POD_TEMPLATE}}},
            },
        },
)  # fmt: skip
RAYJOB_SCHEMA = _ray_io(
    "RayJob",
    {
            "type": "object", "required": ["entrypoint"],
            "oneOf": [{"required": ["clusterSelector"]}, {"required": ["rayClusterSpec"]}],
            "properties": {"entrypoint": {"type": "string"}, "clusterSelector": _STR_MAP,
                           "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                           "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                           "backoffLimit": {"type": "integer", "minimum": 0},
                           "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                           "submitterPodTemplate": _POD_TEMPLATE},
        },
)  # fmt: skip


def _kuberay():
    docs = list(yaml.safe_load_all(Path("cluster/kuberay/raycluster.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs if d["kind"] != "PersistentVolumeClaim"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert len(by_kind) + len(claims) == len(docs)
    spec = by_kind["RayCluster"]["spec"]
    for pod in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        used = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert used <= claims, used - claims  # every volume the pods mount is defined here
    return by_kind, yaml.safe_load(Path("cluster/kuberay/rayjob.yaml").read_text())


def _pins() -> dict[str, str]:
    pins = dict(line.split("==") for line in Path("constraints.txt").read_text().splitlines() if "==" in line)
    return {k.strip(): v.strip() for k, v in pins.items()}


def test_kuberay_manifests_have_what_kuberay_requires_and_match_rayeqs_ray():
    import jsonschema

    by_kind, job = _kuberay()
    cluster = by_kind["RayCluster"]
    jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)
    jsonschema.validate(job, RAYJOB_SCHEMA)
    broken = {**cluster, "spec": {k: v for k, v in cluster["spec"].items() if k != "headGroupSpec"}}
    with pytest.raises(jsonschema.ValidationError, match="headGroupSpec"):
        jsonschema.validate(broken, RAYCLUSTER_SCHEMA)

    ray_version = _pins()["ray"]
    assert cluster["spec"]["rayVersion"] == ray_version
    assert f"ray:{ray_version}-" in Path("cluster/Dockerfile").read_text()
    spec = cluster["spec"]
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"]),
            job["spec"]["submitterPodTemplate"]]  # fmt: skip
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {f"REGISTRY/rayeq:ray{ray_version}"}, images  # one image, built from cluster/Dockerfile

    gpu = spec["workerGroupSpecs"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and gpu["minReplicas"] == 0 and 1 <= gpu["maxReplicas"] <= 8
    assert spec["enableInTreeAutoscaling"] and spec["autoscalerOptions"]["idleTimeoutSeconds"] <= 900
    # every Ray container sees the shared volume and keeps rayeq's cache on it
    for p in pods[:2]:
        ray_c = p["spec"]["containers"][0]
        assert {"name": "RAYEQ_CACHE", "value": "/mnt/shared/cache"} in ray_c["env"]
        assert any(m["mountPath"] == "/mnt/shared" for m in ray_c["volumeMounts"])
    # the job runs a sweep that ships in the image, on this cluster
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["rayeq", "sweep"] and Path(entry[2]).is_file() and "--autoscaling" in entry
    from rayeq.campaign.spec import base_config
    from rayeq.sweep.spec import load_sweep

    sets = [entry[i + 1] for i, word in enumerate(entry) if word == "--set"]
    assert sets and base_config(load_sweep(entry[2]), sets)  # the sweep and its --set keys are valid
    assert "COPY --chown=ray sweeps ./sweeps" in Path("cluster/Dockerfile").read_text()


def test_kuberay_lets_in_only_the_clusters_own_pods():
    by_kind, job = _kuberay()
    spec = by_kind["RayCluster"]["spec"]
    assert spec["authOptions"]["mode"] == "token"
    secret = spec["authOptions"]["secretName"]
    env = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in env
    assert {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "auth_token"}}} in env
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP" and by_kind["Service"]["spec"]["type"] == "ClusterIP"
    aim = [c for c in spec["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "aim"][0]
    assert '--host "$POD_IP"' in aim["command"][-1]
    policy = by_kind["NetworkPolicy"]["spec"]
    name = by_kind["RayCluster"]["metadata"]["name"]
    assert policy["podSelector"]["matchLabels"]["ray.io/cluster"] == name and policy["policyTypes"] == ["Ingress"]
    aim_rule = [r for r in policy["ingress"] if {"port": 53800, "protocol": "TCP"} in r["ports"]]
    assert aim_rule == [{"from": [{"podSelector": {"matchLabels": {"ray.io/cluster": name}}}],
                         "ports": [{"port": 53800, "protocol": "TCP"}]}]  # fmt: skip


@pytest.mark.parametrize("path", ["cluster/aws-gpu.yaml", "cluster/gcp-gpu.yaml"])
def test_launcher_configs_turn_token_auth_on_and_share_storage_with_the_containers(path):
    cfg = yaml.safe_load(Path(path).read_text())
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    opts = " ".join(cfg["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in opts and "-v /mnt/shared:/mnt/shared" in opts
    assert "-e RAYEQ_CACHE=/mnt/shared/cache" in opts
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    # these commands run on the nodes: a variable of the user's shell would be empty there (Ray sets RAY_HEAD_IP)
    import re

    commands = [c for k in ("initialization_commands", "setup_commands", "head_start_ray_commands",
                            "worker_start_ray_commands") for c in cfg[k]]  # fmt: skip
    assert {v for c in commands for v in re.findall(r"\$\{?([A-Za-z_]\w*)", c)} <= {"RAY_HEAD_IP"}


def test_the_console_keeps_relaying_after_a_relay_call_fails_once():
    """A worker's lines reach the driver's console while the run goes on, also when one call to the relay actor
    failed (its start outlasted the call's timeout on a busy machine): the thread tries again, it does not stop."""
    import time
    from types import SimpleNamespace

    from rayeq.cluster import Console

    said, pending = [], ["epoch 1/4 step 10/40 ..."]

    class FlakyRay:
        calls = 0

        def get_runtime_context(self):
            return SimpleNamespace(get_node_id=lambda: "ab" * 28)

        def remote(self, num_cpus=0):
            take = SimpleNamespace(remote=lambda: "ref")
            actor = SimpleNamespace(take=take)
            return lambda cls: SimpleNamespace(options=lambda **kw: SimpleNamespace(remote=lambda: actor))

        def is_initialized(self):
            return True

        def get(self, ref, timeout):
            self.calls += 1
            if self.calls == 1:
                raise TimeoutError("the relay actor is still starting")
            lines = list(pending)
            pending.clear()
            return lines

    console = Console(FlakyRay(), say=said.append, interval=0.01)
    try:
        deadline = time.time() + 5
        while not said and time.time() < deadline:
            time.sleep(0.01)
        assert said == ["epoch 1/4 step 10/40 ..."]  # relayed by the thread, before close()
    finally:
        console.stop.set()
