"""What a registered version's `predict` reads: every accepted form (as given in Python, and as
MLflow's scoring server and pandas hand it over), and the error for what it cannot read."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.proto_json_utils import parse_tf_serving_input

from ftray.tracking.predict_inputs import Request, read_requests

QUESTION = {"role": "user", "content": "What's the weather in Oslo?"}
SYSTEM = {"role": "system", "content": "Be brief."}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 3}'}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
RENDERED_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ],
}
RENDERED_RESULT = {"role": "tool", "content": '{"temperature": 3}', "tool_call_id": "call_1"}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def served(inputs: Any) -> Any:
    """`inputs` as MLflow's scoring server hands a `{"inputs": ...}` body to a model without
    an input schema."""
    return parse_tf_serving_input({"inputs": json.loads(json.dumps(inputs))}, schema=None)


def test_prompt_strings_are_user_turns_one_answer_each() -> None:
    requests, single = read_requests(["Hi", "Bye"])
    assert requests == [Request(user("Hi")), Request(user("Bye"))] and not single
    assert read_requests("Hi") == ([Request(user("Hi"))], True)


def test_a_list_of_messages_is_one_conversation_not_prompts() -> None:
    requests, single = read_requests([SYSTEM, QUESTION])
    assert requests == [Request([SYSTEM, QUESTION])] and not single


def test_a_list_of_conversations() -> None:
    requests, _ = read_requests([[QUESTION], [SYSTEM, QUESTION, CALL, RESULT]])
    assert [r.messages for r in requests] == [
        [QUESTION],
        [SYSTEM, QUESTION, RENDERED_CALL, RENDERED_RESULT],
    ]


def test_tool_calls_and_results_take_the_form_training_renders() -> None:
    (request,), _ = read_requests([QUESTION, CALL, RESULT])
    assert request.messages[1:] == [RENDERED_CALL, RENDERED_RESULT]
    bare = {"role": "assistant", "tool_calls": [{"name": "get_weather", "arguments": {"a": 1}}]}
    (request,), _ = read_requests([QUESTION, bare])
    assert request.messages[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_an_answer_fed_back_renders_its_reasoning_as_a_think_block() -> None:
    answer = {"role": "assistant", "content": "3 degrees.", "tool_calls": [], "reasoning": "Cold."}
    (request,), _ = read_requests([QUESTION, answer])
    assert request.messages[1] == {
        "role": "assistant",
        "content": "<think>Cold.</think>\n3 degrees.",
    }


def test_openai_requests_bring_their_tools() -> None:
    requests, single = read_requests({"messages": [QUESTION], "tools": TOOLS})
    assert single and requests[0].messages == [QUESTION]
    assert requests[0].tools is not None
    assert requests[0].tools[0]["function"]["name"] == "get_weather"
    requests, single = read_requests([{"messages": [QUESTION]}, {"prompt": "Hi", "tools": []}])
    assert not single
    assert requests == [Request([QUESTION]), Request(user("Hi"), [])]


def test_a_dataframe_with_a_messages_or_prompt_column() -> None:
    frame = pd.DataFrame({"messages": [[QUESTION], [SYSTEM, QUESTION]]})
    requests, single = read_requests(frame)
    assert [r.messages for r in requests] == [[QUESTION], [SYSTEM, QUESTION]] and not single
    requests, _ = read_requests(pd.DataFrame({"prompt": ["Hi"]}))
    assert requests == [Request(user("Hi"))]
    # dataframe_records where only some rows bring tools: pandas fills the rest with NaN
    frame = pd.DataFrame([{"messages": [QUESTION], "tools": TOOLS}, {"messages": [QUESTION]}])
    requests, _ = read_requests(frame)
    assert requests[0].tools and requests[1].tools is None


def test_a_frame_of_one_unnamed_column_holds_prompts() -> None:
    # what MLflow makes of a list of prompts for a version logged with an input schema
    requests, _ = read_requests(pd.DataFrame(["Hi", "Bye"]))
    assert requests == [Request(user("Hi")), Request(user("Bye"))]


@pytest.mark.parametrize(
    "value",
    [
        ["Hi", "Bye"],
        [QUESTION, CALL, RESULT],
        [[QUESTION], [QUESTION]],
        {"messages": [SYSTEM, QUESTION, CALL, RESULT], "tools": TOOLS},
        [{"messages": [QUESTION], "tools": TOOLS}, {"messages": [SYSTEM, QUESTION, CALL]}],
    ],
    ids=["prompts", "conversation", "conversations", "request", "requests"],
)
def test_what_the_scoring_server_makes_of_inputs_reads_as_the_json_itself(value: Any) -> None:
    recast = served(value)
    assert "array(" in repr(recast), "the server made numpy arrays of it"
    assert read_requests(recast) == read_requests(value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (42, "the input is int"),
        ([QUESTION, "Hi"], "item 1 is one message; a conversation is a list of messages"),
        ([{"role": "robot", "content": "x"}], "message 1: unknown role 'robot'"),
        ([[QUESTION, {"role": "user"}]], 'item 1: message 2 (user): needs "content"'),
        ([{"role": "user", "content": ["x"]}], "content must be a string, got list"),
        ({"messages": [QUESTION], "model": "gpt"}, "the input has 'model', which is not read"),
        ({"tools": TOOLS}, 'the input needs either "messages" or "prompt"'),
        ({"messages": [QUESTION], "tools": 3}, "the input: tools: tools must be a list"),
        ({"messages": QUESTION}, '"messages" must be a list of messages'),
        (
            [{"role": "user", "content": "x", "tool_calls": []}, CALL | {"tool_calls": [1]}],
            "message 2 (assistant), call 1: a tool call is",
        ),
        (
            [CALL | {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}],
            "the arguments of 'f' are not JSON",
        ),
        ([[]], "item 1: a conversation is a non-empty list"),
        (pd.DataFrame({"question": ["x"], "answer": ["y"]}), "columns ['question', 'answer']"),
        (np.array([[1, 2]]), "item 1: message 1: a message is"),
    ],
)
def test_an_input_it_cannot_read_is_an_error_naming_the_forms(value: Any, says: str) -> None:
    with pytest.raises(MlflowException) as caught:
        read_requests(value)
    message = caught.value.message
    assert says in message, message
    assert "predict reads a prompt string; a conversation" in message
    assert caught.value.get_http_status_code() == 400
