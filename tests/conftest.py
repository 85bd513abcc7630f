from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "search_spaces"
DATASETS = ROOT / "datasets"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# One torch thread per process (this one and every process it starts; Ray's trial workers
# get one per CPU they ask for anyway): `make test` runs several test processes, each
# starting more, on a machine of a few cores, where a second thread per process buys little
# wall time for much CPU (the chat spec's 12 epochs: 85 s on 158 CPU-s with two threads,
# 109 s on 108 CPU-s with one, the same metrics).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Build tiny models in a fresh cache, as CI would: one per test run, shared by the test
    processes of `pytest -n` (their temp folders share a parent), so each model is built and
    each data check made once. The cache takes concurrent builds: each is renamed into place."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = base.parent / "ftray-cache"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("ftray-cache")
    os.environ["FTRAY_CACHE_DIR"] = str(folder)


@pytest.fixture(scope="session", autouse=True)
def _ray_tmpdir() -> Iterator[Path]:
    """Ray's temp root (sessions, sockets, the current-cluster file) of this test process and
    the sweeps it starts: a folder of its own, so test processes running side by side
    (pytest -n) never read each other's cluster file, and `processes_of(RAY_TMPDIR)` finds
    only this process's Rays. Short: Ray's socket paths under it must stay below 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="ftray-rt-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ray_sessions(ray_tmpdir: Path) -> set[str]:
    """The session folders under a RAY_TMPDIR: every Ray started with it leaves one (Ray's
    `<RAY_TMPDIR>/ray/session_<time>_<pid>`), and it stays there after that Ray stops."""
    return {p.name for p in (ray_tmpdir / "ray").glob("session_*") if p.name != "session_latest"}


@pytest.fixture(autouse=True)
def _no_ray_unless_slow(request: pytest.FixtureRequest, _ray_tmpdir: Path) -> Iterator[None]:
    """A test not marked slow starts no Ray, in this process or in a process it starts:
    `make check` (`-m "not slow"`) stays fast and leaves no Ray behind only while that holds.
    A Ray such a test started, even one it stopped, fails it at teardown: a new session
    folder under this process's RAY_TMPDIR (which the processes it starts inherit), or a Ray
    still initialised in this process (one started with a RAY_TMPDIR of its own)."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    before = ray_sessions(_ray_tmpdir)
    yield
    started = sorted(ray_sessions(_ray_tmpdir) - before)
    ray = sys.modules.get("ray")
    in_process = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    if in_process:
        ray.shutdown()  # so that the tests after this one are judged on their own
    if started or in_process:
        pytest.fail(
            f"a test not marked slow started a Ray ({', '.join(started) or 'in this process'}):"
            " mark it slow (and move it beside the tests that start Ray), or keep Ray out of it",
            pytrace=False,
        )


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ftray ARGS`, through the command's own entry point (`ftray.cli.entry`, its
    exit included); reports on stderr whether torch or ray got imported (bad input must not)."""
    probe = (
        "import sys; import ftray.cli as cli; command = cli.main\n"
        "def main():\n"
        "    rc = command(sys.argv[1:])\n"
        "    sys.stderr.write('HEAVY-IMPORT\\n' if {'torch', 'ray'} & set(sys.modules) else '')\n"
        "    return rc\n"
        "cli.main = main; cli.entry()"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@functools.cache
def _migrated_store() -> Path:
    """An empty MLflow SQLite store with its tables made, once per test session: MLflow
    takes seconds to create and migrate them, and most e2e tests start from an empty store."""
    folder = Path(tempfile.mkdtemp(prefix="ftray-test-store-"))
    atexit.register(shutil.rmtree, folder, True)
    db = folder / "mlflow.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from mlflow import MlflowClient; MlflowClient('sqlite:///{db}').search_experiments()",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    return db


def sqlite_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of the MLflow SQLite store `folder/name`; when there is none yet, an empty one
    is put there (a copy of one made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / name).exists():
        shutil.copyfile(_migrated_store(), folder / name)
    return f"sqlite:///{folder / name}"


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation in the chat task's template form as an OpenAI client sends it: call
    arguments as JSON text."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": json.dumps(call["function"]["arguments"]),
                    },
                }
                for call in message["tool_calls"]
            ]
        out.append(message)
    return out
