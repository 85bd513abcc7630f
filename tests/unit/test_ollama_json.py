"""What Ollama hands a TEMPLATE, as the Python a chat template takes, and the Go template text
that writes it as JSON in a chat template's style: through Go's text/template with the data
Ollama gives it, the same text as `json.dumps`."""

from __future__ import annotations

from typing import Any

import pytest

from ftray.export.ollama_json import (
    GoJson,
    JsonStyle,
    find_json,
    go_text,
    ollama_arguments,
    ollama_messages,
    ollama_tools,
)
from tests.export_tools import go_render_all

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "convert",
            "description": 'Convert <an> amount & say "how".',
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string", "minLength": 3, "description": "ISO code"},
                    "amount": {"type": ["number"], "exclusiveMinimum": 0},
                    "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
                    "rates": {
                        "type": "object",
                        "properties": {"b": {"type": "number"}, "a": {"type": "number"}},
                        "required": ["a"],
                        "additionalProperties": False,
                    },
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 9}},
                },
                "required": ["to", "amount"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]
ARGUMENTS: list[dict[str, Any]] = [
    {"to": "EUR", "amount": 10, "when": None, "rates": {"b": 1.5, "a": 2.0}, "tags": ["x", "y"]},
    {},
    {"nested": {"deeper": {"list": [1, [2, {"k": True}], "ä ✓ <&>"]}}, "z": False, "a": ""},
]


def test_ollama_keeps_its_own_fields_sorted() -> None:
    (convert, noop) = ollama_tools(TOOLS)
    assert list(convert) == ["type", "function"]
    parameters = convert["function"]["parameters"]
    assert list(parameters) == ["type", "properties", "required"]  # additionalProperties gone
    assert list(parameters["properties"]) == ["amount", "rates", "tags", "to", "when"]
    assert parameters["properties"]["to"] == {"type": "string", "description": "ISO code"}
    assert parameters["properties"]["amount"] == {"type": "number"}  # one type: a string
    assert parameters["properties"]["when"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert parameters["properties"]["rates"] == {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a"],
    }
    assert parameters["properties"]["tags"]["items"] == {"maxLength": 9, "type": "string"}
    assert noop == {
        "type": "function",
        "function": {
            "name": "noop",
            "description": "",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    assert list(ollama_arguments({"b": 1.0, "a": {"d": 2.5, "c": 3}})) == ["a", "b"]
    assert ollama_arguments({"b": 1.0, "a": {"d": 2.5, "c": 3}}) == {
        "a": {"c": 3, "d": 2.5},
        "b": 1,
    }
    assert ollama_arguments('{"y": 1, "x": 2}') == {"x": 2, "y": 1}


def test_ollama_merges_consecutive_messages_of_a_role_but_not_tool_results() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": "a", "name": "f", "tool_call_id": "1"},
        {"role": "tool", "content": "b"},
    ]
    assert ollama_messages(messages) == [
        {"role": "user", "content": "one\n\ntwo"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
        },
        {"role": "tool", "content": "a"},
        {"role": "tool", "content": "b"},
    ]


def test_the_style_of_json_in_a_text_is_found() -> None:
    value = {"a": [1, {"b": "c"}], "d": "e"}
    for style in (JsonStyle(), JsonStyle(None, ",", ":"), JsonStyle(4, ",", ": ", 2)):
        text = "before " + style.dumps(value) + " after"
        assert find_json(text, value) == (style, len("before "))
    assert find_json("no json here", value) is None


def test_go_text_quotes_what_go_would_read_as_an_action() -> None:
    assert go_text("a {{ b }} c{") == 'a {{"{{"}} b }} c{{"{"}}'


STYLES = [
    pytest.param(JsonStyle(), id="tojson"),
    pytest.param(JsonStyle(None, ",", ":"), id="compact"),
    pytest.param(JsonStyle(2, ",", ": ", 1), id="indent-2-in-a-list"),
    pytest.param(JsonStyle(4, ", ", ": "), id="indent-4-spaced"),
]


@pytest.mark.parametrize("style", STYLES)
def test_go_writes_tools_and_arguments_as_json_dumps_does(style: JsonStyle) -> None:
    whole, function = GoJson(style, "w"), GoJson(style, "f")
    template = (
        "{{ range $t := .Tools }}"
        + whole.tool("$t", style.depth)
        + "|"
        + function.tool("$t.Function", style.depth, whole=False)
        + "|{{ end }}{{ range .Messages }}{{ range .ToolCalls }}"
        + whole.arguments(".Function.Arguments", style.depth)
        + "|{{ end }}{{ end }}"
        + whole.defines()
        + function.defines()
    )
    calls = [
        {"type": "function", "function": {"name": "f", "arguments": arguments}}
        for arguments in ARGUMENTS
    ]
    messages = [{"role": "assistant", "content": "", "tool_calls": calls}]
    (text,) = go_render_all(template, [(messages, TOOLS)])
    expected = "".join(
        style.dumps(tool) + "|" + style.dumps(tool["function"]) + "|"
        for tool in ollama_tools(TOOLS)
    ) + "".join(style.dumps(ollama_arguments(arguments)) + "|" for arguments in ARGUMENTS)
    assert text == expected
