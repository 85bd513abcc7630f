"""`mlflow models serve` of a registered version on 127.0.0.1, started as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.e2e.ray_helpers import free_port


@contextmanager
def models_serve(model_uri: str, tracking_uri: str, work: Path) -> Iterator[str]:
    """The address of `mlflow models serve -m MODEL_URI --env-manager local` on a free
    loopback port, once it answers /ping; what it prints goes to `work/serve.log`. The
    server and its workers are stopped on exit."""
    import requests

    port = free_port()
    log = work / "serve.log"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            # MLflow starts uvicorn by name, as an activated virtualenv would find it.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if requests.get(f"{address}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        yield address
    finally:
        with suppress(ProcessLookupError):  # it may have died while starting
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
