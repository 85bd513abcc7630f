"""Test tools for exports: Go's real text/template, to render an Ollama TEMPLATE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

RENDER_TEMPLATE_GO = Path(__file__).with_name("render_template.go")
GoRender = Callable[[str, list[dict[str, str]]], str]


@cache
def _binary() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (no `go` on PATH; Debian: apt-get install golang-go)")
    work = Path(tempfile.mkdtemp(prefix="ftray-render-template-"))
    shutil.copy(RENDER_TEMPLATE_GO, work / "main.go")
    (work / "go.mod").write_text("module rendertemplate\n\ngo 1.18\n")
    env = {
        **os.environ,
        "GOCACHE": str(work / "gocache"),
        "GOPATH": str(work / "gopath"),
        "GOFLAGS": "-mod=mod",
        "GO111MODULE": "on",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    binary = work / "render_template"
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    # The Go build cache is large and only needed once.
    shutil.rmtree(work / "gocache", ignore_errors=True)
    return binary


def go_renderer() -> GoRender:
    """Renders a TEMPLATE for some messages with Go's text/template, as Ollama does (skips the
    calling test when Go is not installed)."""
    binary = _binary()

    def render(template: str, messages: list[dict[str, str]]) -> str:
        result = subprocess.run(
            [str(binary)],
            input=json.dumps({"template": template, "messages": messages}).encode(),
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    return render
