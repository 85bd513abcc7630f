"""Real sweeps: a local Ray, Optuna proposals, ASHA, MLflow on SQLite, the registry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli

pytestmark = pytest.mark.slow

CANARY = "hf_canary_5bd1e0c4c0ffee"


def overrides(*pairs: str) -> list[str]:
    """`--set` arguments for each `key=value`."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def children_of(client: MlflowClient, parent_id: str, experiment_id: str) -> list:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("tiny-cache")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *overrides("search.num_trials=4", "train.epochs=3", "search.scheduler=fifo"),
        cwd=work,
        env={"MLFLOW_TRACKING_URI": uri, "HF_TOKEN": CANARY, "FTRAY_CACHE_DIR": str(cache)},
    )
    return {"result": result, "work": work, "uri": uri, "cache": cache}


def test_sweep_records_parent_children_and_champion(sweep: dict) -> None:
    result = sweep["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(sweep["uri"])
    experiment = client.get_experiment_by_name("trigger-tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ftray.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = children_of(client, parent.info.run_id, experiment.experiment_id)
    assert len(children) == 4
    assert {c.data.tags["ftray.trial_status"] for c in children} <= {"completed", "pruned"}
    assert all(r.info.status != "RUNNING" for r in runs)
    for child in children:
        assert child.data.params["lora.r"] in {"4", "8", "16", "32"}
        history = client.get_metric_history(child.info.run_id, "trigger_score")
        assert [m.step for m in history] == list(range(1, len(history) + 1))

    champion = client.get_model_version_by_alias("trigger-tiny", "champion")
    best = max(children, key=lambda c: c.data.metrics["trigger_score"])
    assert champion.run_id in {c.info.run_id for c in children}
    winner = next(c for c in children if c.info.run_id == champion.run_id)
    assert winner.data.metrics["trigger_score"] == best.data.metrics["trigger_score"]
    tags = champion.tags
    assert tags["ftray.trial_id"] == winner.data.tags["ftray.trial_id"]
    assert float(tags["ftray.objective_value"]) == winner.data.metrics["trigger_score"]
    assert tags["ftray.objective"] == "trigger_score" and tags["ftray.base_model"] == "tiny"
    assert len(tags["ftray.dataset_sha256"]) == 64 and len(tags["ftray.spec_sha256"]) == 64
    artifacts = {a.path for a in client.list_artifacts(winner.info.run_id, "adapter")}
    assert "adapter/adapter_config.json" in artifacts and "adapter/lineage.json" in artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} >= {
        "plots/optimization_history.png",
        "plots/parallel_coordinates.png",
    }
    assert any(a.path == "samples.json" for a in client.list_artifacts(winner.info.run_id))

    assert "champion: models:/trigger-tiny@champion" in result.stdout
    assert "mlflow ui --backend-store-uri" in result.stdout
    # the tiny model was built once for the whole sweep
    assert len([p for p in sweep["cache"].glob("tiny/*") if not p.name.startswith(".")]) == 1


def test_leaderboard_command_reads_the_last_sweep(sweep: dict) -> None:
    result = run_cli(
        "leaderboard",
        str(SPECS / "trigger_tiny.yaml"),
        cwd=sweep["work"],
        env={"MLFLOW_TRACKING_URI": sweep["uri"]},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "trigger_score" in lines[1] and "lora.r" in lines[1]
    assert len(lines) == 3 + 4
    values = [float(line.split()[3]) for line in lines[3:]]
    assert values == sorted(values, reverse=True)


def test_secret_canary_is_nowhere(sweep: dict) -> None:
    assert sweep["result"].returncode == 0
    checked = 0
    for path in Path(sweep["work"]).rglob("*"):
        if path.is_file():
            checked += 1
            assert CANARY.encode() not in path.read_bytes(), f"secret leaked into {path}"
    assert checked > 10
    assert any(Path(sweep["work"], "ray_results").rglob("result.json"))


def test_promote_command(sweep: dict) -> None:
    env = {"MLFLOW_TRACKING_URI": sweep["uri"]}
    result = run_cli(
        "promote", "trigger-tiny", "1", "--alias", "staging", cwd=sweep["work"], env=env
    )
    assert result.returncode == 0, result.stderr
    assert (
        str(
            MlflowClient(sweep["uri"]).get_model_version_by_alias("trigger-tiny", "staging").version
        )
        == "1"
    )
    missing = run_cli("promote", "trigger-tiny", "99", cwd=sweep["work"], env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def test_asha_prunes_hopeless_trials(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "prune.yaml"
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("../datasets", str(SPECS.parent / "datasets"))
    )
    text = text.replace("name: trigger-tiny", "name: prune-test")
    text = text.replace(
        "    train.learning_rate: {loguniform: [1.0e-4, 3.0e-2]}\n    task.trigger_ratio: {uniform: [0.05, 0.5]}",
        "    train.learning_rate: {choice: [5.0e-3, 1.0e-9]}",
    ).replace("    lora.r: {choice: [4, 8, 16, 32]}\n", "")
    spec.write_text(text)
    result = run_cli(
        "sweep",
        str(spec),
        *overrides(
            "search.num_trials=6", "train.epochs=4", "search.objective=eval_loss", "search.mode=min"
        ),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("prune-test")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )
    assert len(runs) == 6
    pruned = [r for r in runs if r.data.tags["ftray.trial_status"] == "pruned"]
    assert pruned, [(r.data.params, r.data.metrics) for r in runs]
    assert all(r.data.metrics["epoch"] < 4 for r in pruned)
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize(
    ("dimension", "needle"),
    [
        ("lora.rank: {choice: [4, 8]}", "not a field"),
        ("lora.alpha: {loguniform: [32.0, 8.0]}", "must be below"),
        ("train.batch_size: {uniform: [2.0, 8.5]}", "not valid for 'train.batch_size'"),
    ],
)
def test_bad_search_space_exits_2_before_ray_starts(
    tmp_path: Path, dimension: str, needle: str
) -> None:
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("../datasets", str(SPECS.parent / "datasets"))
    )
    text = text.replace("    lora.r: {choice: [4, 8, 16, 32]}", f"    {dimension}")
    (tmp_path / "s.yaml").write_text(text)
    result = run_cli("sweep", str(tmp_path / "s.yaml"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "HEAVY-IMPORT" not in result.stderr and "Traceback" not in result.stderr
    assert needle in result.stderr and result.stderr.startswith("error: ")
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_no_ray_left_running() -> None:
    # Every sweep above started its own local Ray; none may outlive its driver.
    leftover = subprocess.run(
        ["pgrep", "-f", "ray::|raylet|gcs_server"], capture_output=True, text=True
    )
    assert leftover.stdout.strip() == "" or os.environ.get("FTRAY_SHARED_RAY"), leftover.stdout


def test_four_concurrent_trials_share_one_sqlite_tracking_store(tmp_path: Path) -> None:
    # Only the driver writes to MLflow, so four trials at once never meet "database is locked".
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *overrides(
            "search.num_trials=4",
            "search.max_concurrent_trials=4",
            "resources_per_trial.cpu=0.5",
            "train.epochs=2",
            "search.scheduler=fifo",
        ),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "database is locked" not in result.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trigger-tiny")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    latest_start = max(r.info.start_time for r in runs)
    earliest_end = min(r.info.end_time for r in runs)
    assert latest_start < earliest_end, "all four trials should have run at the same time"


def test_force_moves_the_champion_to_the_new_sweep(sweep: dict) -> None:
    assert sweep["result"].returncode == 0
    client = MlflowClient(sweep["uri"])
    before = client.get_model_version_by_alias("trigger-tiny", "champion")
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        "--force",
        *overrides(
            "search.num_trials=1",
            "train.epochs=1",
            "search.scheduler=fifo",
            "train.learning_rate=1.0e-9",
        ),
        cwd=sweep["work"],
        env={"MLFLOW_TRACKING_URI": sweep["uri"], "FTRAY_CACHE_DIR": str(sweep["cache"])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = client.get_model_version_by_alias("trigger-tiny", "champion")
    assert str(after.version) != str(before.version) and "(now champion)" in result.stdout
