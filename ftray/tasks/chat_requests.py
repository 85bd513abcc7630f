"""Conversations as a served model receives them, OpenAI chat messages, in the form the chat
task's training renders: calls as ``{"type": "function", "function": {"name", "arguments":
{...}}}``, reasoning inside the content as ``<think>...</think>``.

Unlike training data, a request is not checked against the tools: it may end on any turn and
call what it likes; only what the template cannot render is refused.
"""

from __future__ import annotations

import json
from typing import Any

from ftray.tasks.base import Message
from ftray.tasks.chat import MESSAGE_KEYS, ROLES, THINK_CLOSE, THINK_OPEN

ASSISTANT_KEYS = MESSAGE_KEYS | {"reasoning"}
"""An assistant message may carry `reasoning`, as the served model answers it."""


def request_call(call: Any, where: str) -> dict[str, Any]:
    """One call of an assistant message (OpenAI's form or a bare ``{"name", "arguments"}``;
    arguments an object or a JSON string) in template form; ValueError says what is wrong."""
    function = call.get("function", call) if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(
            f'{where}: a tool call is {{"type": "function", "function": {{"name": ..., '
            '"arguments": ...}}'
        )
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: the arguments of '{name}' are not JSON ({exc.msg})"
            ) from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ValueError(
            f"{where}: the arguments of '{name}' must be a JSON object, "
            f"got {type(arguments).__name__}"
        )
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def request_message(message: Any, where: str) -> Message:
    """One OpenAI chat message in template form; ValueError says what is wrong."""
    if not isinstance(message, dict):
        raise ValueError(
            f'{where}: a message is {{"role": ..., "content": ...}}, got {type(message).__name__}'
        )
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r}; roles are {', '.join(ROLES)}")
    where = f"{where} ({role})"
    unknown = sorted(message.keys() - (ASSISTANT_KEYS if role == "assistant" else MESSAGE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unexpected {', '.join(map(repr, unknown))}")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"{where}: content must be a string, got {type(content).__name__}")
    turn: Message = {"role": role, "content": content or ""}
    if role == "assistant":
        reasoning = message.get("reasoning")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ValueError(f"{where}: reasoning must be a string")
            block = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}"
            turn["content"] = f"{block}\n{content}" if content else block
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise ValueError(f"{where}: tool_calls must be a list of calls")
        if calls:
            turn["tool_calls"] = [
                request_call(call, f"{where}, call {n}") for n, call in enumerate(calls, start=1)
            ]
    else:
        if message.get("tool_calls"):
            raise ValueError(f"{where}: only assistant messages carry tool_calls")
        if content is None:
            raise ValueError(f'{where}: needs "content"')
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            turn[key] = message[key]
    return turn


def request_messages(messages: Any) -> list[Message]:
    """A conversation (a non-empty list of OpenAI chat messages) in template form; ValueError
    says which message is wrong and how."""
    if not isinstance(messages, list) or not messages:
        raise ValueError('a conversation is a non-empty list of {"role": ..., "content": ...}')
    return [request_message(m, f"message {n}") for n, m in enumerate(messages, start=1)]
