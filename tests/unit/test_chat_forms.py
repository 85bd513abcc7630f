"""Chat data as users have it: OpenAI rows with string arguments, ShareGPT, one-turn rows
(question/answer with `<think>`, prompt/completion, Alpaca), a JSON array, Parquet, a
`datasets` folder whose splits are kept; fields a form does not use are ignored and counted;
the metrics a data set cannot report are absent and refused as objectives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.tasks import load_task
from ftray.tasks.chat import ChatTask, chat_metrics, score_turn
from tests.conftest import ROOT, run_cli

FORMS = ROOT / "tests" / "data" / "chat_forms"
SPEC = """\
name: chat-forms
task:
  kind: chat
  data: {data}
  eval_fraction: 0.2
  test_fraction: 0.2
model:
  base: tiny
search:
  objective: {objective}
  mode: max
  num_trials: 2
  max_concurrent_trials: 1
  space:
    lora.r: {{choice: [4, 8]}}
resources_per_trial: {{cpu: 1, gpu: 0}}
"""


def spec_file(tmp: Path, data: Path | str, objective: str = "chat_score") -> Path:
    path = tmp / "spec.yaml"
    path.write_text(SPEC.format(data=data, objective=objective))
    return path


def task_of(tmp: Path, data: Path | str, objective: str = "chat_score") -> ChatTask:
    task = load_task(load_spec(spec_file(tmp, data, objective)))
    assert isinstance(task, ChatTask)
    return task


def test_openai_rows_with_string_arguments_read_as_objects(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="ftray"):
        task = task_of(tmp_path, FORMS / "openai.jsonl")
    assert len(task.conversations) == 6
    first = task.conversations[0]
    call = first.messages[1]["tool_calls"][0]["function"]
    assert call == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert first.messages[2] == {
        "role": "tool",
        "content": '{"city": "Oslo", "temperature": 10}',
        "tool_call_id": "call_0",
    }
    assert [t["function"]["name"] for t in first.tools] == ["get_weather"]
    [line] = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert line.endswith("the chat task does not use the field(s) 'id' (6 rows); ignored")


def test_sharegpt_rows_become_the_same_conversation(tmp_path: Path) -> None:
    shared = task_of(tmp_path, FORMS / "sharegpt.jsonl").conversations[0]
    assert [m["role"] for m in shared.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert shared.messages[2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    assert shared.messages[4]["content"] == "It is 10 degrees in Oslo."
    assert [t["function"]["name"] for t in shared.tools] == ["get_weather"]


@pytest.mark.parametrize(
    ("name", "user", "assistant"),
    [
        ("think_qa.jsonl", "What is 1 plus 1?", "<think>1 and 1 make 2.</think>2"),
        ("prompt_completion.jsonl", "Name the capital of country 0.", "Capital 0."),
        ("alpaca.jsonl", "Translate to French.\n\ncat", "cat (fr)"),
        ("rows.json", "Spell cat.", "c a t"),
    ],
)
def test_one_turn_rows_become_a_user_and_an_assistant_turn(
    tmp_path: Path, name: str, user: str, assistant: str
) -> None:
    task = task_of(tmp_path, FORMS / name)
    first = task.conversations[0]
    assert first.messages == (
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    )


def test_alpaca_without_input_is_the_instruction_alone(tmp_path: Path) -> None:
    last = task_of(tmp_path, FORMS / "alpaca.jsonl").conversations[-1]
    assert last.messages[0] == {"role": "user", "content": "Say hello."}


def test_a_reasoning_data_set_reports_think_format_and_no_tool_metrics(tmp_path: Path) -> None:
    task = task_of(tmp_path, FORMS / "think_qa.jsonl")
    assert [m for m in task.metric_names() if "_ci_" not in m] == [
        "train_loss",
        "eval_loss",
        "answer_exact",
        "think_format",
        "chat_score",
    ]


def test_parquet_rows_lose_the_nulls_arrow_added(tmp_path: Path) -> None:
    from_parquet = task_of(tmp_path, FORMS / "openai.parquet")
    from_jsonl = task_of(tmp_path, FORMS / "openai.jsonl")
    assert [c.messages for c in from_parquet.conversations] == [
        c.messages for c in from_jsonl.conversations
    ]


def test_a_datasets_folder_keeps_its_splits(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in (FORMS / "sharegpt.jsonl").read_text().splitlines()]
    folder = tmp_path / "weather"
    DatasetDict(
        {
            "train": Dataset.from_list(rows[:4]),
            "validation": Dataset.from_list(rows[4:5]),
            "test": Dataset.from_list(rows[5:]),
        }
    ).save_to_disk(str(folder))
    task = task_of(tmp_path, folder)
    city = {name: [c.messages[1]["content"] for c in task.parts[name]] for name in task.parts}
    assert city["validation"] == ["What's the weather in Perth?"]
    assert city["test"] == ["What's the weather in Seoul?"]
    assert len(city["train"]) == 4
    # Only a train split: validation and test are drawn from it as for a file.
    only_train = tmp_path / "only-train"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(only_train))
    drawn = task_of(tmp_path, only_train)
    assert len(drawn.parts["validation"]) >= 1 and len(drawn.parts["test"]) >= 1


def test_a_folder_that_is_no_dataset_is_refused_at_the_folder(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not one written by datasets' save_to_disk"):
        task_of(tmp_path, tmp_path / "plain")


def test_tool_metrics_are_absent_on_data_without_tools() -> None:
    answer = {"role": "assistant", "content": "Paris."}
    assert score_turn(answer, "Paris.", {}) == {"answer_exact": 1.0}
    metrics = chat_metrics([score_turn(answer, "Lyon.", {})])
    assert metrics == {"answer_exact": 0.0, "chat_score": 0.0}
    # A call the reference does not make still counts against the model.
    called = score_turn(answer, '<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>', {})
    assert called["tool_call_valid"] == 0.0 and called["tool_name_accuracy"] == 0.0


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        (
            [{"conversations": [{"from": "robot", "value": "hi"}]}],
            "conversations turn 1: unknown 'from' 'robot'; ShareGPT turns are from human, user, gpt, assistant, system, function_call, observation, tool",
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": '},
                                }
                            ],
                        },
                    ]
                }
            ],
            "the arguments of 'get_weather': the arguments string is not valid JSON",
        ),
        ([{"question": "Where?"}], "a row with 'question' needs 'answer'"),
        ([{"text": "free text"}], "no conversation in this row"),
    ],
)
def test_bad_rows_of_the_new_forms_exit_2_at_their_line(
    tmp_path: Path, rows: list, says: str
) -> None:
    good = (FORMS / "think_qa.jsonl").read_text()
    data = tmp_path / "data.jsonl"
    data.write_text(good + "".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("validate", str(spec_file(tmp_path, data)))
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [r for r in result.stderr.splitlines() if r.startswith("error:")]
    assert line.startswith(f"error: {data}:7: "), line
    assert says in line, line


def test_an_objective_the_data_cannot_report_is_refused_at_its_line(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, FORMS / "think_qa.jsonl", objective="arguments_exact")
    result = run_cli("validate", str(spec))
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [r for r in result.stderr.splitlines() if r.startswith("error:")]
    assert line == (
        f"error: {spec}:10: objective 'arguments_exact' is not reported on this data: "
        "no held-out turn calls a tool in this data's validation split; task 'chat' reports "
        "train_loss, eval_loss, answer_exact, think_format, chat_score on it"
    ), line
