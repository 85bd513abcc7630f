"""A real chat sweep: the split is stored on the sweep and reused, trials are scored on the
validation conversations, and only the registered version is scored on the test ones. The
registered version, loaded in a fresh process and behind `mlflow models serve`, answers the
validation conversations with OpenAI tool calls as valid as its trial's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.tasks import EvalCase, load_task
from ftray.tasks.chat import ChatTask
from tests.conftest import DATASETS, SPECS, openai_messages, run_cli, sqlite_store
from tests.e2e.serving import models_serve
from tests.e2e.test_sweep import children_of, overrides

pytestmark = pytest.mark.slow

LIBRARY_WARNINGS = ("Warning:", "Failed to load CPU gemm_4bit_forward")
"""What loading or serving must not print: any Python warning, bitsandbytes' kernel notice."""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("chat-sweep")
    uri = sqlite_store(work)
    result = run_cli(
        "sweep",
        str(SPECS / "chat_tiny.yaml"),
        *overrides("search.num_trials=2", "search.max_concurrent_trials=1", "train.epochs=1"),
        cwd=work,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {"work": work, "uri": uri}


def test_chat_sweep_optimises_chat_score_and_tests_only_the_registered_version(
    sweep: dict,
) -> None:
    client = MlflowClient(sweep["uri"])
    experiment = client.get_experiment_by_name("chat-tiny")
    (parent,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("ftray.role") == "sweep"
    ]
    assert parent.data.params["search.objective"] == "chat_score"

    # the split lives on the sweep and is the one the spec's seed gives
    stored = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "split.json", str(sweep["work"]))
        ).read_text()
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


# --- the registered version, served ----------------------------------------------------


def held_out_cases() -> tuple[ChatTask, list[EvalCase]]:
    """The validation conversations every trial was scored on (the spec's seed's split,
    which the sweep stored: see the test above)."""
    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    assert isinstance(task, ChatTask)
    return task, task.eval_cases()


def scored_text(answer: Any) -> str:
    """A served answer (an OpenAI assistant message) as the text the chat task scores: its
    `<think>` block, its content (where a call that did not parse stays as generated) and
    its calls as `<tool_call>` blocks."""
    assert set(answer) == {"content", "tool_calls", "reasoning"}, answer
    parts = [] if answer["reasoning"] is None else [f"<think>{answer['reasoning']}</think>"]
    parts += [answer["content"]] if answer["content"] else []
    for call in answer["tool_calls"]:
        assert call["type"] == "function", call
        arguments = json.loads(call["function"]["arguments"])  # OpenAI's JSON text
        body = json.dumps({"name": call["function"]["name"], "arguments": arguments})
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(parts)


def assert_scores_as_its_trial(sweep: dict, task: ChatTask, cases: list, answers: list) -> None:
    """The served answers score `tool_call_valid` (and `tool_name_accuracy`: calls where the
    reference calls, not where it answers) within 0.05 of what the champion's trial measured
    on the same validation turns."""
    client = MlflowClient(sweep["uri"])
    champion = client.get_model_version_by_alias("chat-tiny", "champion")
    trial = client.get_run(champion.run_id).data.metrics
    served, _ = task.score(cases, [scored_text(a) for a in answers])
    assert any(a["tool_calls"] for a in answers)
    for metric in ("tool_call_valid", "tool_name_accuracy"):
        assert abs(served[metric] - trial[metric]) <= 0.05, (metric, served, trial)


def test_the_champion_loaded_in_a_fresh_process_calls_tools_as_its_trial_did(
    sweep: dict,
) -> None:
    task, cases = held_out_cases()
    script = (
        "import json, sys, mlflow\n"
        "model = mlflow.pyfunc.load_model('models:/chat-tiny@champion')\n"
        "print(json.dumps(model.predict(json.loads(sys.stdin.read()))))\n"
    )
    # The spec's tools travel with the model: the conversations bring none.
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([openai_messages(c.messages) for c in cases]),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": sweep["uri"], "FTRAY_CACHE_DIR": "/nonexistent"},
        cwd=sweep["work"],
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert not [w for w in LIBRARY_WARNINGS if w in loaded.stderr], loaded.stderr[-3000:]
    answers = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert_scores_as_its_trial(sweep, task, cases, answers)


def test_mlflow_models_serve_answers_openai_requests_with_tool_calls_as_the_trial(
    sweep: dict,
) -> None:
    import requests

    task, cases = held_out_cases()
    tools = json.loads((DATASETS / "chat" / "tools.json").read_text())
    with models_serve("models:/chat-tiny@champion", sweep["uri"], sweep["work"]) as address:
        answers = []
        for case in cases:
            body = {"messages": openai_messages(case.messages), "tools": tools}
            response = requests.post(f"{address}/invocations", json=body, timeout=120)
            assert response.ok, response.text[-2000:]
            answers.append(response.json())
        bad = requests.post(f"{address}/invocations", json={"messages": "Hi"}, timeout=60)
    assert bad.status_code == 400 and "predict reads" in bad.json()["message"], bad.text
    log = (sweep["work"] / "serve.log").read_text()
    assert not [w for w in LIBRARY_WARNINGS if w in log], log[-3000:]
    assert_scores_as_its_trial(sweep, task, cases, answers)
