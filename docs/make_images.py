"""Make the pictures of README.md and docs/tracking.md from a real demo sweep: MLflow's runs
chart (a screenshot of the MLflow UI in headless Chromium) and the sweep's
objective-per-epoch plot.

    .venv/bin/python docs/make_images.py            # runs two demo sweeps in a temp folder
    .venv/bin/python docs/make_images.py --store sqlite:////path/mlflow.db   # an existing one

Needs Debian's `chromium` package (`apt-get install chromium`). Writes docs/images/*.png.
The MLflow server it starts listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_sweeps(work: Path) -> str:
    """Run the README's demo sweep in `work`, and again with another seed, so the chart
    compares two sweeps; returns the tracking URI."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    spec = ROOT / "search_spaces" / "trigger_tiny.yaml"
    # The `--set` arguments `make demo` adds to the spec (the Makefile's DEMO_SETS).
    (sets,) = re.findall(r"^DEMO_SETS = (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    for seed in (1, 0):
        subprocess.run(
            [str(BIN / "ftray"), "--quiet", "sweep", str(spec), *shlex.split(sets)]
            + ["--set", f"train.seed={seed}"],
            cwd=work,
            env=env,
            check=True,
        )
    return uri


def screenshot(url: str, out: Path, size: str = "1900,1000", wait_ms: int = 90000) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: needs Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="tracking URI of a store holding a trigger-tiny sweep")
    args = parser.parse_args()
    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp(prefix="ftray-images-"))
    uri = args.store or demo_sweeps(work)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trigger-tiny")
    parent = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`ftray.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    IMAGES.mkdir(parents=True, exist_ok=True)
    plot = client.download_artifacts(parent.info.run_id, "plots/objective_per_epoch.png", str(work))
    shutil.copy(plot, IMAGES / "objective_per_epoch.png")

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        screenshot(
            f"{base}/#/experiments/{experiment.experiment_id}/runs?compareRunsMode=CHART",
            IMAGES / "mlflow_runs_chart.png",
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    print(f"wrote {IMAGES / 'mlflow_runs_chart.png'} and {IMAGES / 'objective_per_epoch.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
