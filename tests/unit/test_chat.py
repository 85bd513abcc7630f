"""The chat task: metrics on hand-written answers, tools in both forms, bad input at its
line, and the conversation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.tasks import load_task
from ftray.tasks.chat import (
    ChatTask,
    assistant_message,
    chat_metrics,
    normalise_tools,
    parse_response,
    schema_validators,
    score_turn,
)
from tests.conftest import DATASETS, SPECS, run_cli

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = normalise_tools({"get_weather": WEATHER})
VALIDATORS = schema_validators(TOOLS)
CALL_TURN = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ],
}
ANSWER_TURN = {"role": "assistant", "content": "It is 3 degrees in Oslo."}
REASONED_TURN = {"role": "assistant", "content": "<think>Cold place.</think>\nIt is 3 degrees."}


def call(arguments: Any, name: str = "get_weather") -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


def test_a_good_call_scores_one_on_every_call_metric() -> None:
    assert score_turn(CALL_TURN, call({"city": "Oslo"}), VALIDATORS) == {
        "tool_call_valid": 1.0,
        "tool_name_accuracy": 1.0,
        "arguments_exact": 1.0,
    }


def test_a_valid_call_with_other_arguments_is_valid_but_not_exact() -> None:
    scores = score_turn(CALL_TURN, call({"city": "Lima", "unit": "celsius"}), VALIDATORS)
    assert scores == {"tool_call_valid": 1.0, "tool_name_accuracy": 1.0, "arguments_exact": 0.0}


def test_bad_json_in_the_call_is_invalid() -> None:
    response = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}\n</tool_call>'
    assert score_turn(CALL_TURN, response, VALIDATORS) == {
        "tool_call_valid": 0.0,
        "tool_name_accuracy": 0.0,
        "arguments_exact": 0.0,
    }


def test_an_unknown_tool_is_invalid() -> None:
    scores = score_turn(CALL_TURN, call({"city": "Oslo"}, name="get_forecast"), VALIDATORS)
    assert scores["tool_call_valid"] == 0.0
    assert scores["tool_name_accuracy"] == 0.0


def test_a_missing_argument_is_invalid() -> None:
    scores = score_turn(CALL_TURN, call({"unit": "celsius"}), VALIDATORS)
    assert scores == {"tool_call_valid": 0.0, "tool_name_accuracy": 1.0, "arguments_exact": 0.0}


def test_a_wrong_argument_type_is_invalid() -> None:
    scores = score_turn(CALL_TURN, call({"city": 42}), VALIDATORS)
    assert scores["tool_call_valid"] == 0.0
    assert scores["tool_name_accuracy"] == 1.0


def test_arguments_that_are_not_an_object_are_invalid() -> None:
    assert score_turn(CALL_TURN, call(["Oslo"]), VALIDATORS)["tool_call_valid"] == 0.0
    # OpenAI's wire form, arguments as a JSON string holding an object, is read as the object
    wire = call(json.dumps({"city": "Oslo"}))
    assert score_turn(CALL_TURN, wire, VALIDATORS)["arguments_exact"] == 1.0


def test_extra_text_around_a_tagged_call_keeps_it_valid() -> None:
    response = "Let me check that for you.\n" + call({"city": "Oslo"}) + "\nOne moment."
    assert score_turn(CALL_TURN, response, VALIDATORS) == {
        "tool_call_valid": 1.0,
        "tool_name_accuracy": 1.0,
        "arguments_exact": 1.0,
    }
    # untagged JSON counts as a call only when it is the whole response
    bare = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
    assert score_turn(CALL_TURN, bare, VALIDATORS)["arguments_exact"] == 1.0
    assert score_turn(CALL_TURN, "Sure: " + bare, VALIDATORS)["tool_call_valid"] == 0.0


def test_an_unclosed_call_is_invalid() -> None:
    response = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert score_turn(CALL_TURN, response, VALIDATORS)["tool_call_valid"] == 0.0


def test_no_call_where_one_is_expected() -> None:
    assert score_turn(CALL_TURN, "It is sunny.", VALIDATORS) == {
        "tool_call_valid": 0.0,
        "tool_name_accuracy": 0.0,
        "arguments_exact": 0.0,
    }


def test_answers_are_compared_after_the_think_block_and_calls_are_wrong_there() -> None:
    assert score_turn(ANSWER_TURN, "It is 3 degrees in  Oslo.", VALIDATORS) == {
        "tool_name_accuracy": 1.0,
        "answer_exact": 1.0,
    }
    spurious = score_turn(ANSWER_TURN, call({"city": "Oslo"}), VALIDATORS)
    assert spurious == {"tool_call_valid": 1.0, "tool_name_accuracy": 0.0, "answer_exact": 0.0}


def test_think_format_needs_one_closed_block_first() -> None:
    good = score_turn(REASONED_TURN, "<think>Brr.</think>\nIt is 3 degrees.", VALIDATORS)
    assert good == {"tool_name_accuracy": 1.0, "answer_exact": 1.0, "think_format": 1.0}
    unclosed = score_turn(REASONED_TURN, "<think>Brr. It is 3 degrees.", VALIDATORS)
    assert unclosed["think_format"] == 0.0 and unclosed["answer_exact"] == 0.0
    missing = score_turn(REASONED_TURN, "It is 3 degrees.", VALIDATORS)
    assert missing == {"tool_name_accuracy": 1.0, "answer_exact": 1.0, "think_format": 0.0}
    twice = "<think>a</think><think>b</think>It is 3 degrees."
    assert score_turn(REASONED_TURN, twice, VALIDATORS)["think_format"] == 0.0
    late = "It is<think>a</think> 3 degrees."
    assert score_turn(REASONED_TURN, late, VALIDATORS)["think_format"] == 0.0
    empty_answer = "<think>Brr.</think>"
    assert score_turn(REASONED_TURN, empty_answer, VALIDATORS)["think_format"] == 0.0


def test_reasoning_before_a_call() -> None:
    parsed = parse_response("<think>Need weather.</think>\n" + call({"city": "Oslo"}))
    assert parsed.think_well_formed and parsed.calls[0].name == "get_weather"
    assert parsed.answer == ""


def test_chat_score_is_the_mean_of_the_metrics_that_apply() -> None:
    turns = [
        {"tool_call_valid": 1.0, "tool_name_accuracy": 1.0, "arguments_exact": 0.0},
        {"tool_name_accuracy": 0.0, "answer_exact": 1.0},
    ]
    metrics = chat_metrics(turns)
    assert metrics == {
        "tool_call_valid": 1.0,
        "tool_name_accuracy": 0.5,
        "arguments_exact": 0.0,
        "answer_exact": 1.0,
        "chat_score": 2.5 / 4,
    }
    assert set(chat_metrics([])) == {
        "tool_call_valid",
        "tool_name_accuracy",
        "arguments_exact",
        "answer_exact",
        "think_format",
        "chat_score",
    }


# --- served answers ----------------------------------------------------------------------


def openai_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_a_served_call_is_an_openai_tool_call_with_its_reasoning() -> None:
    answer = assistant_message("<think>Need weather.</think>\n" + call({"city": "Oslo"}))
    assert answer == {
        "content": "",
        "tool_calls": [openai_call("get_weather", {"city": "Oslo"})],
        "reasoning": "Need weather.",
    }
    # arguments as OpenAI's API writes them: a JSON string, read back as the object
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    bare = json.dumps({"name": "get_weather", "parameters": {"city": "Oslo"}})
    assert assistant_message(bare)["tool_calls"] == [openai_call("get_weather", {"city": "Oslo"})]


def test_a_served_answer_keeps_its_text_and_reasoning_apart() -> None:
    assert assistant_message(REASONED_TURN["content"]) == {
        "content": "It is 3 degrees.",
        "tool_calls": [],
        "reasoning": "Cold place.",
    }
    assert assistant_message("Line one.\nLine two.") == {
        "content": "Line one.\nLine two.",
        "tool_calls": [],
        "reasoning": None,
    }
    around = assistant_message("Let me check.\n" + call({"city": "Oslo"}) + "\nOne moment.")
    assert around["content"] == "Let me check.\n\nOne moment." and len(around["tool_calls"]) == 1
    # a turn cut off inside its reasoning: the reasoning so far, no content
    assert assistant_message("<think>Still thinking") == {
        "content": "",
        "tool_calls": [],
        "reasoning": "Still thinking",
    }


def test_a_served_turn_with_a_call_that_does_not_parse_calls_nothing() -> None:
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    for text in (broken, call({"city": "Oslo"}) + "\n" + broken):
        answer = assistant_message("<think>Hm.</think>\n" + text)
        assert answer == {"content": text, "tool_calls": [], "reasoning": "Hm."}


def test_the_chat_task_serves_its_tools_and_openai_answers() -> None:
    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    listed = json.loads((DATASETS / "chat" / "tools.json").read_text())
    assert task.serving_config() == {"tools": normalise_tools(listed)}
    assert ChatTask.serving_answer("Hi.") == {"content": "Hi.", "tool_calls": [], "reasoning": None}
    trigger = load_task(load_spec(SPECS / "trigger_tiny.yaml"))
    assert trigger.serving_config() == {} and trigger.serving_answer("Bob") == "Bob"


def test_both_tool_file_forms_give_the_same_tools() -> None:
    listed = json.loads((DATASETS / "chat" / "tools.json").read_text())
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in listed}
    from_list = normalise_tools(listed)
    from_object = normalise_tools(by_name)
    assert [t["function"]["name"] for t in from_list] == list(by_name)
    assert [t["function"]["parameters"] for t in from_object] == list(by_name.values())
    with pytest.raises(ValueError, match="defined twice"):
        normalise_tools([listed[0], listed[0]])
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        normalise_tools({"bad": {"type": "nonsense"}})


# --- data checks ---------------------------------------------------------------------------


def write_spec(tmp_path: Path, rows: list[Any], tools: Any = None, **task: Any) -> Path:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(tools if tools is not None else {"get_weather": WEATHER}))
    fields = {"kind": "chat", "data": "chat.jsonl", "tools": "tools.json", **task}
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: chat-test\n"
        f"task: {json.dumps(fields)}\n"
        "model: {base: tiny}\n"
        "train: {epochs: 1, seed: 0}\n"
    )
    return spec


def weather_chat(city: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "role": "assistant",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": city}}],
            },
            {"role": "tool", "content": f"{city}: 3 degrees"},
            {
                "role": "assistant",
                "content": f"<think>Read it.</think>\nIt is 3 degrees in {city}.",
            },
        ]
    }


GOOD = [weather_chat(c) for c in ("Oslo", "Lima", "Rome", "Cairo", "Perth", "Seoul")]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"name": "get_forecast", "arguments": {}}],
                    },
                ]
            },
            "calls tool 'get_forecast', which is not among the tools",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"name": "get_weather", "arguments": "Oslo"}],
                    },
                ]
            },
            "the arguments of 'get_weather': the arguments string is not valid JSON (Expecting "
            "value at column 1)",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"name": "get_weather", "arguments": '["Oslo"]'}],
                    },
                ]
            },
            "must be a JSON object (or a JSON string of one), got list",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"name": "get_weather", "arguments": {"town": "Oslo"}}],
                    },
                ]
            },
            "fail its schema",
        ),
        (
            {
                "messages": [
                    {"role": "narrator", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "unknown role 'narrator'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "tool", "content": "3 degrees"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "a tool result with no assistant tool call before it",
        ),
        (
            {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
            "has no assistant turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "<think>never closed"},
                ]
            },
            "a <think> block must open the turn and be closed once",
        ),
        ({"conversation": []}, "no conversation in this row: a row is OpenAI's"),
    ],
)
def test_bad_conversations_exit_2_at_their_line(tmp_path: Path, bad: Any, message: str) -> None:
    spec = write_spec(tmp_path, [*GOOD[:2], bad, *GOOD[2:]])
    result = run_cli("validate", str(spec))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"error: {tmp_path / 'chat.jsonl'}:3: "), line
    assert message in line, line
    assert "Traceback" not in result.stderr and "HEAVY-IMPORT" not in result.stderr


def test_a_row_may_bring_its_own_tools(tmp_path: Path) -> None:
    own = {
        "tools": [
            {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}
        ],
        "messages": [
            {"role": "user", "content": "ping?"},
            {"role": "assistant", "tool_calls": [{"name": "ping", "arguments": {}}]},
            {"role": "tool", "content": "pong"},
            {"role": "assistant", "content": "pong"},
        ],
    }
    task = load_task(load_spec(write_spec(tmp_path, [*GOOD, own])))
    assert isinstance(task, ChatTask)
    tools = {c.line: [t["function"]["name"] for t in c.tools] for c in task.conversations}
    assert tools[7] == ["ping"] and tools[1] == ["get_weather"]


def test_a_broken_tools_file_is_reported_at_the_file(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GOOD, tools=[{"description": "no name"}])
    result = run_cli("validate", str(spec))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'tools.json'}: tool 1 is not a tool")


def test_fractions_that_leave_nothing_to_train_on_are_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GOOD, eval_fraction=0.6, test_fraction=0.4)
    result = run_cli("validate", str(spec))
    assert result.returncode == 2
    assert "leave nothing to train on" in result.stderr


# --- the split ---------------------------------------------------------------------------


def test_the_split_is_by_conversation_deterministic_and_disjoint() -> None:
    spec = load_spec(SPECS / "chat_tiny.yaml")
    first, second = load_task(spec), load_task(spec)
    assert isinstance(first, ChatTask) and isinstance(second, ChatTask)
    assert first.split_record() == second.split_record()
    parts = [set(first.split[name]) for name in ("train", "validation", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    total = sum(map(len, parts))
    assert len(parts[1]) == round(0.15 * total) and len(parts[2]) == round(0.1 * total)
    # held-out turns come from validation conversations only; the test turns are apart
    assert {c.key for c in first.parts["validation"]} == set(first.split["validation"])

    def opens(case: Any, part: str) -> bool:
        """Whether the case's messages open one of `part`'s conversations."""
        return any(
            list(c.messages)[: len(case.messages)] == case.messages for c in first.parts[part]
        )

    assert first.eval_cases() and first.test_cases()
    assert all(opens(case, "validation") for case in first.eval_cases())
    assert all(opens(case, "test") for case in first.test_cases())
    other_seed = load_task(load_spec(SPECS / "chat_tiny.yaml", ["train.seed=1"]))
    assert isinstance(other_seed, ChatTask)
    assert other_seed.split["validation"] != first.split["validation"]


def test_a_stored_split_is_reused_and_changed_data_refused(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, GOOD))
    task = load_task(spec)
    assert isinstance(task, ChatTask)
    record = task.split_record()
    reseeded = load_task(load_spec(write_spec(tmp_path, GOOD), ["train.seed=5"]))
    assert isinstance(reseeded, ChatTask)
    reseeded.reuse_split(record)
    assert reseeded.split == task.split
    assert [c.key for c in reseeded.parts["validation"]] == [
        c.key for c in task.parts["validation"]
    ]
    grown = load_task(load_spec(write_spec(tmp_path, [*GOOD, weather_chat("Quito")])))
    with pytest.raises(InputError, match="1 conversation\\(s\\) new, 0 gone"):
        grown.reuse_split(record)


def test_resume_takes_the_split_the_sweep_stored(tmp_path: Path) -> None:
    """`--resume` reads split.json off the parent run: a spec whose seed would split
    differently still trains and scores on the stored split."""
    from mlflow import MlflowClient

    from ftray.sweep.resume import reuse_stored_split
    from ftray.sweep.runner import store_split

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("chat"))
    original = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    stored = store_split(client, run.info.run_id, original)
    assert stored == original.split_record()

    resumed = load_task(load_spec(SPECS / "chat_tiny.yaml", ["train.seed=3"]))
    assert resumed.split_record() != stored  # its own seed would split otherwise
    assert reuse_stored_split(client, run.info.run_id, resumed) == stored
    assert isinstance(resumed, ChatTask) and isinstance(original, ChatTask)
    assert resumed.split == original.split
    assert [c.messages for c in resumed.eval_cases()] == [c.messages for c in original.eval_cases()]
    assert resumed.heldout_fingerprint() == original.heldout_fingerprint()

    other = client.create_run(client.create_experiment("no-split"))
    with pytest.raises(RuntimeError, match="has no split.json"):
        reuse_stored_split(client, other.info.run_id, resumed)
