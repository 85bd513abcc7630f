"""The image's install line resolves to the pinned GPU stack (pip's resolver, dry run).

Needs the package index; installs nothing. The versions asserted are the `gpu` extra's
pins in pyproject.toml, and the torch it brings must be the CUDA 13 build the Dockerfile
and docs/models.md describe.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def gpu_pins() -> dict[str, str]:
    """name -> version of every `==` pin in the `gpu` extra."""
    block = re.search(r"^gpu = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert block, "pyproject.toml has no gpu extra"
    pins = {}
    for requirement in re.findall(r'"([^"]+)"', block[1]):
        name, _, version = requirement.partition("==")
        assert version, f"the gpu extra pins every package exactly: {requirement}"
        pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_install_args() -> list[str]:
    """The arguments of the Dockerfile's `pip install` that installs ftray's gpu extra."""
    text = (ROOT / "cluster" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line for line in text.splitlines() if line.startswith("RUN pip install") and "[gpu]" in line
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("RUN pip install"))


def test_the_pins_are_the_ones_the_docs_name() -> None:
    pins = gpu_pins()
    assert {"unsloth", "unsloth-zoo", "torch", "trl"} <= pins.keys()
    table = (ROOT / "docs" / "models.md").read_text().split("## GPU stack", 1)[1]
    for name, version in pins.items():
        assert version in table, f"the GPU stack table does not mention {name} {version}"


def test_the_images_install_line_resolves_to_the_pinned_gpu_stack(tmp_path: Path) -> None:
    args = [f"{ROOT}{a[1:]}" if a.startswith(".[") else a for a in dockerfile_install_args()]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for name, version in gpu_pins().items():
        assert resolved.get(name) == version, (
            f"{name}: pinned {version}, resolved {resolved.get(name)}"
        )
    cuda_runtime = resolved.get("nvidia-cuda-runtime") or resolved.get("nvidia-cuda-runtime-cu13")
    assert cuda_runtime and cuda_runtime.startswith("13."), "torch must be the CUDA 13 build"
    assert "ray" in resolved and "boto3" in resolved
