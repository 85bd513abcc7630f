"""`leaderboard`, `promote` and `export` find the MLflow store as `sweep` does:
`--tracking-uri`, else MLFLOW_TRACKING_URI (both relative to the current folder), else the
spec's tracking.uri (relative to the spec's folder), else mlflow.db beside the spec; a store
that is not there is an error that says where ftray looked, never an empty new one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.unit.test_boundaries import recorded_sweep  # noqa: F401  (fixture)


def spec_with_store(folder: Path, uri: str) -> Path:
    """trigger_tiny, its data path absolute, with tracking.uri = `uri`."""
    text = (SPECS / "trigger_tiny.yaml").read_text()
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    text = re.sub(r"(?m)^  uri: .*$", f"  uri: {uri}", text)
    assert f"\n  uri: {uri}\n" in text
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
    spec = spec_with_store(elsewhere, recorded_sweep["uri"])
    result = run_cli(
        "promote",
        "trigger-tiny",
        "1",
        "--spec",
        str(spec),
        cwd=elsewhere,
        env={"MLFLOW_TRACKING_URI": "sqlite:///empty.db"},
    )
    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(
        f"error: MLFLOW_TRACKING_URI: no MLflow store at {elsewhere / 'empty.db'} "
        "(given by MLFLOW_TRACKING_URI, relative to the current folder); nothing was created"
    ), error
    assert not (elsewhere / "empty.db").exists()

    MlflowClient(f"sqlite:///{elsewhere / 'empty.db'}").search_experiments()
    result = run_cli(
        "promote",
        "trigger-tiny",
        "1",
        "--spec",
        str(spec),
        cwd=elsewhere,
        env={"MLFLOW_TRACKING_URI": "sqlite:///empty.db"},
    )
    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    empty = f"sqlite:///{elsewhere / 'empty.db'}"
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


def spec_beside_its_store(sweep: dict) -> Path:
    """spec/rel.yaml next to the recorded `sweep`'s mlflow.db, its tracking.uri relative."""
    folder = sweep["work"] / "spec"
    folder.mkdir()
    (sweep["work"] / "mlflow.db").rename(folder / "mlflow.db")
    return spec_with_store(folder, "sqlite:///mlflow.db").rename(folder / "rel.yaml")


def test_a_relative_spec_uri_is_relative_to_the_spec_from_any_folder(
    recorded_sweep: dict,  # noqa: F811
    elsewhere: Path,
) -> None:
    spec = spec_beside_its_store(recorded_sweep)
    other = recorded_sweep["work"] / "other"
    other.mkdir()
    board = run_cli("leaderboard", "../spec/rel.yaml", cwd=other)
    assert board.returncode == 0, board.stderr
    assert board.stdout.splitlines()[3].split()[1] == "bbbb", board.stdout
    promoted = run_cli("promote", "trigger-tiny", "1", "--spec", "../spec/rel.yaml", cwd=other)
    assert promoted.returncode == 0, promoted.stderr
    assert champion_version(f"sqlite:///{spec.parent / 'mlflow.db'}") == "1"
    assert list(other.iterdir()) == [], "nothing may be written in the current folder"


def test_without_tracking_uri_the_store_is_mlflow_db_beside_the_spec(
    recorded_sweep: dict,  # noqa: F811
    elsewhere: Path,
) -> None:
    spec = spec_beside_its_store(recorded_sweep)
    spec.write_text(spec.read_text().replace("  uri: sqlite:///mlflow.db\n", ""))
    board = run_cli("leaderboard", str(spec), cwd=elsewhere)
    assert board.returncode == 0, board.stderr
    assert "bbbb" in board.stdout
    assert list(elsewhere.iterdir()) == []


def test_a_missing_store_is_not_created_and_the_error_says_where_ftray_looked(
    tmp_path: Path,
    elsewhere: Path,
) -> None:
    spec = spec_with_store(tmp_path, "sqlite:///stores/mlflow.db")
    line = spec.read_text().splitlines().index("  uri: sqlite:///stores/mlflow.db") + 1
    looked = tmp_path / "stores" / "mlflow.db"
    board = run_cli("leaderboard", str(spec), cwd=elsewhere)
    assert board.returncode == 2, board.stderr
    assert board.stderr.strip() == (
        f"error: {spec}:{line}: no MLflow store at {looked} (the spec's tracking.uri, relative "
        "to the spec's folder); nothing was created. Run ftray sweep first, or name the store "
        "with --tracking-uri or MLFLOW_TRACKING_URI"
    )
    promoted = run_cli("promote", "trigger-tiny", "1", "--spec", str(spec), cwd=elsewhere)
    assert promoted.returncode == 2 and f"no MLflow store at {looked}" in promoted.stderr
    bare = run_cli("promote", "trigger-tiny", "1", cwd=elsewhere)
    assert bare.returncode == 2, bare.stderr
    assert f"no MLflow store at {elsewhere / 'mlflow.db'} (the default mlflow.db in the " in (
        bare.stderr
    )
    flag = run_cli("leaderboard", str(spec), "--tracking-uri", "sqlite:///x.db", cwd=elsewhere)
    assert flag.returncode == 2, flag.stderr
    assert f"error: --tracking-uri: no MLflow store at {elsewhere / 'x.db'} (given by " in (
        flag.stderr
    )
    exported = run_cli(
        "export", "models:/trigger-tiny/1", "--format", "adapter", "--out", "out", cwd=elsewhere
    )
    assert exported.returncode == 2, exported.stderr
    assert f"no MLflow store at {elsewhere / 'mlflow.db'}" in exported.stderr
    assert not (tmp_path / "stores").exists()
    assert list(elsewhere.iterdir()) == []
    for result in (board, promoted, bare, flag):
        assert "HEAVY-IMPORT" not in result.stderr
