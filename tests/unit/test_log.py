"""One logging channel: `[ftray]` lines on stderr, --quiet and --verbose, stdout for results."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray import __version__
from ftray.log import NORMAL, QUIET, VERBOSE, configure, get_logger
from tests.conftest import SPECS, run_cli


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    configure(NORMAL)


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [(QUIET, ["warning"]), (NORMAL, ["info", "warning"]), (VERBOSE, ["debug", "info", "warning"])],
)
def test_verbosity_decides_what_reaches_stderr(
    capsys: pytest.CaptureFixture[str], verbosity: int, shown: list[str]
) -> None:
    configure(verbosity)
    log = get_logger()
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    out, err = capsys.readouterr()
    assert out == ""
    expected = {
        "debug": "[ftray] a debug line",
        "info": "[ftray] an info line",
        "warning": "[ftray] warning: a warning line",
    }
    assert err.splitlines() == [expected[level] for level in shown]


def test_configuring_twice_does_not_print_twice(capsys: pytest.CaptureFixture[str]) -> None:
    configure(NORMAL)
    configure(NORMAL)
    get_logger().info("once")
    assert capsys.readouterr().err == "[ftray] once\n"


def test_version_and_quiet_flags() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ftray {__version__}"
    quiet = run_cli("--quiet", "validate", str(SPECS / "trigger_tiny.yaml"))
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok: ")
    both = run_cli("--quiet", "--verbose", "validate", str(SPECS / "trigger_tiny.yaml"))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_commands_print_no_library_chatter_on_a_new_store(tmp_path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'new.db'}"
    MlflowClient(uri).search_experiments()  # a store with no sweep in it
    env = {"MLFLOW_TRACKING_URI": uri}
    board = run_cli("leaderboard", str(SPECS / "trigger_tiny.yaml"), env=env)
    assert board.returncode == 1 and board.stdout == ""
    [line] = board.stderr.splitlines()
    assert line.startswith("error: no sweep of 'trigger-tiny' recorded at sqlite:///"), line
    promoted = run_cli("promote", "trigger-tiny", "1", env=env)
    assert promoted.returncode == 2 and promoted.stdout == ""
    assert [line[:6] for line in promoted.stderr.splitlines()] == ["error:"], promoted.stderr


def test_library_loggers_keep_to_warnings_and_ray_keeps_its_resume_advice() -> None:
    import logging

    from ftray.log import LIBRARY_CHATTER, quiet_library_logs

    configure(NORMAL)
    quiet_library_logs()
    for name in ("mlflow", "optuna", "alembic"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    # Python warnings (MLflow's advice on the registered model's type hints) go to a logger
    # that keeps them to itself.
    assert not logging.getLogger("py.warnings").isEnabledFor(logging.WARNING)
    # Ray Tune's "Resume experiment with: Tuner.restore(...)" is a warning; ftray prints its own.
    assert not logging.getLogger("ray.tune.tune").isEnabledFor(logging.WARNING)
    configure(VERBOSE)
    quiet_library_logs()
    assert all(logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in LIBRARY_CHATTER)
    configure(NORMAL)
    quiet_library_logs()
    logging.captureWarnings(False)


def test_library_prints_become_debug_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from ftray.log import library_prints_to_debug

    configure(VERBOSE)
    with library_prints_to_debug():
        print("+----------------------------------+\n| Configuration for experiment ... |")
        print("To visualize your results with TensorBoard, run: ", end="")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "[ftray] +----------------------------------+",
        "[ftray] | Configuration for experiment ... |",
        "[ftray] To visualize your results with TensorBoard, run:",
    ]
    configure(NORMAL)
    with library_prints_to_debug():
        print("chatter")
    assert capsys.readouterr() == ("", "")


def test_a_storage_guard_that_stops_the_sweep_keeps_rays_tracebacks_off_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials already on a node that cannot see the storage folder fail to save; once the
    guard stops the sweep, Ray's tracebacks of them stay off stderr (ftray says why in one
    line), and only then."""
    import logging

    from ftray.log import AFTER_STOP_CHATTER
    from ftray.sweep import storage

    configure(NORMAL)
    for name in AFTER_STOP_CHATTER:
        logging.getLogger(name).setLevel(logging.NOTSET)
    monkeypatch.setattr(storage, "alive_nodes", lambda: {"head": "10.0.0.1", "new": "10.0.0.2"})
    seen = {"head": True, "new": True}
    monkeypatch.setattr(
        storage.StorageMarker,
        "views",
        lambda self, nodes: [storage.NodeView(n, nodes[n], seen[n]) for n in nodes],
    )
    guard = storage.StorageGuard(str(tmp_path / "results"), known_nodes={"head"}, interval_s=0)
    try:
        assert guard.stop_all() is False
        assert all(logging.getLogger(n).isEnabledFor(logging.ERROR) for n in AFTER_STOP_CHATTER)
        seen["new"] = False
        guard.known.discard("new")
        assert guard.stop_all() is True
        assert "is not visible from node 10.0.0.2" in guard.problem
        assert not any(logging.getLogger(n).isEnabledFor(logging.ERROR) for n in AFTER_STOP_CHATTER)
    finally:
        guard.close()
        storage.StorageGuard.problems.clear()
        for name in AFTER_STOP_CHATTER:
            logging.getLogger(name).setLevel(logging.NOTSET)
