"""An Ollama Modelfile whose TEMPLATE renders what the tokenizer's chat template renders,
tool definitions, tool calls and tool results included.

The chat template's layout is read off it and checked (`layout_derivation`), then written as
Go text/template over Ollama's `.Messages` and `.Tools` (JSON in the chat template's style by
`ollama_json`). A template that cannot be written so is refused (`UntranslatableTemplate`,
exit 2), naming what it does.

Only the tokenizer's `apply_chat_template`, `chat_template`, `eos_token` and `bos_token` are
used, so this module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftray.export.chat_layout import (
    TOOLS,
    WHERE,
    ChatLayout,
    Frame,
    ToolCallLayout,
    ToolResultLayout,
    ToolsLayout,
    UntranslatableTemplate,
)
from ftray.export.layout_derivation import derive_layout
from ftray.export.ollama_json import GoJson, JsonStyle, go_text

__all__ = [
    "ChatLayout",
    "Frame",
    "ToolCallLayout",
    "ToolResultLayout",
    "ToolsLayout",
    "UntranslatableTemplate",
    "derive_layout",
    "go_template",
    "modelfile",
    "stop_strings",
]


class _GoWriter:
    """Go template text for a layout: literal text (TOOLS written as a range over `.Tools`)
    and the `define`s the JSON in it needs."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.json: dict[tuple[int | None, str, str], GoJson] = {}

    def go_json(self, style: JsonStyle) -> GoJson:
        key = (style.indent, style.item_separator, style.key_separator)
        if key not in self.json:
            self.json[key] = GoJson(style, f"ftray-json-{len(self.json) + 1}")
        return self.json[key]

    def text(self, text: str, tools: ToolsLayout | None = None) -> str:
        """`text` as Go template text; TOOLS as the definitions of `.Tools`."""
        pieces = text.split(TOOLS)
        for piece in pieces:
            _check_modelfile_text(piece, self.where)
        if len(pieces) == 1:
            return go_text(text)
        assert tools is not None
        style = tools.definitions
        definition = self.go_json(style).tool(
            "$t" if tools.whole else "$t.Function", style.depth, tools.whole
        )
        definitions = (
            "{{ range $k, $t := $.Tools }}{{ if $k }}"
            + go_text(tools.between)
            + "{{ end }}"
            + definition
            + "{{ end }}"
        )
        return definitions.join(go_text(piece) for piece in pieces)


def go_template(layout: ChatLayout, include_bos: bool = False, where: str = WHERE) -> str:
    """The Ollama TEMPLATE body (Go text/template over `.Messages` and `.Tools`) for `layout`.

    The BOS is left out unless `include_bos`: Ollama's tokenizer adds it from the GGUF's
    metadata, as the chat template's rendering would otherwise start with two.
    """
    for text in [layout.bos, layout.default_system or ""]:
        _check_modelfile_text(text, where)
    writer = _GoWriter(where)
    body = _go_conversation(layout, layout, writer)
    if layout.tools is not None:
        body = (
            "{{ if .Tools }}"
            + _go_conversation(layout.tools.layout, layout, writer, layout.tools)
            + "{{ else }}"
            + body
            + "{{ end }}"
        )
    defines = "".join(go.defines() for go in writer.json.values())
    template = (go_text(layout.bos) if include_bos else "") + body + defines
    _check_modelfile_text(template, where)
    return template


def _go_conversation(
    layout: ChatLayout,
    plain: ChatLayout,
    writer: _GoWriter,
    tools: ToolsLayout | None = None,
) -> str:
    """The TEMPLATE's part for `layout` (given tools when `tools`; `plain` without)."""

    def text(piece: str) -> str:
        return writer.text(piece, tools)

    def framed(frame: Frame) -> str:
        return text(frame.prefix) + "{{ .Content }}" + text(frame.suffix)

    results = layout.results
    grouped = results is not None and results.grouped
    pieces = []
    if tools is not None:
        if tools.opening:
            pieces.append(
                '{{ if not (and .Messages (eq (index .Messages 0).Role "system")) }}'
                + text(tools.opening)
                + "{{ end }}"
            )
    elif layout.default_system is not None:
        block = layout.system.prefix + layout.default_system + layout.system.suffix
        pieces.append("{{ if not .System }}" + go_text(block) + "{{ end }}")
    if grouped:
        pieces.append('{{ $prev := "" }}')
    if tools is not None or layout.calls is not None:
        pieces.append("{{ range $i, $m := .Messages }}")
    else:
        pieces.append("{{ range .Messages }}")
    if grouped:
        assert results is not None
        pieces.append(
            '{{ if and (eq $prev "tool") (ne .Role "tool") }}'
            + go_text(results.closing)
            + "{{ end }}"
        )
    system = framed(layout.system)
    if tools is not None:
        system = "{{ if $i }}" + framed(plain.system) + "{{ else }}" + system + "{{ end }}"
    pieces.append('{{ if eq .Role "system" }}' + system)
    pieces.append('{{ else if eq .Role "user" }}' + framed(layout.user))
    assistant = framed(layout.assistant)
    if layout.calls is not None:
        calls = _go_calls(layout.calls, writer, text)
        assistant = "{{ if $m.ToolCalls }}" + calls + "{{ else }}" + assistant + "{{ end }}"
    pieces.append('{{ else if eq .Role "assistant" }}' + assistant)
    if results is not None:
        for piece in (results.opening, results.between, results.closing):
            _check_modelfile_text(piece, writer.where)
        content = '{{ printf "%q" .Content }}' if results.quoted else "{{ .Content }}"
        if grouped:
            tool = (
                '{{ if eq $prev "tool" }}'
                + go_text(results.between)
                + "{{ else }}"
                + go_text(results.opening)
                + "{{ end }}"
                + content
            )
        else:
            tool = go_text(results.opening) + content + go_text(results.closing)
        pieces.append('{{ else if eq .Role "tool" }}' + tool)
    pieces.append("{{ end }}")
    if grouped:
        assert results is not None
        pieces.append("{{ $prev = .Role }}{{ end }}")
        pieces.append('{{ if eq $prev "tool" }}' + go_text(results.closing) + "{{ end }}")
    else:
        pieces.append("{{ end }}")
    pieces.append(text(layout.generation_prompt))
    return "".join(pieces)


def _go_calls(calls: ToolCallLayout, writer: _GoWriter, text: Callable[[str], str]) -> str:
    """An assistant message with tool calls. The calls sit in `{{ if .ToolCalls }}`, first
    `first_call`: Ollama takes the tool-call tag it parses replies for from that text."""
    content = ""
    if calls.keeps_content:
        content = (
            "{{ if .Content }}"
            + text(calls.content_lead)
            + "{{ .Content }}"
            + text(calls.content_trail)
            + "{{ end }}"
        )
    style = calls.arguments
    arguments = writer.go_json(style).arguments("$c.Function.Arguments", style.depth)
    return (
        text(calls.opening)
        + content
        + "{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}{{ if not $j }}"
        + text(calls.first_call)
        + "{{ else }}"
        + text(calls.between_calls)
        + "{{ end }}{{ $c.Function.Name }}"
        + text(calls.name_arguments)
        + arguments
        + "{{ end }}{{ end }}"
        + text(calls.closing)
    )


def stop_strings(layout: ChatLayout, tokenizer: Any) -> list[str]:
    """Where generation stops: the assistant's end-of-turn text (after an answer and after
    tool calls, with tools and without) and the EOS token."""
    layouts = [layout] + ([layout.tools.layout] if layout.tools is not None else [])
    candidates = [layout.assistant.suffix.strip()]
    for each in layouts:
        if each.calls is not None:
            candidates.append(_turn_end(each.calls))
    candidates.append(getattr(tokenizer, "eos_token", None) or "")
    return list(dict.fromkeys(stop for stop in candidates if stop))


def _turn_end(calls: ToolCallLayout) -> str:
    """The end of an assistant message with tool calls: what its closing adds to the end of
    a call (the part a call shares with what comes between two)."""
    shared = 0
    while shared < min(len(calls.closing), len(calls.between_calls)) and (
        calls.closing[shared] == calls.between_calls[shared]
    ):
        shared += 1
    return calls.closing[shared:].strip()


def modelfile(tokenizer: Any, gguf_name: str, where: str = WHERE) -> str:
    """A Modelfile for `./gguf_name`: the chat template as TEMPLATE, stops, greedy decoding."""
    if not gguf_name or "/" in gguf_name or "\\" in gguf_name or not gguf_name.isprintable():
        raise ValueError(f"gguf_name must be a plain file name, got {gguf_name!r}")
    layout = derive_layout(tokenizer, where)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(layout, where=where)}"""']
    for stop in stop_strings(layout, tokenizer):
        if '"' in stop or not stop.isprintable():
            raise UntranslatableTemplate.because(
                f"the stop string {stop!r} cannot be written as a Modelfile parameter", where
            )
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def _check_modelfile_text(text: str, where: str) -> None:
    if '"""' in text:
        raise UntranslatableTemplate.because(
            f'its text {text!r} contains """, which would end the Modelfile\'s '
            'TEMPLATE """...""" block',
            where,
        )
    odd = sorted({c for c in text if not c.isprintable() and c not in "\t\n\r"})
    if odd:
        raise UntranslatableTemplate.because(
            f"its text {text!r} contains characters a Modelfile drops: "
            + ", ".join(repr(c) for c in odd),
            where,
        )
