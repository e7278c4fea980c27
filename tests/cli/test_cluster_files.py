"""cluster/: the deployment files parse, have the shape their tools read, agree with each other, and
submit.sh builds the documented `ray job submit` command. No Ray cluster, no network: `ray` is a stub."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SUBMIT = CLUSTER / "submit.sh"
YAMLS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def load(rel: str) -> dict:
    return yaml.safe_load((CLUSTER / rel).read_text())


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---------------------------------------------------------------- every YAML


def test_the_expected_files_exist():
    for rel in ("ray-cluster.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                "kuberay/pvc.yaml", "submit.sh", "Dockerfile", "README.md"):
        assert (CLUSTER / rel).is_file(), rel


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CLUSTER)) for p in YAMLS])
def test_every_yaml_parses_to_a_mapping(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


# ---------------------------------------------------------------- ray up


def test_ray_up_config_has_a_cpu_head_and_gpu_workers():
    cfg = load("ray-cluster.yaml")
    assert cfg["cluster_name"]
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types
    assert types[head]["resources"].get("GPU", 0) == 0, "no GPU work may be scheduled on the head"
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "needs at least one GPU worker type"
    for name in gpu_types:
        assert types[name]["max_workers"] >= 1 and types[name].get("min_workers", 0) >= 0
    assert sum(types[n].get("min_workers", 0) for n in types) <= cfg["max_workers"]


def test_ray_up_start_commands():
    cfg = load("ray-cluster.yaml")
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--include-dashboard=true" in head
    assert "--dashboard-host=127.0.0.1" in head, "the job API is reached through `ray dashboard`'s SSH tunnel"
    assert "0.0.0.0" not in head + " ".join(cfg["worker_start_ray_commands"])
    assert "--num-gpus=0" in head
    head_cpus = cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"]
    assert f"--num-cpus={head_cpus}" in head, "ray start and the node type must agree on the head's CPUs"
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


def test_ray_up_config_sets_offline_weights_and_auth_on_every_node():
    cfg = load("ray-cluster.yaml")
    opts = " ".join(cfg["docker"]["run_options"])
    assert "-e HF_HUB_OFFLINE=1" in opts
    assert "-e HF_HOME=/mnt/shared/hf" in opts
    assert "-v /mnt/shared:/mnt/shared" in opts
    assert re.search(r"-e RAY_AUTH_MODE=(token|disabled)\b", opts), "RAY_AUTH_MODE must be set on every node"
    if "RAY_AUTH_MODE=token" in opts:
        assert "~/.ray/auth_token" in cfg["file_mounts"], "token mode needs the token on every node"


def test_ray_up_config_passes_rays_own_validation():
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = util.prepare_config(copy.deepcopy(load("ray-cluster.yaml")))  # merges Ray's AWS defaults
    util.validate_config(cfg)  # Ray's ray-schema.json plus its cross-field checks


# ---------------------------------------------------------------- KubeRay


def test_raycluster_has_a_head_and_a_gpu_worker_group():
    rc = load("kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert head["template"]["spec"]["containers"]
    workers = spec["workerGroupSpecs"]
    assert workers
    gpu_groups = [g for g in workers
                  if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "a worker group must request nvidia.com/gpu"
    for g in workers:
        assert g["groupName"] and g["minReplicas"] <= g["maxReplicas"]
    for g in [head, *workers]:  # KubeRay's rayStartParams is map[string]string
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), g["rayStartParams"]


def test_raycluster_pods_mount_the_shared_claim_and_run_offline():
    spec = load("kuberay/raycluster.yaml")["spec"]
    claim = load("kuberay/pvc.yaml")["metadata"]["name"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claim in claims.values()
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].startswith("/mnt/shared")
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert "/mnt/shared" in mounts.values()
            assert all(mounts[n] for n in claims if n in mounts)


def test_pvc_is_read_write_many():
    assert load("kuberay/pvc.yaml")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_runs_db3d_sweep_and_shuts_down():
    job = load("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "db3d sweep" in spec["entrypoint"]
    assert "sweep=paper_eval" in spec["entrypoint"] and "out=s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "pip" not in runtime_env and "conda" not in runtime_env, "the image carries the dependencies"
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_rayjob_embeds_the_raycluster_spec_unchanged():
    assert load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"] == load("kuberay/raycluster.yaml")["spec"]


def test_rayjob_env_matches_runtime_env_yaml():
    job_env = yaml.safe_load(load("kuberay/rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"]
    assert job_env == load("runtime_env.yaml")["env_vars"]


# ---------------------------------------------------------------- runtime_env


def test_runtime_env_shape():
    env = load("runtime_env.yaml")
    assert env["working_dir"] == "."
    excludes = {e.strip("/") for e in env["excludes"]}
    assert {".venv", ".git", "outputs"} <= excludes
    assert "pip" not in env and "conda" not in env, "the image carries the dependencies; see the comment"
    for key in ("HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS"):
        assert key in env["env_vars"], key
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants env_vars values as strings"


def test_runtime_env_is_accepted_by_ray():
    runtime_env = pytest.importorskip("ray.runtime_env")
    runtime_env.RuntimeEnv(**load("runtime_env.yaml"))


# ---------------------------------------------------------------- image and consistency


def test_image_pins_match_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    docker = (CLUSTER / "Dockerfile").read_text()
    for name in ("torch==", "torchvision==", "ray["):
        pin = next(d for d in deps if d.startswith(name))
        assert f'"{pin}"' in docker, f"cluster/Dockerfile must pin {pin} like pyproject.toml"


def test_every_node_uses_one_image():
    images = {load("ray-cluster.yaml")["docker"]["image"]}
    images |= {c["image"] for c in containers(load("kuberay/raycluster.yaml")["spec"])}
    assert len(images) == 1, images


# ---------------------------------------------------------------- submit.sh

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

STUB = """#!/usr/bin/env bash
printf '%s' "$PWD" > "$STUB_DIR/cwd"
printf '%s' "${RAY_AUTH_MODE-<unset>}" > "$STUB_DIR/auth_mode"
printf '%s\\0' "$@" > "$STUB_DIR/argv"
echo x >> "$STUB_DIR/calls"
if [[ -n "${STUB_NO_AGENT:-}" ]] && (( $(wc -l < "$STUB_DIR/calls") <= STUB_NO_AGENT )); then
    echo "RuntimeError: Request failed with status code 500: No available agent to submit job, please try again later."
    exit 1
fi
exit "${STUB_RC:-0}"
"""


@pytest.fixture
def stub(tmp_path):
    """A PATH whose `ray` records its arguments, working directory and RAY_AUTH_MODE."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ray").write_text(STUB)
    (bindir / "ray").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home), "STUB_DIR": str(tmp_path),
           "RAY_ADDRESS": "http://head:8265", "LANG": "C.UTF-8"}

    def run(*args, **extra_env):
        merged = {**env, **extra_env}
        merged = {k: v for k, v in merged.items() if v is not None}
        return subprocess.run(["bash", str(SUBMIT), *args], cwd=tmp_path, env=merged,
                              capture_output=True, text=True, timeout=30)

    def argv():
        path = tmp_path / "argv"
        return path.read_text().split("\0")[:-1] if path.exists() else None

    run.argv, run.home = argv, home
    run.cwd = lambda: (tmp_path / "cwd").read_text()
    run.auth_mode = lambda: (tmp_path / "auth_mode").read_text()
    run.calls = lambda: len((tmp_path / "calls").read_text().split()) if (tmp_path / "calls").exists() else 0
    return run


@needs_bash
def test_submit_sh_is_valid_bash_and_executable():
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)
    assert os.access(SUBMIT, os.X_OK)
    assert "set -euo pipefail" in SUBMIT.read_text()


@needs_bash
def test_submit_without_arguments_prints_usage_and_fails(stub):
    res = stub()
    assert res.returncode != 0
    assert "usage:" in res.stderr
    assert stub.argv() is None, "ray must not be called"


@needs_bash
def test_submit_help_exits_zero(stub):
    res = stub("--help")
    assert res.returncode == 0 and "usage:" in res.stdout


@needs_bash
def test_submit_builds_the_ray_job_submit_command(stub):
    res = stub("demo", "s3://bucket/db3d/demo", "preset=smoke", "prompt=a sks dog sleeping")
    assert res.returncode == 0, res.stderr
    assert stub.argv() == [
        "job", "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml",
        "--entrypoint-num-cpus", "1",
        "--", "db3d", "sweep", "sweep=demo", "out=s3://bucket/db3d/demo",
        "preset=smoke", "prompt=a sks dog sleeping",  # one argument, spaces kept
    ]
    assert Path(stub.cwd()).resolve() == REPO, "working_dir '.' must be the repository root"


@needs_bash
def test_submit_passes_ray_options_before_the_entrypoint(stub):
    res = stub("--no-wait", "--submission-id", "db3d-demo-1", "--entrypoint-num-gpus=0",
               "demo", "/mnt/shared/outputs/demo")
    assert res.returncode == 0, res.stderr
    argv = stub.argv()
    sep = argv.index("--")
    assert {"--no-wait", "--entrypoint-num-gpus=0"} <= set(argv[:sep])
    assert argv[argv.index("--submission-id") + 1] == "db3d-demo-1"
    assert argv[sep:] == ["--", "db3d", "sweep", "sweep=demo", "out=/mnt/shared/outputs/demo"]


@needs_bash
@pytest.mark.parametrize("args, message", [
    (["demo", "outputs/demo"], "relative path"),
    (["/etc/sweep.yaml", "/mnt/shared/x"], "absolute path"),
    (["sweeps/no_such_sweep.yaml", "/mnt/shared/x"], "not found"),
    (["--bogus", "demo", "/mnt/shared/x"], "unknown option"),
    (["demo"], "usage:"),
])
def test_submit_rejects_bad_arguments_before_calling_ray(stub, args, message):
    res = stub(*args)
    assert res.returncode != 0
    assert message in res.stderr
    assert stub.argv() is None


@needs_bash
def test_submit_needs_an_address(stub):
    res = stub("demo", "/mnt/shared/x", RAY_ADDRESS=None)
    assert res.returncode != 0 and "RAY_ADDRESS" in res.stderr
    assert stub.argv() is None
    assert stub("--address=http://head:8265", "demo", "/mnt/shared/x", RAY_ADDRESS=None).returncode == 0


@needs_bash
def test_submit_enables_token_auth_when_a_token_exists(stub):
    assert stub("demo", "/mnt/shared/x").returncode == 0
    assert stub.auth_mode() == "<unset>", "no token anywhere: leave RAY_AUTH_MODE alone"
    (stub.home / ".ray").mkdir()
    (stub.home / ".ray" / "auth_token").write_text("secret")
    assert stub("demo", "/mnt/shared/x").returncode == 0
    assert stub.auth_mode() == "token"
    assert stub("demo", "/mnt/shared/x", RAY_AUTH_MODE="disabled").returncode == 0
    assert stub.auth_mode() == "disabled", "an explicit RAY_AUTH_MODE wins"


def test_readme_documents_the_submit_command():
    text = (CLUSTER / "README.md").read_text()
    assert "ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml --entrypoint-num-cpus 1" in text
    for needle in ("ray up cluster/ray-cluster.yaml", "kubectl apply -f cluster/kuberay/raycluster.yaml",
                   "ray job logs -f", "Tuner.restore", "RAY_AUTH_MODE", "HF_HUB_OFFLINE=1"):
        assert needle in text, needle


@needs_bash
def test_submit_waits_for_the_heads_job_agent_then_submits(stub):
    res = stub("demo", "/mnt/shared/x", STUB_NO_AGENT="3", DB3D_SUBMIT_PAUSE="0")
    assert res.returncode == 0, res.stderr
    assert stub.calls() == 4 and res.stderr.count("job agent is not up yet") == 3
    assert "attempt 3 of 30" in res.stderr


@needs_bash
def test_submit_gives_up_on_an_agent_that_never_comes_with_a_clear_message(stub):
    res = stub("demo", "/mnt/shared/x", STUB_NO_AGENT="99", DB3D_SUBMIT_PAUSE="0", DB3D_SUBMIT_ATTEMPTS="5")
    assert res.returncode == 1 and stub.calls() == 5
    assert "did not come up in 5 attempts" in res.stderr and "no job was submitted" in res.stderr


@needs_bash
def test_submit_does_not_retry_other_failures(stub):
    res = stub("demo", "/mnt/shared/x", STUB_RC="3", DB3D_SUBMIT_PAUSE="0")
    assert res.returncode == 3 and stub.calls() == 1
    assert stub("demo", "/mnt/shared/x", DB3D_SUBMIT_ATTEMPTS="zero").returncode == 2
