"""Which Ray a sweep runs on: its own without RAY_ADDRESS (whatever `ray start` left behind),
a cluster that does not answer ends the sweep within a minute, and trials asking for a
quarter of a GPU each share one GPU at once."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import all_runs, assert_sweep_finished_once, free_port, short_ray_temp

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def planted_cluster_file(ray_tmpdir: Path, address: str) -> Iterator[Path]:
    """Ray's current-cluster file under RAY_TMPDIR=`ray_tmpdir` holding `address`, as a head
    that died without `ray stop` leaves it; whatever was there before is put back."""
    path = ray_tmpdir / "ray" / "ray_current_cluster"
    before = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(address)
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A private RAY_TMPDIR, so the stale file misleads only this test's sweep (other sweeps
    on this machine read /tmp/ray/ray_current_cluster)."""
    folder = short_ray_temp()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_sweep_without_ray_address_starts_its_own_ray_despite_a_stale_cluster_file(
    tmp_path: Path, ray_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dead = f"127.0.0.1:{free_port()}"
    uri = sqlite_store(tmp_path)
    with planted_cluster_file(ray_tmpdir, dead) as planted:
        assert planted.read_text() == dead
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            *("--set", "search.num_trials=2", "--set", "train.epochs=1"),
            *("--set", "search.scheduler=fifo", "--set", "search.max_concurrent_trials=1"),
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri, "RAY_TMPDIR": str(ray_tmpdir)},
            timeout=400,  # before the fix the sweep joined the dead address and never ended
        )
    assert not planted.exists(), "the planted file is removed again"
    assert result.returncode == 0, result.stderr[-4000:]
    said = [line for line in result.stderr.splitlines() if "starting a Ray of this sweep" in line]
    assert len(said) == 1, result.stderr[-3000:]
    assert "on 127.0.0.1" in said[0] and f"recorded a cluster at {dead}" in said[0], said
    assert "RAY_ADDRESS=auto" in said[0]
    assert_sweep_finished_once(uri, 2)
    assert "champion: models:/trigger-tiny@champion" in result.stdout


def test_ray_address_of_a_dead_cluster_exits_1_within_60_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    uri = sqlite_store(tmp_path)
    started = time.monotonic()
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *("--set", "search.num_trials=1", "--set", "train.epochs=1"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        timeout=300,  # before the fix ray.init waited forever
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: cannot reach the Ray cluster at "), error
    assert error.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: "), error
    assert "refused" in error.lower(), error
    assert "head is alive" in error and "RAY_AUTH_TOKEN" in error and "GCS port" in error
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert all_runs(uri) == [], "nothing is recorded for a sweep that never started"


def test_trials_asking_for_a_quarter_gpu_share_one_gpu_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ftray.config import load_spec
    from ftray.sweep import runner
    from ftray.sweep.space import prepare_sweep

    # One node with one logical GPU. The GPU has no CUDA behind it, so each trial process
    # is given a stand-in for torch.cuda.mem_get_info: one 80 GiB device on which every
    # other trial process that has looked holds 80% of its quarter (16 GiB).
    gpu_dir = tmp_path / "gpu0"
    gpu_dir.mkdir()
    gpu_folder = str(gpu_dir)

    def share_one_fake_gpu() -> None:
        import os
        import time
        from pathlib import Path

        import ftray.models.backend as backend

        total = 80 * 2**30

        def mem_get_info() -> tuple[int, int]:
            here = Path(gpu_folder)
            with (here / str(os.getpid())).open("a") as probes:
                probes.write(f"{time.time()}\n")
            others = [p for p in here.iterdir() if p.name != str(os.getpid())]
            return total - len(others) * (total // 5), total

        backend.gpu_memory_info = lambda: mem_get_info

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "num_gpus": 1, "gcs_server_port": free_port()},
    )
    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("FTRAY_ALLOW_CPU_FALLBACK", "1")
    for name, default in (("TUNE_GLOBAL_CHECKPOINT_S", "2"), ("RAY_AIR_NEW_OUTPUT", "0")):
        monkeypatch.setenv(name, default)
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        [
            "search.num_trials=4",
            "search.max_concurrent_trials=4",
            "train.epochs=2",
            "search.scheduler=fifo",
            "resources_per_trial.gpu=0.25",
            "resources_per_trial.cpu=1",
            f"storage.tune_path={tmp_path / 'ray_results'}",
        ],
    )
    task = prepare_sweep(spec)
    try:
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            runtime_env={"worker_process_setup_hook": share_one_fake_gpu},
        )
        runner.run_sweep(spec, task)
    finally:
        ray.shutdown()
        cluster.shutdown()

    runs = assert_sweep_finished_once(uri, 4)
    places = {(r.data.tags["ftray.node_id"], r.data.tags["ftray.gpu_ids"]) for r in runs}
    assert len(places) == 1 and next(iter(places))[1] == "0", places
    # Every trial looked at the GPU's memory once and loaded at once: none waited.
    probes = {p.name: p.read_text().split() for p in gpu_dir.iterdir()}
    assert len(probes) == 4 and all(len(times) == 1 for times in probes.values()), probes
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 4, f"4 trials on one GPU should run together; at most {peak} did"
