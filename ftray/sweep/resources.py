"""What a Ray started on this machine can give one trial, found the way Ray finds it but
without importing Ray, so `validate` and `sweep` can refuse a trial that would wait forever.

Only for a local Ray: with RAY_ADDRESS set the trials run on a cluster's nodes (which an
autoscaler may still add), and this machine's CPUs and GPUs say nothing about them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ftray.config.spec import Spec
from ftray.errors import Problem

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpu_quota() -> float | None:
    """CPUs a container's CFS quota allows (None: no quota), as Ray reads it."""
    try:
        if CGROUP_V1_QUOTA.exists() and CGROUP_V1_PERIOD.exists():
            quota = float(CGROUP_V1_QUOTA.read_text()) / float(CGROUP_V1_PERIOD.read_text())
        elif CGROUP_V2_CPU_MAX.exists():
            limit, period = CGROUP_V2_CPU_MAX.read_text().split()
            if not (limit.isnumeric() and period.isnumeric()):
                return None
            quota = float(limit) / float(period)
        else:
            return None
    except (OSError, ValueError):
        return None
    if quota < 0:
        return None
    return max(quota, 1.0)


def local_cpu_count() -> int:
    """CPUs a local Ray registers: the machine's, or a container's CPU quota (whole CPUs)."""
    count = os.cpu_count() or 1
    if os.environ.get("RAY_USE_MULTIPROCESSING_CPU_COUNT"):
        return count
    quota = _cgroup_cpu_quota()
    return int(quota) if quota is not None else count


def _nvidia_device_count() -> int:
    """NVIDIA GPUs the driver shows (0 without a driver)."""
    if NVIDIA_GPUS.is_dir():
        return sum(1 for _ in NVIDIA_GPUS.iterdir())
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def local_gpu_count() -> int:
    """GPUs a local Ray registers: the NVIDIA devices, no more than CUDA_VISIBLE_DEVICES lists."""
    count = _nvidia_device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        listed = [] if visible in ("", "NoDevFiles") else visible.split(",")
        count = min(count, len(listed))
    return count


def _gpu_words(count: int) -> str:
    return "no GPU" if count == 0 else f"{count} GPU{'s' if count > 1 else ''}"


def local_resource_problems(spec: Spec) -> list[Problem]:
    """What one trial asks for (`resources_per_trial`) that a Ray started on this machine
    could never give, so the sweep would wait forever. Empty with RAY_ADDRESS set."""
    if os.environ.get("RAY_ADDRESS"):
        return []
    asked = spec.resources_per_trial
    problems = []
    fix = "lower it, or run the sweep on a cluster that has them (RAY_ADDRESS, cluster/submit.sh)"
    if asked.gpu > 0:
        gpus = local_gpu_count()
        if asked.gpu > gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            problems.append(
                spec.source.problem(
                    ("resources_per_trial", "gpu"),
                    f"resources_per_trial.gpu {asked.gpu:g} asks for more than this machine "
                    f"has: {_gpu_words(gpus)}{shown}, so a local Ray would never start a trial; "
                    + fix,
                )
            )
    cpus = local_cpu_count()
    if asked.cpu > cpus:
        problems.append(
            spec.source.problem(
                ("resources_per_trial", "cpu"),
                f"resources_per_trial.cpu {asked.cpu:g} asks for more than this machine has: "
                f"{cpus} CPU{'s' if cpus > 1 else ''}, so a local Ray would never start a trial; "
                + fix,
            )
        )
    return problems
