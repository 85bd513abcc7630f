"""What a local Ray can give one trial, found without importing Ray; a cluster
(RAY_ADDRESS) is not judged by this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

import ftray.sweep.resources as resources
from ftray.config import load_spec
from ftray.sweep.resources import local_gpu_count, local_resource_problems
from tests.conftest import SPECS


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = tmp_path / "gpus"
    for address in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / address).mkdir(parents=True)
    monkeypatch.setattr(resources, "NVIDIA_GPUS", gpus)


@pytest.mark.parametrize(
    ("visible", "count"), [(None, 2), ("1", 1), ("0,1,2", 2), ("", 0), ("NoDevFiles", 0)]
)
def test_gpus_are_the_devices_cuda_visible_devices_leaves(
    two_gpus: None, monkeypatch: pytest.MonkeyPatch, visible: str | None, count: int
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert local_gpu_count() == count


def test_a_gpu_spec_fits_a_machine_with_gpus(two_gpus: None, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(resources, "local_cpu_count", lambda: 8)
    spec = load_spec(SPECS / "trigger_llama_gpu.yaml")
    assert spec.resources_per_trial.gpu == 1 and local_resource_problems(spec) == []
    many = load_spec(SPECS / "trigger_llama_gpu.yaml", ["resources_per_trial.gpu=3"])
    [problem] = local_resource_problems(many)
    assert "asks for more than this machine has: 2 GPUs" in problem.message


def test_a_cluster_is_not_judged_by_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    spec = load_spec(SPECS / "trigger_llama_gpu.yaml", ["resources_per_trial.cpu=100000"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert len(local_resource_problems(spec)) == 2
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert local_resource_problems(spec) == []
