"""Test tools for exports: Go's real text/template, to render an Ollama TEMPLATE with the data
Ollama gives it (render_template.go)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pytest

RENDER_TEMPLATE_GO = Path(__file__).with_name("render_template.go")


class GoRender(Protocol):
    """Renders a TEMPLATE for messages (and tools) as Ollama does for a chat request."""

    def __call__(
        self,
        template: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> str: ...


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


def _run(request: dict[str, Any]) -> str:
    result = subprocess.run(
        [str(_binary())], input=json.dumps(request).encode(), capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def go_renderer() -> GoRender:
    """Renders a TEMPLATE for some messages (and tools) with Go's text/template, as Ollama does
    (skips the calling test when Go is not installed)."""
    _binary()

    def render(
        template: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        request: dict[str, Any] = {"template": template, "messages": messages}
        if tools:
            request["tools"] = tools
        return _run(request)

    return render


def go_render_all(
    template: str, conversations: list[tuple[list[dict], list[dict] | None]]
) -> list[str]:
    """The text of each (messages, tools) as Ollama renders it with `template`, in one Go run
    (skips the calling test when Go is not installed)."""
    requests = [{"messages": messages, "tools": tools or None} for messages, tools in conversations]
    texts = json.loads(_run({"template": template, "conversations": requests}))
    assert isinstance(texts, list) and len(texts) == len(conversations)
    return texts


def go_tool_call_tag(template: str) -> str:
    """The text Ollama looks for in a reply to find its tool calls, read off `template` as
    Ollama's parser reads it ("{" when the template shows none: any JSON object)."""
    return _run({"template": template, "tag": True})
