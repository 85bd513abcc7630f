"""Reading a chat template's layout (`chat_layout`) off the template itself.

It is rendered with marker contents: each role's prefix and suffix, the generation prompt, a
leading BOS and any default system prompt are taken from the text around the markers. Marker
tool calls and tool results give how an assistant message with calls and a run of tool
messages are written; rendering again with marker tool definitions gives the framing when
tools are given and where the definitions go, each as JSON (`ollama_json`). The result is
checked by rendering other conversations, with tools and without, both ways. A template that
is not such a layout (it rewrites content, frames a message by its position, refuses a system
message, writes tools or call arguments other than as JSON) is refused, naming what it does.

What Ollama hands a template is not all a chat template may be given: tool definitions keep
only the fields of Ollama's types and come, like call arguments, as maps in sorted key order
(`ollama_json`). The layout renders what the chat template renders for that view.

Only the tokenizer's `apply_chat_template`, `chat_template` and `bos_token` are used, so this
module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, NoReturn

from ftray.export.chat_layout import (
    TOOLS,
    WHERE,
    ChatLayout,
    Frame,
    Message,
    Tool,
    ToolCallLayout,
    ToolResultLayout,
    ToolsLayout,
    UntranslatableTemplate,
)
from ftray.export.ollama_json import (
    JsonStyle,
    find_json,
    ollama_arguments,
    ollama_messages,
    ollama_tools,
)

# Marker contents: plain lower-case ASCII, so a template that rewrites content shows up as a
# missing marker, and none is a prefix of another.
_SYSTEM = "ftray-marker-system-7c1e"
_USER_1 = "ftray-marker-user-one-7c1e"
_ASSISTANT_1 = "ftray-marker-assistant-one-7c1e"
_USER_2 = "ftray-marker-user-two-7c1e"
_CALLING = "ftray-marker-assistant-calling-7c1e"
_ANSWER = "ftray-marker-assistant-answer-7c1e"
_RESULT_1 = "ftray-marker-result-one-7c1e"
_RESULT_2 = "ftray-marker-result-two-7c1e"
_RESULT_ESCAPED = 'ftray-marker-result "quoted" \\ and\nlines-7c1e'
_RESULT_STEM = "ftray-marker-result"
_CALL_ID = "ftray-marker-call-id-7c1e"
_RESULT_NAME = "ftray_marker_result_name"
_CALL_1 = {
    "name": "ftray_marker_call_one",
    "arguments": {"ftray_marker_key_a": "ftray-marker-value-one", "ftray_marker_key_b": 7},
}
_CALL_2 = {
    "name": "ftray_marker_call_two",
    "arguments": {"ftray_marker_key_c": ["ftray-marker-value-two", True], "ftray_marker_key_d": 0},
}
# Marker tools: two keys or more at every level, so the separators show; a non-ASCII
# description, so JSON that escapes it is not mistaken for `tojson`'s.
_MARKER_TOOLS: tuple[Tool, ...] = tuple(
    {
        "type": "function",
        "function": {
            "name": f"ftray_marker_tool_{n}",
            "description": f"ftray marker tool {n}, é",
            "parameters": {
                "type": "object",
                "properties": {
                    f"ftray_marker_{n}_a": {"type": "string", "description": "ftray marker a"},
                    f"ftray_marker_{n}_b": {"type": "integer", "enum": [1, 2]},
                },
                "required": [f"ftray_marker_{n}_a"],
            },
        },
    }
    for n in ("one", "two")
)

# Conversations rendered through both the chat template and the derived layout.
_CHECKS: tuple[tuple[tuple[Message, ...], bool], ...] = (
    (({"role": "user", "content": "Hello there"},), True),
    (
        (
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
        ),
        True,
    ),
    (
        (
            {"role": "system", "content": "Think first.\nThen answer."},
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "<think>Rayleigh scattering.</think>Scattering."},
            {"role": "user", "content": "And at sunset?"},
        ),
        True,
    ),
    (
        (
            {"role": "user", "content": '  padded, with {{ braces }} and "quotes"  \n'},
            {"role": "assistant", "content": "\n<think>\nreasoning\n</think>\n\nanswer\n"},
            {"role": "user", "content": "Second Question?"},
            {"role": "assistant", "content": "Second answer."},
            {"role": "user", "content": "third"},
        ),
        True,
    ),
    (
        (
            {"role": "user", "content": "Ask"},
            {"role": "assistant", "content": "Answer"},
        ),
        False,
    ),
    (
        (
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ),
        False,
    ),
)


def _calls(*calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": name, "arguments": arguments}}
        for name, arguments in calls
    ]


# Tool definitions and conversations with tool turns, rendered both ways with and without
# tools (the tool turns only where the chat template takes them).
_CHECK_TOOLS: tuple[Tool, ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": 'The weather "now" in a city.\nCall it once per city.',
            "parameters": {
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "city": {"type": "string", "description": "The city's name"},
                    "days": {"type": ["integer", "null"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a table <for a group> & say so.",
            "parameters": {
                "type": "object",
                "properties": {
                    "guests": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                    "when": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                    "place": {
                        "type": "object",
                        "properties": {"room": {"type": "string"}, "floor": {"type": "integer"}},
                        "required": ["room"],
                    },
                },
            },
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}},
)
_TOOL_TURN_CHECKS: tuple[tuple[tuple[Message, ...], bool], ...] = (
    (
        (
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "<think>I need the weather.</think>",
                "tool_calls": _calls(("get_weather", {"unit": "celsius", "city": "Paris"})),
            },
            {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
            {"role": "assistant", "content": "21 degrees and clear."},
        ),
        True,
    ),
    (
        (
            {"role": "user", "content": "Book for two, then ping."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": _calls(
                    (
                        "book_table",
                        {
                            "when": 19.5,
                            "guests": [{"name": "Ann"}, {"name": "Bo"}],
                            "place": {"room": "main", "window": True, "note": None},
                        },
                    ),
                    ("ping", {}),
                ),
            },
            {"role": "tool", "content": "booked"},
            {"role": "tool", "content": "pong"},
            {"role": "assistant", "content": "Booked, and the ping answered."},
            {"role": "user", "content": "Thanks"},
        ),
        True,
    ),
    (
        (
            {"role": "user", "content": "Ping?"},
            {"role": "assistant", "content": "", "tool_calls": _calls(("ping", {}))},
            {"role": "tool", "content": "pong"},
        ),
        True,
    ),
    (
        (
            {"role": "user", "content": "Ping?"},
            {"role": "assistant", "content": "Calling.", "tool_calls": _calls(("ping", {}))},
        ),
        False,
    ),
)


class _TemplateFailed(UntranslatableTemplate):
    """The chat template itself raised on a conversation."""


def derive_layout(tokenizer: Any, where: str = WHERE) -> ChatLayout:
    """Read the layout off `tokenizer.chat_template` and check it.

    Raises UntranslatableTemplate (located at `where`) when the template is not such a layout.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UntranslatableTemplate.because("the tokenizer has no chat template", where)
    plain = _Renderer(tokenizer, where)
    layout, _ = _frames(plain, tokenizer, where)
    for messages, add_generation_prompt in _CHECKS:
        _check(tokenizer, layout, list(messages), add_generation_prompt, where)
    failure = _tool_turn_failure(plain)
    takes_tool_turns = failure is None
    if takes_tool_turns:
        layout = replace(layout, **_tool_turns(plain, layout, where))
    layout = replace(layout, tools=_tools_layout(tokenizer, layout, takes_tool_turns, where))
    if failure is not None and layout.tools is not None:
        # It writes tool definitions, so a model trained on it calls tools: the calls and
        # results Ollama sends back must be written too.
        raise failure
    checks = [*_CHECKS[:3], *(_TOOL_TURN_CHECKS if takes_tool_turns else ())]
    for tools in (None, list(_CHECK_TOOLS), list(_CHECK_TOOLS[:1])):
        for messages, add_generation_prompt in checks:
            _check(tokenizer, layout, list(messages), add_generation_prompt, where, tools)
    return layout


class _Renderer:
    """Renders conversations through the chat template, given `tools` (marker definitions)
    or none. With tools, the span of their definitions in the text is replaced by TOOLS and
    how they are written is kept (`definitions`, `whole`, `between`)."""

    def __init__(self, tokenizer: Any, where: str, tools: list[Tool] | None = None) -> None:
        self.tokenizer = tokenizer
        self.where = where
        self.tools = ollama_tools(tools) if tools else None
        self.definitions: JsonStyle | None = None
        self.whole = True
        self.between: str | None = None
        self.written: bool | None = None  # whether the definitions are written at all

    def text(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The chat template's text of `messages`, as is."""
        return _render(self.tokenizer, messages, add_generation_prompt, self.where, self.tools)

    def __call__(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        text = self.text(messages, add_generation_prompt)
        return text if self.tools is None else self._mark(text, messages)

    def _mark(self, text: str, messages: list[Message]) -> str:
        assert self.tools is not None
        names = [tool["function"]["name"] for tool in self.tools]
        if self.written is None:
            self._find_style(text)
        if not self.written:
            if any(name in text for name in names):
                self._refuse(f"it writes the tool definitions only sometimes ({text!r})")
            return text
        assert self.definitions is not None
        values = [tool if self.whole else tool["function"] for tool in self.tools]
        spans = []
        for value in values:
            written = self.definitions.dumps(value)
            if text.count(written) != 1:
                self._refuse(
                    f"for a conversation of {_roles(messages)} it writes a tool definition "
                    f"{text.count(written)} times, not once"
                )
            spans.append((text.index(written), text.index(written) + len(written)))
        (start, first_end), (second_start, end) = spans
        between = text[first_end:second_start]
        if second_start < first_end or (self.between is not None and between != self.between):
            self._refuse("it does not write the tool definitions one after another, in order")
        self.between = between
        marked = text[:start] + TOOLS + text[end:]
        for name in names:
            if name in marked:
                self._refuse(
                    f"it writes a tool's name outside the tool's JSON definition ({marked!r}, "
                    f"{TOOLS} standing for the definitions)"
                )
        return marked

    def _find_style(self, text: str) -> None:
        assert self.tools is not None
        for whole in (True, False):
            values = [tool if whole else tool["function"] for tool in self.tools]
            found = find_json(text, values[0])
            if found is not None and text.count(found[0].dumps(values[1])) == 1:
                self.definitions, self.whole, self.written = found[0], whole, True
                return
        if any(tool["function"]["name"] in text for tool in self.tools):
            self._refuse(
                "it writes tool definitions other than as JSON of each definition or of its "
                f"function, in the style of `tojson` ({text!r}); an Ollama TEMPLATE gets the "
                "definitions as data and writes them as JSON"
            )
        self.written = False

    def _refuse(self, message: str) -> NoReturn:
        raise UntranslatableTemplate.because(message, self.where)


def _frames(render: _Renderer, tokenizer: Any, where: str) -> tuple[ChatLayout, str]:
    """The per-message frames `render` shows, and the opening of a conversation without a
    system message (with tools: any text; without: nothing or a default system message)."""
    with_tools = render.tools is not None
    system = {"role": "system", "content": _SYSTEM}
    user_1 = {"role": "user", "content": _USER_1}
    assistant_1 = {"role": "assistant", "content": _ASSISTANT_1}
    user_2 = {"role": "user", "content": _USER_2}

    full = [system, user_1, assistant_1, user_2]
    closed = render(full, False)
    # before_system = bos + system prefix; system_user = system suffix + user prefix;
    # user_assistant = user suffix + assistant prefix; assistant_user = assistant suffix +
    # user prefix; after_user = user suffix.
    before_system, system_user, user_assistant, assistant_user, after_user = _split(
        closed, full, where
    )
    prompted = render(full, True)
    if not prompted.startswith(closed):
        raise UntranslatableTemplate.because(
            "the generation prompt changes the text of the messages before it", where
        )
    short = [user_1, assistant_1]
    before_user, _, assistant_suffix = _split(render(short, False), short, where)

    user_suffix = after_user
    generation_prompt = prompted[len(closed) :]
    if not user_assistant.startswith(user_suffix):
        _position_dependent(
            f"a user message is followed by {user_assistant!r} before an assistant message "
            f"but by {user_suffix!r} at the end",
            where,
            with_tools,
        )
    assistant_prefix = user_assistant[len(user_suffix) :]
    if not assistant_user.startswith(assistant_suffix):
        _position_dependent(
            f"an assistant message is followed by {assistant_user!r} before a user message "
            f"but by {assistant_suffix!r} at the end",
            where,
            with_tools,
        )
    user_prefix = assistant_user[len(assistant_suffix) :]
    if not system_user.endswith(user_prefix):
        _position_dependent(
            f"a user message after a system message is preceded by {system_user!r}, which "
            f"does not end with {user_prefix!r} that precedes a user message after an "
            "assistant message",
            where,
            with_tools,
        )
    system_suffix = system_user[: len(system_user) - len(user_prefix)]
    bos = tokenizer.bos_token or ""
    if not (bos and before_system.startswith(bos) and before_user.startswith(bos)):
        bos = ""
    system_prefix = before_system[len(bos) :]
    if not before_user.endswith(user_prefix):
        _position_dependent(
            f"a first user message is preceded by {before_user!r}, which does not end with "
            f"{user_prefix!r} that precedes a user message after an assistant message",
            where,
            with_tools,
        )
    opening = before_user[len(bos) : len(before_user) - len(user_prefix)]
    default_system = None
    if opening and not with_tools:
        if not (
            len(opening) >= len(system_prefix) + len(system_suffix)
            and opening.startswith(system_prefix)
            and opening.endswith(system_suffix)
        ):
            raise UntranslatableTemplate.because(
                f"it puts {opening!r} before a conversation without a system message, which is "
                "neither a system message nor empty",
                where,
            )
        default_system = opening[len(system_prefix) : len(opening) - len(system_suffix)]

    layout = ChatLayout(
        system=Frame(system_prefix, system_suffix),
        user=Frame(user_prefix, user_suffix),
        assistant=Frame(assistant_prefix, assistant_suffix),
        generation_prompt=generation_prompt,
        bos=bos,
        default_system=default_system,
    )
    return layout, opening


def _tool_turn_failure(render: _Renderer) -> _TemplateFailed | None:
    """How the chat template fails on a tool call and its result, if it does. One that fails
    and writes no tool definitions takes no tool turns: Ollama's are then written as nothing."""
    try:
        render(
            [
                {"role": "user", "content": _USER_1},
                _calling("", _CALL_1),
                {"role": "tool", "content": _RESULT_1},
            ]
        )
    except _TemplateFailed as failure:
        return failure
    return None


def _calling(content: str, *calls: dict[str, Any], call_id: str | None = None) -> Message:
    """An assistant message with `calls` ({"name", "arguments"}) in the form chat templates take."""
    message = {"role": "assistant", "content": content, "tool_calls": _calls(*map(_pair, calls))}
    if call_id is not None:
        message["tool_calls"][0]["id"] = call_id
    return message


def _pair(call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return call["name"], call["arguments"]


def _tool_turns(render: _Renderer, layout: ChatLayout, where: str) -> dict[str, Any]:
    """How `render` writes an assistant message with tool calls and a run of tool messages:
    the `calls` and `results` of a ChatLayout with `layout`'s frames."""
    user = {"role": "user", "content": _USER_1}
    answer = {"role": "assistant", "content": _ANSWER}
    _refuse_names_and_ids(render, where)
    quoted = _result_quoting(render, where)
    result_1, result_2 = (
        json.dumps(marker) if quoted else marker for marker in (_RESULT_1, _RESULT_2)
    )
    conversation = [
        user,
        _calling(_CALLING, _CALL_1, _CALL_2),
        {"role": "tool", "content": _RESULT_1},
        {"role": "tool", "content": _RESULT_2},
        answer,
    ]
    text = render(conversation)
    alone = render([user, _calling("", _CALL_1)])
    answered = render([user, _calling("", _CALL_1), {"role": "tool", "content": _RESULT_1}])
    after_user = _end(text, _USER_1)

    calls = _call_layout(render, layout, text, alone, where)
    if calls is not None:
        arguments_2 = calls.arguments.dumps(ollama_arguments(_CALL_2["arguments"]))
        turn_end = text.index(arguments_2) + len(arguments_2)
        if not text[turn_end:].startswith(calls.closing):
            raise UntranslatableTemplate.because(
                f"it ends an assistant message with tool calls with {text[turn_end:]!r} before "
                f"a tool message but with {calls.closing!r} at the end",
                where,
            )
        turn_end += len(calls.closing)
    else:
        # The calls are not written; the message is, in its plain frame.
        plain = layout.user.suffix + layout.assistant.prefix + _CALLING + layout.assistant.suffix
        if text[after_user:].startswith(plain):
            turn_end = after_user + len(plain)
        else:
            raise UntranslatableTemplate.because(
                "it writes neither the tool calls of an assistant message nor the message in "
                f"its frame: {text[after_user:]!r} follows a user message",
                where,
            )

    if quoted is None:
        if text[turn_end:] != layout.assistant.prefix + _ANSWER + layout.assistant.suffix:
            raise UntranslatableTemplate.because(
                f"it writes no tool message but {text[turn_end:]!r} after tool calls", where
            )
        return {"calls": calls, "results": None}
    start_1 = _find_once(text, result_1, "a tool message's content", conversation, where)
    start_2 = _find_once(text, result_2, "a tool message's content", conversation, where)
    answer_at = text.index(_ANSWER)
    if not turn_end <= start_1 < start_2 < answer_at:
        raise UntranslatableTemplate.because(
            "it does not write tool messages in order, after the calls they answer", where
        )
    opening = text[turn_end:start_1]
    between = text[start_1 + len(result_1) : start_2]
    closing = answered[answered.index(result_1) + len(result_1) :]
    after = text[start_2 + len(result_2) : answer_at]
    if after != closing + layout.assistant.prefix:
        raise UntranslatableTemplate.because(
            f"it ends a run of tool messages with {closing!r} at the end of a conversation but "
            f"writes {after!r} before an assistant message, whose prefix is "
            f"{layout.assistant.prefix!r}",
            where,
        )
    return {"calls": calls, "results": ToolResultLayout(opening, between, closing, quoted)}


def _call_layout(
    render: _Renderer, layout: ChatLayout, text: str, alone: str, where: str
) -> ToolCallLayout | None:
    """How `text` (a user message, an assistant message with content and two calls, ...)
    and `alone` (a user message and an assistant message with one call, no content) show an
    assistant message with tool calls written; None when the calls are not written."""
    name_1, name_2 = _CALL_1["name"], _CALL_2["name"]
    if name_1 not in text:
        if any(value in text for value in ("ftray-marker-value", name_2)):
            raise UntranslatableTemplate.because(
                "it writes part of a tool call but not the first call's name", where
            )
        return None
    arguments = ollama_arguments(_CALL_1["arguments"])
    found = find_json(text, arguments)
    if found is None:
        raise UntranslatableTemplate.because(
            "it writes a tool call's arguments other than as one JSON object in the style of "
            f"`tojson` ({text!r}); an Ollama TEMPLATE gets the arguments as a map and writes "
            "them as JSON",
            where,
        )
    style, arguments_1 = found
    written_1 = style.dumps(arguments)
    written_2 = style.dumps(ollama_arguments(_CALL_2["arguments"]))
    what = "a tool call's name"
    at_1 = _find_once(text, name_1, what, [], where)
    at_2 = _find_once(text, name_2, what, [], where)
    arguments_2 = _find_once(text, written_2, "a tool call's arguments", [], where)
    if not at_1 < arguments_1 < at_2 < arguments_2:
        raise UntranslatableTemplate.because(
            "it does not write each tool call as its name, then its arguments, in order", where
        )
    name_arguments = text[at_1 + len(name_1) : arguments_1]
    if text[at_2 + len(name_2) : arguments_2] != name_arguments:
        raise UntranslatableTemplate.because("it writes two tool calls differently", where)
    between_calls = text[arguments_1 + len(written_1) : at_2]

    alone_1 = _find_once(alone, name_1, what, [], where)
    alone_arguments = alone.find(written_1, alone_1)
    if alone_arguments < 0:
        raise UntranslatableTemplate.because(
            "it writes a tool call's arguments differently when the call is alone", where
        )
    closing = alone[alone_arguments + len(written_1) :]
    without = alone[_end(alone, _USER_1) : alone_1]  # user suffix, opening, first_call
    content_at = text.find(_CALLING)
    keeps_content = content_at >= 0
    if keeps_content:
        if content_at > at_1:
            raise UntranslatableTemplate.because(
                "it writes an assistant message's content after its tool calls", where
            )
        before = text[_end(text, _USER_1) : content_at]
        after = text[content_at + len(_CALLING) : at_1]
    elif text[_end(text, _USER_1) : at_1] != without:
        raise UntranslatableTemplate.because(
            "it drops the content of an assistant message with tool calls, but writes the "
            "message differently when it has content",
            where,
        )
    for piece in [without, *([before] if keeps_content else [])]:
        if not piece.startswith(layout.user.suffix):
            _position_dependent(
                f"a user message is followed by {piece!r} before an assistant message with tool "
                f"calls, not by its suffix {layout.user.suffix!r}",
                where,
                render.tools is not None,
            )
    without = without[len(layout.user.suffix) :]
    # The text before the first call's name splits into the message's opening and the call's
    # own; the call's own is what also precedes a second call (Ollama reads the tool-call tag
    # off the first text in the TEMPLATE's calls).
    shared = 0
    while shared < min(len(without), len(between_calls)) and (
        without[len(without) - shared - 1] == between_calls[len(between_calls) - shared - 1]
    ):
        shared += 1
    for size in range(shared, -1, -1):
        first_call = without[len(without) - size :] if size else ""
        opening = without[: len(without) - size]
        if not keeps_content:
            return ToolCallLayout(
                opening, first_call, between_calls, name_arguments, closing, style, False
            )
        lead = before[len(layout.user.suffix) :]
        if lead.startswith(opening) and after.endswith(first_call):
            return ToolCallLayout(
                opening,
                first_call,
                between_calls,
                name_arguments,
                closing,
                style,
                True,
                lead[len(opening) :],
                after[: len(after) - len(first_call)],
            )
    raise UntranslatableTemplate.because(
        "it writes an assistant message's tool calls differently with and without content", where
    )


def _result_quoting(render: _Renderer, where: str) -> bool | None:
    """Whether tool messages' content is written as is (False), as a JSON string (True), or
    not at all (None)."""
    text = render(
        [
            {"role": "user", "content": _USER_1},
            _calling("", _CALL_1),
            {"role": "tool", "content": _RESULT_ESCAPED},
        ]
    )
    if _RESULT_ESCAPED in text:
        return False
    if json.dumps(_RESULT_ESCAPED, ensure_ascii=False) in text:
        return True
    if _RESULT_STEM in text:
        raise UntranslatableTemplate.because(
            f"it rewrites a tool message's content (the content {_RESULT_ESCAPED!r} is written "
            "neither as is nor as a JSON string)",
            where,
        )
    return None


def _refuse_names_and_ids(render: _Renderer, where: str) -> None:
    """A chat template that writes a tool call's id or a tool message's name is refused: Ollama
    passes them as other fields (`tool_call_id`, `tool_name`) that ftray does not map."""
    text = render(
        [
            {"role": "user", "content": _USER_1},
            _calling("", _CALL_1, call_id=_CALL_ID),
            {
                "role": "tool",
                "content": _RESULT_1,
                "name": _RESULT_NAME,
                "tool_call_id": _CALL_ID,
            },
        ]
    )
    for marker, what in ((_CALL_ID, "a tool call's id"), (_RESULT_NAME, "a tool message's name")):
        if marker in text:
            raise UntranslatableTemplate.because(
                f"it writes {what}, which the TEMPLATE does not translate", where
            )


def _tools_layout(
    tokenizer: Any, plain: ChatLayout, takes_tool_turns: bool, where: str
) -> ToolsLayout | None:
    """How the chat template writes a conversation given tools; None when tools change
    nothing it writes."""
    render = _Renderer(tokenizer, where, list(_MARKER_TOOLS))
    probes = [
        [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER_1}],
        [{"role": "user", "content": _USER_1}, {"role": "assistant", "content": _ASSISTANT_1}],
    ]
    without = _Renderer(tokenizer, where)
    if all(render.text(p, True) == without.text(p, True) for p in probes):
        return None
    layout, opening = _frames(render, tokenizer, where)
    if layout.bos != plain.bos:
        raise UntranslatableTemplate.because(
            f"it starts with {layout.bos!r} given tools but with {plain.bos!r} without", where
        )
    if takes_tool_turns:
        layout = replace(layout, **_tool_turns(render, layout, where))
    return ToolsLayout(
        layout,
        opening,
        render.definitions or JsonStyle(),
        render.whole,
        render.between or "",
    )


def _roles(messages: list[Message], tools: list[Tool] | None = None) -> str:
    roles = []
    for message in messages:
        calls = len(message.get("tool_calls") or [])
        roles.append(message["role"] + (f" with {calls} tool call(s)" if calls else ""))
    given = f" given {len(tools)} tool(s)" if tools else ""
    return ", ".join(roles) + given


def _render(
    tokenizer: Any,
    messages: list[Message],
    add_generation_prompt: bool,
    where: str,
    tools: list[Tool] | None = None,
) -> str:
    kwargs: dict[str, Any] = {"tools": tools} if tools else {}
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    except Exception as err:  # a template's raise_exception, or any error it runs into
        raise _TemplateFailed.because(
            f"it fails on a conversation of {_roles(messages, tools)} "
            f"({type(err).__name__}: {err}); Ollama sends every message, system ones "
            "included, through the TEMPLATE",
            where,
        ) from err
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def _split(text: str, messages: list[Message], where: str) -> list[str]:
    """The text before each message's content, then the text after the last one."""
    pieces: list[str] = []
    position = 0
    for index, message in enumerate(messages):
        content = message["content"]
        count = text.count(content)
        if count != 1:
            what = "drops or rewrites" if count == 0 else f"repeats ({count} times)"
            raise UntranslatableTemplate.because(
                f"it {what} the content of the {message['role']} message "
                f"(message {index + 1} of a conversation of {_roles(messages)})",
                where,
            )
        start = text.index(content)
        if start < position:
            raise UntranslatableTemplate.because(
                f"it does not render the messages of a conversation of {_roles(messages)} in order",
                where,
            )
        pieces.append(text[position:start])
        position = start + len(content)
    pieces.append(text[position:])
    return pieces


def _end(text: str, marker: str) -> int:
    return text.index(marker) + len(marker)


def _find_once(text: str, needle: str, what: str, messages: list[Message], where: str) -> int:
    count = text.count(needle)
    if count != 1:
        conversation = f" in a conversation of {_roles(messages)}" if messages else ""
        raise UntranslatableTemplate.because(
            f"it writes {what} {count} times, not once{conversation}", where
        )
    return text.index(needle)


def _position_dependent(detail: str, where: str, with_tools: bool = False) -> NoReturn:
    given = ""
    if with_tools:
        given = "given tools, "
        if TOOLS in detail:
            detail += (
                f" ({TOOLS} stands for the tool definitions: it writes them into a message "
                "whose position decides it, such as the first user message)"
            )
    raise UntranslatableTemplate.because(
        f"{given}it frames a message by its position, not only by its role: {detail}", where
    )


def _check(
    tokenizer: Any,
    layout: ChatLayout,
    messages: list[Message],
    add_generation_prompt: bool,
    where: str,
    tools: list[Tool] | None = None,
) -> None:
    seen = ollama_messages(messages)
    expected = _render(tokenizer, seen, add_generation_prompt, where, ollama_tools(tools))
    actual = layout.render(messages, add_generation_prompt, tools)
    if expected == actual:
        return
    for message in seen:
        if message["role"] == "tool" or message.get("tool_calls"):
            continue
        if message["content"] not in expected:
            raise UntranslatableTemplate.because(
                f"it does not keep message content verbatim: the {message['role']} message "
                f"{message['content']!r} is changed (stripped or rewritten)",
                where,
            )
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    lo = max(0, at - 30)
    raise UntranslatableTemplate.because(
        f"it is not a plain per-message layout: for a conversation of {_roles(messages, tools)} "
        f"(add_generation_prompt={add_generation_prompt}) it renders "
        f"{expected[lo : at + 30]!r} where the per-message layout gives "
        f"{actual[lo : at + 30]!r} (the framing depends on message position or content)",
        where,
    )
