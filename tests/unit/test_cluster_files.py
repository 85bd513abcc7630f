"""Every file in cluster/ loads, and says what a GPU cluster needs. No Ray, no network."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftray.config import load_spec
from tests.conftest import ROOT, SPECS

CLUSTER = ROOT / "cluster"
CLUSTER_FILES = sorted(CLUSTER.iterdir())
SUBMIT = CLUSTER / "submit.sh"


def _yaml(name: str) -> list[Any]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def _rayjob() -> dict[str, Any]:
    (doc,) = _yaml("rayjob.yaml")
    return doc


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["template"]["spec"]["containers"]


def _all_containers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in _containers(group)]


def _env_without_ray_address() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_cluster_file_loads(path: Path) -> None:
    text = path.read_text()
    assert text.strip(), f"{path.name} is empty"
    if path.suffix in (".yaml", ".yml"):
        docs = list(yaml.safe_load_all(text))
        assert docs and all(isinstance(d, dict) for d in docs), path.name
    elif path.suffix == ".sh":
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert path.stat().st_mode & stat.S_IXUSR, f"{path.name} is not executable"
    elif path.name == "Dockerfile":
        assert text.lstrip().startswith(("#", "FROM", "ARG")), "a Dockerfile starts with FROM"
    else:
        assert path.suffix == ".md", f"no check for {path.name}; add one here"


def test_cluster_folder_has_what_the_readme_promises() -> None:
    names = {p.name for p in CLUSTER_FILES}
    expected = {"Dockerfile", "README.md", "ray-cluster.yaml", "rayjob.yaml"}
    expected |= {"runtime_env.yaml", "submit.sh"}
    assert expected <= names


def test_dockerfile_installs_the_gpu_extra_and_keeps_token_auth() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert ".[gpu]" in text
    assert "RAY_AUTH_MODE=token" in text
    assert "UNSLOTH_COMPILE_LOCATION=/tmp/" in text


def test_runtime_env_leaves_local_state_behind_and_stops_gracefully() -> None:
    (env,) = _yaml("runtime_env.yaml")
    assert env["working_dir"] == "."
    assert {".venv", ".git", "mlflow.db", "mlruns", "ray_results"} <= set(env["excludes"])
    env_vars = env["env_vars"]
    assert env_vars["RAY_JOB_STOP_SIGNAL"] == "SIGINT"
    assert int(env_vars["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60
    assert Path(env_vars["UNSLOTH_COMPILE_LOCATION"]).is_absolute()
    # Ray reads env_vars as strings only.
    assert all(isinstance(v, str) for v in env_vars.values())
    # submit.sh appends MLFLOW_TRACKING_URI to a copy; that needs env_vars to come last.
    assert list(env)[-1] == "env_vars"


def test_rayjob_runtime_env_mirrors_runtime_env_yaml() -> None:
    (env,) = _yaml("runtime_env.yaml")
    assert yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"]) == env


GPU_SPECS = [p for p in sorted(SPECS.glob("*.yaml")) if load_spec(p).name.endswith("-gpu")]


def test_there_are_gpu_specs() -> None:
    assert len(GPU_SPECS) >= 2


@pytest.mark.parametrize("path", GPU_SPECS, ids=lambda p: p.name)
def test_gpu_spec_asks_for_one_gpu_per_trial(path: Path) -> None:
    spec = load_spec(path)
    assert spec.resources_per_trial.gpu == 1
    assert spec.tracking.uri is None, "on a cluster MLFLOW_TRACKING_URI names the server"


def test_rayjob_gpu_workers_get_one_gpu_each() -> None:
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("ftray sweep search_spaces/")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_groups = [
        g
        for g in workers
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))
    ]
    assert gpu_groups
    for group in gpu_groups:
        for container in _containers(group):
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_rayjob_keeps_token_auth_and_secrets_out_of_the_manifest() -> None:
    containers = _all_containers(_rayjob())
    tracking = []
    for container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        if "MLFLOW_TRACKING_URI" in env:
            tracking.append(env["MLFLOW_TRACKING_URI"])
    assert tracking, "some container (the head, which runs the driver) needs the tracking URI"
    for entry in tracking:
        assert "value" not in entry, "MLFLOW_TRACKING_URI must come from a Secret"
        assert "secretKeyRef" in entry["valueFrom"]


def test_launcher_gpu_worker_declares_one_gpu() -> None:
    (config,) = _yaml("ray-cluster.yaml")
    types = config["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] == 1
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key


def test_submit_needs_ray_address() -> None:
    result = subprocess.run(
        [str(SUBMIT), "search_spaces/trigger_llama_gpu.yaml"],
        cwd=ROOT,
        env=_env_without_ray_address(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "RAY_ADDRESS" in result.stderr


def _fake_ray(tmp_path: Path) -> Path:
    """A `ray` that prints its arguments, RAY_AUTH_MODE and the runtime env file it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ray"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "$FAKE_RAY_OUT/args"\n'
        'echo "$RAY_AUTH_MODE" > "$FAKE_RAY_OUT/auth_mode"\n'
        "prev=\n"
        'for a in "$@"; do\n'
        '  [[ "$prev" == --runtime-env ]] && cp "$a" "$FAKE_RAY_OUT/runtime_env.yaml"\n'
        '  prev="$a"\n'
        "done\n"
        "exit 0\n"
    )
    fake.chmod(0o755)
    return bin_dir


def test_submit_runs_ray_job_submit(tmp_path: Path) -> None:
    bin_dir = _fake_ray(tmp_path)
    env = _env_without_ray_address()
    env.pop("RAY_AUTH_MODE", None)
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "RAY_ADDRESS": "http://127.0.0.1:8265",
        "FAKE_RAY_OUT": str(tmp_path),
        "FTRAY_NO_WAIT": "1",
        "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
    }
    result = subprocess.run(
        [str(SUBMIT), "search_spaces/trigger_llama_gpu.yaml", "--set", "lora.r=8"],
        cwd=tmp_path,  # submit.sh works from the repository root wherever it is started
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:6] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", "."]
    assert "--no-wait" in args
    assert args[args.index("--") :] == [
        "--",
        "ftray",
        "sweep",
        "search_spaces/trigger_llama_gpu.yaml",
        "--set",
        "lora.r=8",
    ]
    assert (tmp_path / "auth_mode").read_text().strip() == "token"
    (sent,) = yaml.safe_load_all((tmp_path / "runtime_env.yaml").read_text())
    (base,) = _yaml("runtime_env.yaml")
    assert sent["env_vars"] == {
        **base["env_vars"],
        "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
    }
    assert {k: v for k, v in sent.items() if k != "env_vars"} == {
        k: v for k, v in base.items() if k != "env_vars"
    }


SHARED_MOUNT = "/mnt/ftray"
CLUSTER_SPECS = [
    p for p in sorted(SPECS.glob("*.yaml")) if load_spec(p).resources_per_trial.gpu > 0
]


def test_cluster_specs_exist() -> None:
    assert set(GPU_SPECS) <= set(CLUSTER_SPECS) and CLUSTER_SPECS


@pytest.mark.parametrize("path", CLUSTER_SPECS, ids=lambda p: p.name)
def test_every_cluster_spec_sets_storage_every_node_shares(path: Path) -> None:
    """Without it Tune writes to ./ray_results on the head and every trial on a worker
    fails when it saves its first checkpoint."""
    tune_path = load_spec(path).storage.tune_path
    assert tune_path, f"{path.name} has no storage.tune_path"
    shared = tune_path.startswith(("s3://", "gs://")) or Path(tune_path).is_relative_to(
        SHARED_MOUNT
    )
    assert shared, f"{path.name}: {tune_path} is neither an object store nor under {SHARED_MOUNT}"


def test_rayjob_mounts_the_shared_volume_on_every_pod() -> None:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    (claim,) = _yaml("shared-volume.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SHARED_MOUNT]
            volume = volumes[mount["name"]]
            assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_launcher_mounts_the_shared_folder_on_every_node_and_in_the_container() -> None:
    (config,) = _yaml("ray-cluster.yaml")
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in config["docker"]["run_options"]
    mounts = [c for c in config["initialization_commands"] if "mount -t nfs4" in c]
    assert mounts and all(
        c.rstrip().split("&&")[-2].strip().endswith(f"{SHARED_MOUNT})") for c in mounts
    )


def test_launcher_pins_an_ami_with_a_recent_nvidia_driver() -> None:
    (config,) = _yaml("ray-cluster.yaml")
    for name, node in config["available_node_types"].items():
        image = node["node_config"].get("ImageId", "")
        assert "base-oss-nvidia-driver-gpu" in image, f"{name} would get Ray's CUDA 11 default AMI"
    assert ">= 580" in (CLUSTER / "ray-cluster.yaml").read_text()


def test_dockerfile_states_the_minimum_driver_and_matches_the_cuda_build() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert "580 or newer" in text
    (base,) = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert base.startswith("nvidia/cuda:13."), base


def test_kuberay_resume_one_liner_recreates_the_job_with_resume() -> None:
    """KubeRay does not run a finished RayJob again when its entrypoint is edited; the
    documented command deletes it and creates it again with --resume."""
    text = (CLUSTER / "rayjob.yaml").read_text()
    (command,) = [line for line in text.splitlines() if "sed '" in line and "--resume" in line]
    expression = command.split("sed '", 1)[1].split("'", 1)[0]
    result = subprocess.run(
        ["sed", expression, str(CLUSTER / "rayjob.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    (resumed,) = yaml.safe_load_all(result.stdout)
    original = _rayjob()
    assert resumed["spec"]["entrypoint"] == original["spec"]["entrypoint"] + " --resume"
    resumed["spec"]["entrypoint"] = original["spec"]["entrypoint"]
    assert resumed == original
    assert "kubectl delete rayjob" in text
    shown = command[command.index("sed '") :].strip()
    assert shown in (CLUSTER / "README.md").read_text(), "README shows the same command"
