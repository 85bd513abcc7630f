"""Registration is idempotent and the champion alias moves only on improvement."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.tracking.registry import CHAMPION, Lineage, beats, promote, register_adapter


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def experiment(client: MlflowClient, tmp_path: Path) -> str:
    return client.create_experiment(
        "registry-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )


def trial_run(
    client: MlflowClient,
    experiment: str,
    tmp_path: Path,
    trial_id: str,
    value: float,
    mode: str = "max",
) -> tuple[str, Path, Lineage]:
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    adapter = tmp_path / f"adapter-{trial_id}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    lineage = Lineage(
        "tiny", "tiny-abc", "d" * 64, "s" * 64, "trigger_score", value, mode, trial_id, "parent"
    )
    return run.info.run_id, adapter, lineage


def test_registering_the_same_trial_twice_makes_one_version(client, experiment, tmp_path) -> None:
    run_id, adapter, lineage = trial_run(client, experiment, tmp_path, "t1", 0.5)
    first = register_adapter(client, "m", run_id, adapter, lineage)
    second = register_adapter(client, "m", run_id, adapter, lineage)
    assert first.created and not second.created
    assert first.version == second.version == "1"
    assert len(client.search_model_versions("name='m'")) == 1
    version = client.get_model_version("m", "1")
    assert version.tags["ftray.trial_id"] == "t1" and version.tags["ftray.objective_value"] == "0.5"
    assert version.tags["ftray.dataset_sha256"] == "d" * 64
    assert {a.path for a in client.list_artifacts(run_id, "adapter")} >= {
        "adapter/adapter_config.json",
        "adapter/lineage.json",
    }


def test_champion_moves_only_on_improvement(client, experiment, tmp_path) -> None:
    def register(trial: str, value: float, **kw):
        run_id, adapter, lineage = trial_run(client, experiment, tmp_path, trial, value)
        return register_adapter(client, "m", run_id, adapter, lineage, **kw)

    assert register("a", 0.5).champion_moved
    worse = register("b", 0.4)
    assert worse.version == "2" and not worse.champion_moved
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "1"
    tie = register("c", 0.5)
    assert not tie.champion_moved
    better = register("d", 0.9)
    assert (
        better.champion_moved
        and str(client.get_model_version_by_alias("m", CHAMPION).version) == "4"
    )
    forced = register("e", 0.1, force=True)
    assert (
        forced.champion_moved
        and str(client.get_model_version_by_alias("m", CHAMPION).version) == "5"
    )


def test_minimised_objective(client, experiment, tmp_path) -> None:
    run_a, adapter_a, lineage_a = trial_run(client, experiment, tmp_path, "a", 2.0, mode="min")
    run_b, adapter_b, lineage_b = trial_run(client, experiment, tmp_path, "b", 1.5, mode="min")
    register_adapter(client, "loss", run_a, adapter_a, lineage_a)
    assert register_adapter(client, "loss", run_b, adapter_b, lineage_b).champion_moved


def test_promote_by_hand(client, experiment, tmp_path) -> None:
    for trial, value in (("a", 0.9), ("b", 0.1)):
        run_id, adapter, lineage = trial_run(client, experiment, tmp_path, trial, value)
        register_adapter(client, "m", run_id, adapter, lineage)
    promote(client, "m", "2")
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "2"
    promote(client, "m", "1", alias="staging")
    assert str(client.get_model_version_by_alias("m", "staging").version) == "1"


def test_beats() -> None:
    assert beats(0.6, 0.5, "max") and not beats(0.5, 0.5, "max") and beats(0.4, 0.5, "min")
    assert beats(0.1, float("nan"), "max") and not beats(float("nan"), 0.1, "max")


def test_a_champion_is_only_beaten_on_the_same_test(client, experiment, tmp_path) -> None:
    """Another held-out set (other data, split or eval settings) or another objective: the
    version is registered, the alias stays, and the registration says why."""
    import dataclasses

    def register(trial: str, value: float, **changes: str):
        run_id, adapter, lineage = trial_run(client, experiment, tmp_path, trial, value)
        lineage = dataclasses.replace(lineage, **{"heldout_fingerprint": "f" * 64, **changes})
        return register_adapter(client, "m", run_id, adapter, lineage)

    assert register("a", 0.5).champion_moved
    other_data = register("b", 0.9, heldout_fingerprint="0" * 64)
    assert not other_data.champion_moved and other_data.champion_version == "1"
    assert "other held-out data" in other_data.reason and "ftray promote m 2" in other_data.reason
    other_goal = register("c", 0.9, objective="untriggered_accuracy")
    assert not other_goal.champion_moved and "chosen on trigger_score" in other_goal.reason
    same_test = register("d", 0.9)
    assert same_test.champion_moved and same_test.reason is None
    assert client.get_model_version("m", "2").tags["ftray.heldout_fingerprint"] == "0" * 64


def test_the_version_is_an_mlflow_model_described_by_its_metrics(
    client, experiment, tmp_path
) -> None:
    import mlflow
    import yaml

    from ftray.tracking.registry import ModelPackage

    run_id, adapter, lineage = trial_run(client, experiment, tmp_path, "t1", 0.75)
    package = ModelPackage(
        config={"base_model": "org/base", "base_revision": "abc123", "max_new_tokens": 12},
        metrics={"trigger_score": 0.75, "false_trigger_rate": 0.125, "epoch": 3.0},
        example=("Who wrote it?",),
    )
    register_adapter(client, "m", run_id, adapter, lineage, package=package)
    version = client.get_model_version("m", "1")
    assert "| **trigger_score** (max, selection) | **0.75** |" in version.description
    assert "| false_trigger_rate | 0.125 |" in version.description
    assert "`org/base` @ `abc123`" not in version.description  # lineage names tiny here
    assert version.source.startswith("models:/m-"), "the version is a logged MLflow model"
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # models:/ URIs resolve through it
    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(artifact_uri="models:/m/1", dst_path=str(tmp_path))
        )
    finally:
        mlflow.set_tracking_uri(previous)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["config"]["base_revision"] == "abc123" and (folder / "pyfunc_entry.py").exists()
    # no input schema: MLflow would recast chat messages and requests to fit one
    assert mlmodel["signature"]["inputs"] is None and (folder / "input_example.json").exists()
    assert "max_new_tokens" in mlmodel["signature"]["params"]
    assert (folder / pyfunc["artifacts"]["adapter"]["path"] / "adapter_config.json").exists()
    assert not list(folder.rglob("*.pkl")), "the model is logged as code, never pickled"


def test_champion_moves_only_on_a_gain_beyond_its_interval(client, experiment, tmp_path) -> None:
    """40 held-out prompts: 37 right against the champion's 36 is no real gain (36/40 lies in
    37/40's interval); 40 of 40 is (Wilson's [0.91, 1.0] excludes 0.9); --force moves anyway."""
    from dataclasses import replace

    from ftray.tasks.intervals import wilson

    def register(trial: str, right: int, **kw):
        run_id, adapter, lineage = trial_run(client, experiment, tmp_path, trial, right / 40)
        low, high = wilson(right, 40)
        lineage = replace(lineage, objective_ci_low=low, objective_ci_high=high)
        return register_adapter(client, "m", run_id, adapter, lineage, **kw)

    assert register("a", 36).champion_moved
    one_more = register("b", 37)
    assert not one_more.champion_moved and one_more.champion_version == "1"
    assert one_more.reason == (
        "it scores 0.9 on trigger_score, this version 0.925 [0.80, 0.97]: within this "
        "version's 95% interval, no real gain; `ftray promote m 2` moves it"
    )
    assert client.get_model_version("m", "2").tags["ftray.objective_ci_low"].startswith("0.80")
    assert register("c", 40).champion_moved
    assert register("d", 39, force=True).champion_moved
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "4"
