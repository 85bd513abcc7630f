"""JSON in an Ollama TEMPLATE: what Ollama hands the template, and Go template text that writes
it the way the chat template's `tojson` (Python's `json.dumps`) does.

Ollama's API keeps of a tool definition only the fields of its own types (`type`,
`function.name`, `.description`, `.parameters` with `type`, `$defs`, `items`, `required`,
`properties`, and per property `anyOf`, `type`, `items`, `description`, `enum`, `properties`,
`required`); other JSON Schema keywords (`additionalProperties`, `minimum`, ...) never reach
the template. It hands the template plain Go maps, which `range` in sorted key order, and
numbers as float64. `ollama_tools`, `ollama_arguments` and `ollama_messages` give that view as
the Python a chat template takes, in the key order `GoJson` writes it.

Ollama's `json` template function writes compact, HTML-escaped JSON, which no chat template
writes; `GoJson` writes JSON with the chat template's separators and indent instead, strings
through Go's `%q` (the same text as `json.dumps(..., ensure_ascii=False)` except for control
characters other than tab, newline and carriage return, and for invisible Unicode characters
such as a no-break space, which Go escapes). An indented style is written by one template per
nesting depth, up to `MAX_DEPTH`; deeper data stops the render with an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 10
"""The deepest nesting an indented JSON style is written to (a tool definition's properties
sit at depth 4)."""


@dataclass(frozen=True)
class JsonStyle:
    """How a chat template writes a value as JSON: `json.dumps` arguments, and the depth the
    value sits at inside indented JSON (its lines after the first are indented that deep)."""

    indent: int | None = None
    item_separator: str = ", "
    key_separator: str = ": "
    depth: int = 0

    def dumps(self, value: Any) -> str:
        """`value` as the chat template writes it."""
        text = json.dumps(
            value,
            ensure_ascii=False,
            indent=self.indent,
            separators=(self.item_separator, self.key_separator),
        )
        if self.indent and self.depth:
            text = text.replace("\n", "\n" + " " * (self.indent * self.depth))
        return text


def json_styles() -> list[JsonStyle]:
    """The styles looked for: `tojson` with its defaults, compact, and indented by 1 to 8."""
    styles = [JsonStyle(None, ", ", ": "), JsonStyle(None, ",", ":"), JsonStyle(None, ",", ": ")]
    for indent in (2, 4, 1, 3, 8):
        for item, key in ((",", ": "), (", ", ": "), (",", ":")):
            styles += [JsonStyle(indent, item, key, depth) for depth in range(4)]
    return styles


def find_json(text: str, value: Any) -> tuple[JsonStyle, int] | None:
    """The style `value` is written in, once, in `text`, and where; None if it is not."""
    for style in json_styles():
        written = style.dumps(value)
        if text.count(written) == 1:
            return style, text.index(written)
    return None


# --- what Ollama hands a template ---------------------------------------------------------


def ollama_value(value: Any) -> Any:
    """A JSON value as Ollama hands it to a template: objects as maps (keys sorted), numbers as
    float64 (written without a fraction when whole)."""
    if isinstance(value, dict):
        return {key: ollama_value(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [ollama_value(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def ollama_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as an Ollama TEMPLATE sees them (keys sorted)."""
    if isinstance(arguments, str):  # OpenAI's wire form; Ollama's API takes an object
        arguments = json.loads(arguments)
    return ollama_value(arguments or {})


def _property(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        return {}
    out: dict[str, Any] = {}
    if spec.get("anyOf"):
        out["anyOf"] = [_property(item) for item in spec["anyOf"]]
    kind = spec.get("type")
    if isinstance(kind, str) or kind:
        # Ollama reads one type as a list of one and writes it back as a string.
        out["type"] = kind[0] if isinstance(kind, list) and len(kind) == 1 else kind
    for key in ("items", "description", "enum"):
        if spec.get(key):
            out[key] = ollama_value(spec[key])
    if isinstance(spec.get("properties"), dict):
        out["properties"] = {k: _property(v) for k, v in sorted(spec["properties"].items())}
    if spec.get("required"):
        out["required"] = list(spec["required"])
    return out


def ollama_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """One tool definition as an Ollama TEMPLATE sees it, in the key order `GoJson` writes."""
    function = tool.get("function") or {}
    parameters = function.get("parameters") or {}
    written: dict[str, Any] = {"type": parameters.get("type") or ""}
    for key in ("$defs", "items"):
        if parameters.get(key):
            written[key] = ollama_value(parameters[key])
    properties = parameters.get("properties") or {}
    written["properties"] = {k: _property(v) for k, v in sorted(properties.items())}
    if parameters.get("required"):
        written["required"] = list(parameters["required"])
    out: dict[str, Any] = {"type": tool.get("type") or ""}
    if tool.get("items"):
        out["items"] = ollama_value(tool["items"])
    out["function"] = {
        "name": function.get("name") or "",
        "description": function.get("description") or "",
        "parameters": written,
    }
    return out


def ollama_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Tool definitions as an Ollama TEMPLATE sees them (see the module docstring)."""
    return [ollama_tool(tool) for tool in tools or []]


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as an Ollama TEMPLATE sees them: consecutive messages of one role other than
    `tool` merged into the first (contents joined by a blank line, as Ollama does), tool call
    arguments as `ollama_arguments` gives them, no tool names or call ids."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
            continue
        seen: dict[str, Any] = {"role": role, "content": content}
        calls = [call.get("function", call) for call in message.get("tool_calls") or []]
        if calls:
            seen["tool_calls"] = [
                {
                    "type": "function",
                    "function": {
                        "name": call.get("name", ""),
                        "arguments": ollama_arguments(call.get("arguments")),
                    },
                }
                for call in calls
            ]
        out.append(seen)
    return out


# --- Go template text -----------------------------------------------------------------------


def go_text(text: str) -> str:
    """`text` as literal Go template text: every `{{` (and a trailing `{`) quoted."""
    escaped = text.replace("{{", '{{"{{"}}')
    if escaped.endswith("{"):
        escaped = escaped[:-1] + '{{"{"}}'
    return escaped


_VALUE, _OBJECT, _LIST = "value", "object", "list"
_PROPERTY, _PROPERTIES, _ANY_OF = "property", "properties", "anyof"
_FUNCTION, _PARAMETERS, _TOOL = "function", "parameters", "tool"


class GoJson:
    """Go template `define`s that write Ollama's tool definitions and call arguments as JSON
    in one `JsonStyle` (its depth ignored: each entry point is asked for at a depth)."""

    def __init__(self, style: JsonStyle, prefix: str) -> None:
        self.style = style
        self.prefix = prefix
        self.wanted: set[tuple[str, int]] = set()

    @property
    def indented(self) -> bool:
        return self.style.indent is not None

    def name(self, kind: str, depth: int) -> str:
        """The template writing `kind` at `depth`; past MAX_DEPTH one that does not exist."""
        if not self.indented:
            return f"{self.prefix}-{kind}"
        if depth > MAX_DEPTH:
            return f"{self.prefix}: JSON nested deeper than {MAX_DEPTH} levels"
        return f"{self.prefix}-{kind}-{depth}"

    def call(self, kind: str, depth: int, argument: str) -> str:
        """An action writing `argument` (a Go pipeline) as `kind` at `depth`."""
        if not self.indented:
            depth = 0
        self.wanted.add((kind, depth))
        return f'{{{{ template "{self.name(kind, depth)}" {argument} }}}}'

    def tool(self, argument: str, depth: int, whole: bool = True) -> str:
        """An action writing an Ollama tool (or, not `whole`, its function) as JSON."""
        return self.call(_TOOL if whole else _FUNCTION, depth, argument)

    def arguments(self, argument: str, depth: int) -> str:
        """An action writing a tool call's arguments (a map) as JSON."""
        return self.call(_OBJECT, depth, argument)

    def defines(self) -> str:
        """Every template the actions asked for, and the ones those call: text that writes
        nothing where it is put (one define a line, each line's newline trimmed by `{{-`)."""
        done: set[tuple[str, int]] = set()
        out = []
        while self.wanted - done:
            kind, depth = min(self.wanted - done)
            done.add((kind, depth))
            if self.indented and depth > MAX_DEPTH:
                continue
            body = getattr(self, f"_{kind}")(depth)
            trim = "-" if out else ""
            out.append(f'{{{{{trim} define "{self.name(kind, depth)}" }}}}{body}{{{{ end }}}}')
        return "\n".join(out)

    # Pieces of text, each already Go template text.

    def _open(self, bracket: str, depth: int) -> str:
        return go_text(bracket + self._newline(depth + 1))

    def _close(self, bracket: str, depth: int) -> str:
        return go_text(self._newline(depth) + bracket)

    def _separator(self, depth: int) -> str:
        return go_text(self.style.item_separator + self._newline(depth + 1))

    def _newline(self, depth: int) -> str:
        if not self.indented:
            return ""
        return "\n" + " " * ((self.style.indent or 0) * depth)

    def _key(self, key: str) -> str:
        return go_text(json.dumps(key) + self.style.key_separator)

    def _field(self, key: str, value: str, depth: int, first: bool = False) -> str:
        return ("" if first else self._separator(depth)) + self._key(key) + value

    def _optional(self, condition: str, key: str, value: str, depth: int) -> str:
        """A field written only when `condition` holds, after others when `$f` is false."""
        return (
            f"{{{{ if {condition} }}}}{{{{ if $f }}}}{{{{ $f = false }}}}{{{{ else }}}}"
            f"{self._separator(depth)}{{{{ end }}}}{self._key(key)}{value}{{{{ end }}}}"
        )

    def _mapping(self, value_kind: str, depth: int) -> str:
        """A Go map (sorted keys) with each value written as `value_kind`."""
        return (
            f"{{{{ if . }}}}{self._open('{', depth)}{{{{ $f := true }}}}"
            f"{{{{ range $k, $v := . }}}}{{{{ if $f }}}}{{{{ $f = false }}}}{{{{ else }}}}"
            f'{self._separator(depth)}{{{{ end }}}}{{{{ printf "%q" $k }}}}'
            f"{go_text(self.style.key_separator)}{self.call(value_kind, depth + 1, '$v')}"
            f"{{{{ end }}}}{self._close('}', depth)}{{{{ else }}}}{{}}{{{{ end }}}}"
        )

    def _sequence(self, value_kind: str, depth: int) -> str:
        """A Go slice with each item written as `value_kind`."""
        return (
            f"{{{{ if . }}}}{self._open('[', depth)}{{{{ range $i, $v := . }}}}"
            f"{{{{ if $i }}}}{self._separator(depth)}{{{{ end }}}}"
            f"{self.call(value_kind, depth + 1, '$v')}{{{{ end }}}}{self._close(']', depth)}"
            "{{ else }}[]{{ end }}"
        )

    def _value(self, depth: int) -> str:
        return (
            '{{ $t := printf "%T" . }}{{ if eq $t "string" }}{{ printf "%q" . }}'
            f'{{{{ else if eq $t "map[string]interface {{}}" }}}}{self.call(_OBJECT, depth, ".")}'
            f'{{{{ else if eq $t "[]interface {{}}" }}}}{self.call(_LIST, depth, ".")}'
            "{{ else }}{{ json . }}{{ end }}"
        )

    def _object(self, depth: int) -> str:
        return self._mapping(_VALUE, depth)

    def _list(self, depth: int) -> str:
        return self._sequence(_VALUE, depth)

    def _properties(self, depth: int) -> str:
        return self._mapping(_PROPERTY, depth)

    def _anyof(self, depth: int) -> str:
        return self._sequence(_PROPERTY, depth)

    def _property(self, depth: int) -> str:
        """One of Ollama's ToolProperty: its non-empty fields in Ollama's order."""
        inner = depth + 1
        kind = (
            '{{ if eq (len .Type) 1 }}{{ printf "%q" (index .Type 0) }}{{ else }}'
            + self.call(_LIST, inner, ".Type")
            + "{{ end }}"
        )
        fields = [
            (".AnyOf", "anyOf", self.call(_ANY_OF, inner, ".AnyOf")),
            (".Type", "type", kind),
            (".Items", "items", self.call(_VALUE, inner, ".Items")),
            (".Description", "description", '{{ printf "%q" .Description }}'),
            (".Enum", "enum", self.call(_LIST, inner, ".Enum")),
            (".Properties", "properties", self.call(_PROPERTIES, inner, ".Properties.ToMap")),
            (".Required", "required", self.call(_LIST, inner, ".Required")),
        ]
        conditions = " ".join(condition for condition, _, _ in fields)
        return (
            f"{{{{ if or {conditions} }}}}{self._open('{', depth)}{{{{ $f := true }}}}"
            + "".join(self._optional(c, key, value, depth) for c, key, value in fields)
            + f"{self._close('}', depth)}{{{{ else }}}}{{}}{{{{ end }}}}"
        )

    def _parameters(self, depth: int) -> str:
        inner = depth + 1
        return (
            self._open("{", depth)
            + self._field("type", '{{ printf "%q" .Type }}', depth, first=True)
            + "{{ if .Defs }}"
            + self._field("$defs", self.call(_VALUE, inner, ".Defs"), depth)
            + "{{ end }}{{ if .Items }}"
            + self._field("items", self.call(_VALUE, inner, ".Items"), depth)
            + "{{ end }}"
            + self._field("properties", self.call(_PROPERTIES, inner, ".Properties"), depth)
            + "{{ if .Required }}"
            + self._field("required", self.call(_LIST, inner, ".Required"), depth)
            + "{{ end }}"
            + self._close("}", depth)
        )

    def _function(self, depth: int) -> str:
        return (
            self._open("{", depth)
            + self._field("name", '{{ printf "%q" .Name }}', depth, first=True)
            + self._field("description", '{{ printf "%q" .Description }}', depth)
            + self._field("parameters", self.call(_PARAMETERS, depth + 1, ".Parameters"), depth)
            + self._close("}", depth)
        )

    def _tool(self, depth: int) -> str:
        return (
            self._open("{", depth)
            + self._field("type", '{{ printf "%q" .Type }}', depth, first=True)
            + "{{ if .Items }}"
            + self._field("items", self.call(_VALUE, depth + 1, ".Items"), depth)
            + "{{ end }}"
            + self._field("function", self.call(_FUNCTION, depth + 1, ".Function"), depth)
            + self._close("}", depth)
        )
