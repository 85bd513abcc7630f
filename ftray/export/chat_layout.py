"""A chat template's layout, as far as an Ollama TEMPLATE can write it: the text around each
role's messages, how an assistant message with tool calls and a run of tool messages are
written, and, given tools, where their definitions go; and the text that gives a conversation
in Ollama (`ChatLayout.render`), which `layout_derivation` checks against the chat template and
`ollama` writes as Go template text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftray.errors import InputError
from ftray.export.ollama_json import JsonStyle, ollama_messages, ollama_tools

Message = dict[str, Any]
Tool = dict[str, Any]

WHERE = "chat template"
ROLES = ("system", "user", "assistant")
TOOLS = "⟪tools⟫"
"""Stands, in the text of a layout derived with tools, for where the definitions go."""


class UntranslatableTemplate(InputError):
    """The chat template cannot be written as an Ollama TEMPLATE that renders the same text."""

    @classmethod
    def because(cls, message: str, where: str = WHERE) -> UntranslatableTemplate:
        """The error for the chat template (or the model URI given as `where`)."""
        return cls.at(where, None, f"cannot be written as an Ollama TEMPLATE: {message}")


@dataclass(frozen=True)
class Frame:
    """The text around one role's message content."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class ToolCallLayout:
    """How an assistant message with tool calls is written: `opening`; its content, if it has
    some and `keeps_content`, between `content_lead` and `content_trail`; each call as
    `first_call` (or `between_calls` after another), the function's name, `name_arguments`
    and the arguments as JSON; then `closing`."""

    opening: str
    first_call: str
    between_calls: str
    name_arguments: str
    closing: str
    arguments: JsonStyle = JsonStyle()
    keeps_content: bool = True
    content_lead: str = ""
    content_trail: str = ""

    def write(self, message: Message, text: Callable[[str], str] = str) -> str:
        """The text of `message` (as `ollama_messages` gives it), the layout's own text
        passed through `text`."""
        parts = [text(self.opening)]
        if self.keeps_content and message["content"]:
            parts += [text(self.content_lead), message["content"], text(self.content_trail)]
        for index, call in enumerate(message["tool_calls"]):
            function = call["function"]
            parts += [
                text(self.between_calls if index else self.first_call),
                function["name"],
                text(self.name_arguments),
                self.arguments.dumps(function["arguments"]),
            ]
        parts.append(text(self.closing))
        return "".join(parts)


@dataclass(frozen=True)
class ToolResultLayout:
    """How tool messages are written: a run of them as `opening`, each content (as a JSON
    string when `quoted`) with `between` between two, then `closing`."""

    opening: str
    between: str
    closing: str
    quoted: bool = False

    @property
    def grouped(self) -> bool:
        """Whether a run of tool messages is framed as a whole, not message by message."""
        return self.between != self.closing + self.opening

    def content(self, text: str) -> str:
        """A tool message's content as written."""
        return json.dumps(text, ensure_ascii=False) if self.quoted else text


@dataclass(frozen=True)
class ChatLayout:
    """A per-message chat layout: `bos`, an optional default system message, then each
    message framed by its role's prefix and suffix (an assistant message with tool calls as
    `calls` writes it, tool messages as `results` writes them, or not at all when None), then
    the generation prompt; given tools, `tools` says how, when the chat template writes them."""

    system: Frame
    user: Frame
    assistant: Frame
    generation_prompt: str
    bos: str = ""
    default_system: str | None = None
    calls: ToolCallLayout | None = None
    results: ToolResultLayout | None = None
    tools: ToolsLayout | None = None

    def frame(self, role: str) -> Frame:
        """The frame of `role` (system, user or assistant)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        frame: Frame = getattr(self, role)
        return frame

    def render(
        self,
        messages: list[Message],
        add_generation_prompt: bool,
        tools: list[Tool] | None = None,
    ) -> str:
        """The text of `messages` (and `tools`), as the Go TEMPLATE (with its BOS) renders
        them in Ollama."""
        seen = ollama_messages(messages)
        if tools and self.tools is not None:
            return write_conversation(
                self.tools.layout,
                seen,
                add_generation_prompt,
                plain=self,
                definitions=self.tools.definitions_text(tools),
                opening=self.tools.opening,
            )
        return write_conversation(self, seen, add_generation_prompt, plain=self)


@dataclass(frozen=True)
class ToolsLayout:
    """How the chat template writes a conversation given tools: `layout`'s frames, in whose
    text TOOLS stands for the definitions (each as JSON in `definitions`, the whole definition
    or only its function, `between` between two). `opening` comes first when the first message
    is not a system message; a system message after the first keeps its frame without tools."""

    layout: ChatLayout
    opening: str
    definitions: JsonStyle = JsonStyle()
    whole: bool = True
    between: str = ""

    def definitions_text(self, tools: list[Tool]) -> str:
        """What TOOLS stands for, given `tools`."""
        return self.between.join(
            self.definitions.dumps(tool if self.whole else tool["function"])
            for tool in ollama_tools(tools)
        )


def write_conversation(
    layout: ChatLayout,
    messages: list[Message],
    add_generation_prompt: bool,
    plain: ChatLayout,
    definitions: str | None = None,
    opening: str | None = None,
) -> str:
    """What the TEMPLATE's part for `layout` writes for `messages` (as `ollama_messages`
    gives them), `definitions` standing in for TOOLS (`plain`: the layout without tools)."""

    def text(piece: str) -> str:
        return piece if definitions is None else piece.replace(TOOLS, definitions)

    parts = [layout.bos]
    if opening is not None:
        if not (messages and messages[0]["role"] == "system"):
            parts.append(text(opening))
    elif layout.default_system is not None and not ollama_system(messages):
        parts += [layout.system.prefix, layout.default_system, layout.system.suffix]
    results = layout.results
    previous = ""
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if results is not None and results.grouped and previous == "tool" and role != "tool":
            parts.append(results.closing)
        if role == "system":
            frame = plain.system if opening is not None and index else layout.system
            parts += [text(frame.prefix), content, text(frame.suffix)]
        elif role == "assistant" and layout.calls is not None and message.get("tool_calls"):
            parts.append(layout.calls.write(message, text))
        elif role in ROLES:
            frame = layout.frame(role)
            parts += [text(frame.prefix), content, text(frame.suffix)]
        elif role == "tool" and results is not None:
            if not results.grouped:
                parts += [results.opening, results.content(content), results.closing]
            else:
                parts += [results.between if previous == "tool" else results.opening]
                parts.append(results.content(content))
        previous = role
    if results is not None and results.grouped and previous == "tool":
        parts.append(results.closing)
    if add_generation_prompt:
        parts.append(text(layout.generation_prompt))
    return "".join(parts)


def ollama_system(messages: list[Message]) -> str:
    """What Ollama passes as `.System`: every system message's content, joined."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "system")
