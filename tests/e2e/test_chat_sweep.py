"""A real chat sweep: the split is stored on the sweep and reused, trials are scored on the
validation conversations, and only the registered version is scored on the test ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.tasks import load_task
from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.test_sweep import children_of, overrides

pytestmark = pytest.mark.slow


def test_chat_sweep_optimises_chat_score_and_tests_only_the_registered_version(
    tmp_path: Path,
) -> None:
    uri = sqlite_store(tmp_path)
    result = run_cli(
        "sweep",
        str(SPECS / "chat_tiny.yaml"),
        *overrides("search.num_trials=2", "search.max_concurrent_trials=1", "train.epochs=1"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("chat-tiny")
    (parent,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("ftray.role") == "sweep"
    ]
    assert parent.data.params["search.objective"] == "chat_score"

    # the split lives on the sweep and is the one the spec's seed gives
    stored = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "split.json", str(tmp_path))).read_text()
    )
    spec = load_spec(SPECS / "chat_tiny.yaml")
    expected = load_task(spec).split_record()
    assert stored == expected
    assert stored["test"] and stored["validation"] and stored["train"]

    children = children_of(client, parent.info.run_id, experiment.experiment_id)
    assert len(children) == 2
    for child in children:
        assert "chat_score" in child.data.metrics and "tool_call_valid" in child.data.metrics
        assert not [k for k in child.data.metrics if k.startswith("test")]
        assert not [k for k in child.data.tags if k.startswith("ftray.test.")]

    champion = client.get_model_version_by_alias("chat-tiny", "champion")
    tags = champion.tags
    assert int(tags["ftray.test.turns"]) == len(load_task(spec).test_cases())
    test = {
        metric: float(tags[f"ftray.test.{metric}"])
        for metric in ("chat_score", "tool_call_valid", "tool_name_accuracy")
    }
    assert all(0.0 <= value <= 1.0 for value in test.values()), test
    # After its 1 epoch the champion's calls are valid: test tool_call_valid 1.0 (twice), and
    # 1.0 and 0.94 with training seeds 1 and 2 (other splits); scored on the bare base (the
    # adapter left off: it never calls) the test split gives 0. Which tool is not learnt yet:
    # it also calls where the reference answers, tool_name_accuracy 0.64 (0.13, 0.52), and
    # never calling gets 0.57 (16 of the 28 turns answer without a call). After 3 epochs it
    # is 0.79 (0.81, 0.86); tests/integration/test_train.py demands >= 0.7 on validation
    # after the spec's 12.
    assert test["tool_call_valid"] >= 0.8, test
    assert not [k for k in parent.data.metrics if k.startswith("test")]
