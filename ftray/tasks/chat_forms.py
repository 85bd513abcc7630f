"""The forms conversation data comes in, as the chat task's rows: `{"messages", "tools"}`.

- OpenAI: `{"messages": [...], "tools"?: [...]}`; a call's `arguments` may be an object or,
  as the OpenAI API writes them, a JSON string of one (parsed where the call is checked).
- ShareGPT: `{"conversations": [{"from": ..., "value": ...}], "system"?: ..., "tools"?: ...}`
  with `from` one of human, gpt, system, function_call (the value is the call as JSON),
  observation (a tool's result); user, assistant and tool are read as well. `tools` may be
  a list or a JSON string of one (LLaMA-Factory writes it so).
- One turn: `question`/`answer`, `prompt`/`completion`, or `instruction`/`input`/`output`
  (Alpaca: the input, when not empty, follows the instruction after a blank line), each with
  an optional `system`. An answer may open with a `<think>` block, so a reasoning data set
  sweeps as it is.

Fields a form does not use (an `id`, a `source`) are ignored; the task says which and in how
many rows, once.
"""

from __future__ import annotations

import json
from typing import Any

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
ONE_TURN = (
    ("question", "answer"),
    ("prompt", "completion"),
    ("instruction", "output"),
)
ONE_TURN_OPTIONAL = {"instruction": ("input", "system")}
FORMS_HELP = (
    'a row is OpenAI\'s {"messages": [...]}, ShareGPT\'s {"conversations": [{"from", '
    '"value"}, ...]}, or one turn: question/answer, prompt/completion or instruction/output'
)


class FormProblem(ValueError):
    """A row of a known form with something wrong in it, or a row of no known form."""


def as_messages_row(row: Any) -> tuple[dict[str, Any], list[str]]:
    """(the row as `{"messages": [...], "tools"?: ...}`, the fields it had that its form does
    not use); FormProblem says what is wrong."""
    if not isinstance(row, dict):
        raise FormProblem(f"each row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        used = {"messages", "tools"}
        converted = {k: row[k] for k in used if k in row}
    elif "conversations" in row:
        used = {"conversations", "tools", "system"}
        converted = _sharegpt(row)
    else:
        pair = next((p for p in ONE_TURN if p[0] in row or p[1] in row), None)
        if pair is None:
            raise FormProblem(f"no conversation in this row: {FORMS_HELP}")
        used = {*pair, "system", *ONE_TURN_OPTIONAL.get(pair[0], ())}
        converted = _one_turn(row, pair)
    return converted, sorted(row.keys() - used)


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in row else type(value).__name__
        raise FormProblem(f"'{key}' must be a string, got {got}")
    return value


def _one_turn(row: dict[str, Any], pair: tuple[str, str]) -> dict[str, Any]:
    ask, answer = pair
    missing = [k for k in pair if k not in row]
    if missing:
        raise FormProblem(f"a row with '{pair[1 - pair.index(missing[0])]}' needs '{missing[0]}'")
    prompt = _text(row, ask)
    extra = row.get("input") if ask == "instruction" else None
    if extra is not None:
        if not isinstance(extra, str):
            raise FormProblem(f"'input' must be a string, got {type(extra).__name__}")
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
    messages = []
    if row.get("system") is not None:
        messages.append({"role": "system", "content": _text(row, "system")})
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _text(row, answer)},
    ]
    return {"messages": messages}


def _json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormProblem(f"{what} is not valid JSON ({exc.msg} at column {exc.colno})") from None


def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise FormProblem('\'conversations\' must be a non-empty list of {"from", "value"}')
    messages: list[dict[str, Any]] = []
    if row.get("system") is not None:
        messages.append({"role": "system", "content": _text(row, "system")})
    for index, turn in enumerate(turns, start=1):
        where = f"conversations turn {index}"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise FormProblem(f'{where}: must be an object with "from" and "value"')
        source = turn["from"]
        role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            raise FormProblem(
                f"{where}: unknown 'from' {source!r}; ShareGPT turns are from "
                f"{', '.join(SHAREGPT_ROLES)}"
            )
        value = turn["value"]
        if not isinstance(value, str):
            raise FormProblem(f"{where} ({source}): 'value' must be a string")
        if source == "function_call":
            calls = _json_value(value, f"{where} (function_call): the call")
            calls = calls if isinstance(calls, list) else [calls]
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            messages.append({"role": role, "content": value})
    converted: dict[str, Any] = {"messages": messages}
    if "tools" in row:
        tools = row["tools"]
        if isinstance(tools, str):
            tools = _json_value(tools, "'tools'") if tools.strip() else []
        if tools != []:
            converted["tools"] = tools
    return converted


def parse_arguments(arguments: Any) -> Any:
    """A call's arguments as an object: OpenAI's JSON string parsed; FormProblem when the
    string is not JSON (anything else is returned for the caller to judge)."""
    if isinstance(arguments, str):
        return _json_value(arguments, "the arguments string")
    return arguments
