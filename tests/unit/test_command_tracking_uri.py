"""`leaderboard` and `promote` find the MLflow store as `sweep` does: `--tracking-uri`, else
MLFLOW_TRACKING_URI, else the spec's tracking.uri, else sqlite:///mlflow.db."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.unit.test_boundaries import recorded_sweep  # noqa: F401  (fixture)


def spec_with_store(folder: Path, uri: str) -> Path:
    """trigger_tiny, its data path absolute, with tracking.uri = `uri`."""
    text = (SPECS / "trigger_tiny.yaml").read_text()
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    text = text.replace("uri: sqlite:///mlflow.db", f"uri: {uri}")
    assert f"uri: {uri}" in text
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def champion_version(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion").version)


@pytest.fixture
def elsewhere(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with no mlflow.db, and no MLFLOW_TRACKING_URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path_factory.mktemp("elsewhere")


def test_promote_uses_the_spec_tracking_uri(recorded_sweep: dict, elsewhere: Path) -> None:  # noqa: F811
    spec = spec_with_store(elsewhere, recorded_sweep["uri"])
    result = run_cli("promote", "trigger-tiny", "1", "--spec", str(spec), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "models:/trigger-tiny@champion -> version 1"
    assert champion_version(recorded_sweep["uri"]) == "1"
    assert "HEAVY-IMPORT" not in result.stderr
    assert not (elsewhere / "mlflow.db").exists()


def test_promote_uses_tracking_uri_over_the_environment(
    recorded_sweep: dict,  # noqa: F811
    elsewhere: Path,
) -> None:
    empty = f"sqlite:///{elsewhere / 'empty.db'}"
    result = run_cli(
        "promote",
        "trigger-tiny",
        "1",
        "--tracking-uri",
        recorded_sweep["uri"],
        cwd=elsewhere,
        env={"MLFLOW_TRACKING_URI": empty},
    )
    assert result.returncode == 0, result.stderr
    assert champion_version(recorded_sweep["uri"]) == "1"


def test_the_environment_overrides_the_spec_and_errors_name_the_store(
    recorded_sweep: dict,  # noqa: F811
    elsewhere: Path,
) -> None:
    empty = f"sqlite:///{elsewhere / 'empty.db'}"
    spec = spec_with_store(elsewhere, recorded_sweep["uri"])
    result = run_cli(
        "promote",
        "trigger-tiny",
        "1",
        "--spec",
        str(spec),
        cwd=elsewhere,
        env={"MLFLOW_TRACKING_URI": empty},
    )
    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: trigger-tiny version 1 at {empty}: "), error


def test_leaderboard_uses_tracking_uri(recorded_sweep: dict, elsewhere: Path) -> None:  # noqa: F811
    spec = spec_with_store(elsewhere, f"sqlite:///{elsewhere / 'empty.db'}")
    result = run_cli(
        "leaderboard", str(spec), "--tracking-uri", recorded_sweep["uri"], cwd=elsewhere
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[3].split()[1] == "bbbb", result.stdout
    assert "HEAVY-IMPORT" not in result.stderr
    from_spec = run_cli("leaderboard", str(spec_with_store(elsewhere, recorded_sweep["uri"])))
    assert from_spec.returncode == 0 and "bbbb" in from_spec.stdout, from_spec.stderr
