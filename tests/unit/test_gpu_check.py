"""A trial that asked Ray for a GPU but sees no CUDA fails at once, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

import ftray.models.backend
from ftray.models.backend import (
    BackendUnavailable,
    nvidia_driver_version,
    require_cuda_for_gpu_trial,
)

PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
OPEN_MODULE = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Tue Jul 22 18:58:46 UTC 2025\n"
)


@pytest.mark.parametrize(
    ("text", "version"), [(PROPRIETARY, "535.104.05"), (OPEN_MODULE, "580.65.06")]
)
def test_driver_version_is_read_from_the_loaded_kernel_module(
    tmp_path: Path, text: str, version: str
) -> None:
    (tmp_path / "version").write_text(text)
    assert nvidia_driver_version(tmp_path / "version") == version


def test_no_driver_file_and_no_nvidia_smi_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_driver_version(tmp_path / "missing") is None


def test_gpu_asked_and_no_cuda_fails_naming_driver_and_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: False)
    monkeypatch.setattr(ftray.models.backend, "nvidia_driver_version", lambda: "535.104.05")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(BackendUnavailable) as raised:
        require_cuda_for_gpu_trial(1, ["0"], allow_cpu_fallback=False)
    message = str(raised.value)
    assert "asked for 1 GPU" in message and "resources_per_trial.gpu" in message
    assert "NVIDIA driver 535.104.05" in message and "built for 13.0" in message
    assert "GPU id(s) 0" in message and "FTRAY_ALLOW_CPU_FALLBACK=1" in message


def test_a_cpu_only_torch_and_no_driver_are_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: False)
    monkeypatch.setattr(ftray.models.backend, "nvidia_driver_version", lambda: None)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailable, match="CPU-only build.*no NVIDIA driver found"):
        require_cuda_for_gpu_trial(0.5, [], allow_cpu_fallback=False)


@pytest.mark.parametrize(
    ("gpus", "cuda", "allow"), [(0, False, False), (1, True, False), (1, False, True)]
)
def test_no_gpu_asked_cuda_present_or_fallback_allowed_passes(
    monkeypatch: pytest.MonkeyPatch, gpus: float, cuda: bool, allow: bool
) -> None:
    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: cuda)
    require_cuda_for_gpu_trial(gpus, ["0"] if gpus else [], allow_cpu_fallback=allow)
