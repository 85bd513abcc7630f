"""The chat task: multi-turn conversations with tool calls and `<think>` reasoning, trained
on assistant turns only and scored by what the model calls and answers.

Data is JSONL of ``{"messages": [...], "tools"?: [...]}`` (OpenAI's form), ShareGPT's
``{"conversations": [...]}`` or one-turn rows (`chat_forms`); `task.tools` names the tools
every conversation may call. Conversations are split by conversation (never by turn) into train,
validation (scores trials) and test (scores only the registered version).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema.validators import validator_for
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ftray.config.fields import Float, Int, resolve_path
from ftray.config.files import path_problem, read_text
from ftray.config.search import LOSS_METRICS
from ftray.config.spec import Spec
from ftray.config.task import TaskConfig
from ftray.errors import InputError, Problem
from ftray.log import get_logger
from ftray.tasks.base import EvalCase, Row, Task, render_chat
from ftray.tasks.chat_forms import FormProblem, as_messages_row, parse_arguments
from ftray.tasks.data_files import read_rows
from ftray.tasks.intervals import interval_metrics, with_intervals
from ftray.tasks.jsonl import require_data, sha256_of
from ftray.tasks.schemas import check_json_schema, schema_violation

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "tool_calls", "name", "tool_call_id"}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)
SCORES = (
    "tool_call_valid",
    "tool_name_accuracy",
    "arguments_exact",
    "answer_exact",
    "think_format",
)
SPLITS = ("train", "validation", "test")
CALL, ANSWER = "call", "answer"
log = get_logger()


class ChatConfig(TaskConfig):
    """`task:` of a chat fine-tune: conversations with tool calls and reasoning."""

    kind: Literal["chat"]
    data: str
    tools: str | None = None
    """A JSON file: a list of OpenAI/Hugging Face tool definitions, or {name: arguments schema}."""
    eval_fraction: Float = Field(default=0.15, gt=0.0, lt=1.0)
    test_fraction: Float = Field(default=0.1, ge=0.0, lt=1.0)
    max_new_tokens: Int | None = Field(default=None, ge=1)
    """Generation budget per evaluated turn; default: from the longest assistant turn."""

    _resolve_data = field_validator("data")(resolve_path)

    @field_validator("tools")
    @classmethod
    def _resolve_tools(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else resolve_path(value, info)

    @model_validator(mode="after")
    def _room_to_train(self) -> ChatConfig:
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise PydanticCustomError(
                "no_training_share",
                "eval_fraction ({eval}) + test_fraction ({test}) leave nothing to train on; "
                "keep their sum below 1",
                {"eval": self.eval_fraction, "test": self.test_fraction},
            )
        return self


# --- tools -----------------------------------------------------------------------------


def tool_definition(name: str, parameters: dict[str, Any], description: str = "") -> dict:
    """A tool in the OpenAI / Hugging Face form that chat templates take as `tools=`."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def normalise_tools(value: Any) -> list[dict[str, Any]]:
    """Tools in either accepted form as OpenAI-form definitions; ValueError says what is wrong.

    Accepted: a list of ``{"type": "function", "function": {"name", "description",
    "parameters"}}`` (a bare ``{"name", "parameters"}`` item too), or an object mapping each
    tool name to the JSON Schema of its arguments.
    """
    if isinstance(value, dict):
        items = [tool_definition(name, schema) for name, schema in value.items()]
    elif isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            spec = item.get("function", item) if isinstance(item, dict) else None
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ValueError(
                    f"tool {index + 1} is not a tool definition; write "
                    '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
                )
            items.append(
                tool_definition(
                    spec["name"],
                    spec.get("parameters", {"type": "object", "properties": {}}),
                    spec.get("description", "") or "",
                )
            )
    else:
        raise ValueError(
            f"tools must be a list of tool definitions or an object of name -> schema, "
            f"got {type(value).__name__}"
        )
    seen: set[str] = set()
    for tool in items:
        name, schema = tool["function"]["name"], tool["function"]["parameters"]
        if not name:
            raise ValueError("a tool has an empty name")
        if name in seen:
            raise ValueError(f"tool '{name}' is defined twice")
        seen.add(name)
        if not isinstance(schema, dict):
            raise ValueError(f"tool '{name}': its arguments schema must be an object")
        try:
            check_json_schema(schema)
        except ValueError as exc:
            raise ValueError(f"tool '{name}': {exc}") from None
    return items


def load_tools_file(path: Path) -> list[dict[str, Any]]:
    """The tools of `task.tools`; InputError at the file for anything wrong."""
    try:
        document = json.loads(read_text(path, "tools file"))
    except json.JSONDecodeError as exc:
        raise InputError.at(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    try:
        return normalise_tools(document)
    except ValueError as exc:
        raise InputError.at(path, None, str(exc)) from None


def schema_validators(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """tool name -> a validator of its arguments."""
    validators = {}
    for tool in tools:
        schema = tool["function"]["parameters"]
        validators[tool["function"]["name"]] = validator_for(schema)(schema)
    return validators


# --- responses and metrics -------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One call read off a response; `name`/`arguments` are None when the call did not parse."""

    name: str | None
    arguments: dict[str, Any] | None

    @property
    def parsed(self) -> bool:
        """Whether the call was a JSON object with a name and object arguments."""
        return self.name is not None and self.arguments is not None


@dataclass(frozen=True)
class ParsedResponse:
    """A response split into reasoning, calls and answer text."""

    has_think: bool
    think_well_formed: bool
    calls: tuple[ToolCall, ...]
    answer: str
    """The text after any `<think>` block, calls taken out, whitespace runs as one space."""
    content: str
    """The same text as written (line breaks kept), stripped."""

    @property
    def attempted_call(self) -> bool:
        """Whether the response tries to call a tool (parsed or not)."""
        return bool(self.calls)


def _call_from_json(text: str) -> ToolCall:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return ToolCall(None, None)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ToolCall(None, None)
    arguments = value.get("arguments", value.get("parameters"))
    if isinstance(arguments, str):  # OpenAI's wire form: arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, ValueError):
            return ToolCall(value["name"], None)
    return ToolCall(value["name"], arguments if isinstance(arguments, dict) else None)


def split_think(text: str) -> tuple[bool, bool, str]:
    """(has a think block, it is well formed, the text after it).

    Well formed: the response opens with `<think>`, has exactly one `<think>` and one
    `</think>`, and something (answer or call) follows the block.
    """
    stripped = text.strip()
    opens, closes = stripped.count(THINK_OPEN), stripped.count(THINK_CLOSE)
    if not opens and not closes:
        return False, False, stripped
    rest = stripped[stripped.rindex(THINK_CLOSE) + len(THINK_CLOSE) :] if closes else ""
    return True, opens_with_one_think_block(stripped) and bool(rest.strip()), rest.strip()


def opens_with_one_think_block(text: str) -> bool:
    """Whether `text` opens with `<think>` and holds exactly one `<think>...</think>` block."""
    stripped = text.strip()
    return (
        stripped.startswith(THINK_OPEN)
        and stripped.count(THINK_OPEN) == 1
        and stripped.count(THINK_CLOSE) == 1
        and stripped.index(THINK_CLOSE) > stripped.index(THINK_OPEN)
    )


def parse_response(text: str) -> ParsedResponse:
    """Read reasoning, tool calls and answer off a generated assistant turn.

    Calls are Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    blocks (text around them is the turn's content, as chat servers read it; an unclosed
    block is a call that does not parse); a response that is nothing but such a JSON object
    (Llama 3.1 style, `parameters` for `arguments` too) is a call as well.
    """
    has_think, well_formed, rest = split_think(text)
    calls: list[ToolCall] = []
    if CALL_OPEN in rest:
        for match in _CALL_BLOCK.finditer(rest):
            closed = bool(match[2])
            call = _call_from_json(match[1].strip()) if closed else ToolCall(None, None)
            calls.append(call)
        answer = _CALL_BLOCK.sub("", rest)
    else:
        answer = rest
        if rest.startswith("{"):
            call = _call_from_json(rest)
            if call.name is not None:
                calls, answer = [call], ""
    return ParsedResponse(
        has_think, well_formed, tuple(calls), " ".join(answer.split()), answer.strip()
    )


def reasoning_of(text: str) -> str | None:
    """The text of a response's `<think>` block (everything up to its last `</think>`, or after
    an unclosed `<think>`, tags removed); None when it has none."""
    stripped = text.strip()
    if THINK_CLOSE in stripped:
        head = stripped[: stripped.rindex(THINK_CLOSE)]
    elif THINK_OPEN in stripped:
        head = stripped
    else:
        return None
    return head.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()


def assistant_message(text: str) -> dict[str, Any]:
    """A generated turn as OpenAI's assistant message: ``{"content", "tool_calls": [{"type":
    "function", "function": {"name", "arguments"}}], "reasoning"}``, read by
    `parse_response`.

    `arguments` is a JSON string, as OpenAI's API writes it; `reasoning` is the `<think>`
    block's text (None without one). When a call does not parse, the turn is not read as
    calls at all (as chat servers do): `tool_calls` is empty and `content` keeps the text
    after the `<think>` block as generated, so no half-read call is ever executed.
    """
    parsed = parse_response(text)
    if not all(call.parsed for call in parsed.calls):
        return {"content": split_think(text)[2], "tool_calls": [], "reasoning": reasoning_of(text)}
    calls = [
        {
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": json.dumps(call.arguments, ensure_ascii=False),
            },
        }
        for call in parsed.calls
    ]
    return {"content": parsed.content, "tool_calls": calls, "reasoning": reasoning_of(text)}


def reference_calls(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of every call in a reference assistant turn (template form)."""
    return [
        (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []
    ]


def _canonical(call: tuple[str | None, Any]) -> str:
    return json.dumps(call, sort_keys=True, ensure_ascii=False)


def score_turn(
    expected: dict[str, Any], response: str, validators: dict[str, Any]
) -> dict[str, float]:
    """The metrics that apply to one evaluated turn (absent keys do not apply).

    - tool_call_valid: where the reference calls a tool or the response tries to: every call
      parses, names a known tool, and its arguments validate against that tool's schema.
    - tool_name_accuracy: where the conversation offers tools (or either side calls one):
      the called tool names equal the reference's (none for none).
    - arguments_exact: where the reference calls: the same calls with equal arguments.
    - answer_exact: where the reference answers: no call, and the text after any `<think>`
      block equals the reference's (whitespace runs count as one space).
    - think_format: where the reference reasons: one well-formed `<think>` block first.
    """
    parsed = parse_response(response)
    wanted = reference_calls(expected)
    got = [(c.name, c.arguments) for c in parsed.calls]
    scores: dict[str, float] = {}
    if wanted or parsed.attempted_call:
        scores["tool_call_valid"] = float(
            bool(parsed.calls)
            and all(
                c.parsed and c.name in validators and validators[c.name].is_valid(c.arguments)
                for c in parsed.calls
            )
        )
    if wanted or parsed.attempted_call or validators:
        scores["tool_name_accuracy"] = float(
            sorted(str(n) for n, _ in got) == sorted(n for n, _ in wanted)
        )
    if wanted:
        scores["arguments_exact"] = float(
            sorted(map(_canonical, got)) == sorted(map(_canonical, wanted))
        )
    has_think, _, reference_answer = split_think(expected.get("content") or "")
    if not wanted:
        scores["answer_exact"] = float(
            not parsed.attempted_call and parsed.answer == " ".join(reference_answer.split())
        )
    if has_think:
        scores["think_format"] = float(parsed.think_well_formed)
    return scores


APPLIES = {
    "tool_call_valid": "no held-out turn calls a tool",
    "arguments_exact": "no held-out turn calls a tool",
    "tool_name_accuracy": "no held-out conversation offers a tool",
    "answer_exact": "every held-out turn is a tool call",
    "think_format": "no held-out turn opens with <think>",
}
"""Why a score is not reported on a data set, when no held-out turn is one it applies to."""


def applicable_scores(cases: list[EvalCase]) -> list[str]:
    """The scores of SCORES some held-out turn applies to (as `score_turn` decides, from the
    reference alone)."""
    found: set[str] = set()
    for case in cases:
        calls = bool(reference_calls(case.expected))
        if calls:
            found |= {"tool_call_valid", "arguments_exact", "tool_name_accuracy"}
        else:
            found.add("answer_exact")
        if case.extra.get("tools"):
            found.add("tool_name_accuracy")
        if split_think(case.expected.get("content") or "")[0]:
            found.add("think_format")
    return [name for name in SCORES if name in found]


def chat_metrics(per_turn: list[dict[str, float]]) -> dict[str, float]:
    """Means over the turns each metric applies to, and chat_score = mean of the applicable
    ones. With no turns every metric is reported as 0; otherwise a metric no turn applies to
    is left out."""
    if not per_turn:
        return {**dict.fromkeys(SCORES, 0.0), "chat_score": 0.0}
    metrics = {}
    for key in SCORES:
        values = [t[key] for t in per_turn if key in t]
        if values:
            metrics[key] = sum(values) / len(values)
    metrics["chat_score"] = sum(metrics.values()) / len(metrics)
    return metrics


def chat_intervals(per_turn: list[dict[str, float]]) -> dict[str, float]:
    """95% intervals: Wilson for each 0/1 score over the turns it applies to; chat_score's
    are the means of their bounds."""

    def composite(means: dict[str, float]) -> dict[str, float]:
        present = [means[k] for k in SCORES if k in means]
        return {"chat_score": sum(present) / len(present)} if present else {}

    return interval_metrics(per_turn, composite)


# --- conversations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """One validated conversation in the form chat templates take."""

    line: int
    key: str
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]
    split: str | None = None
    """The split the data put it in (a `datasets` folder's), or None."""

    def row(self) -> Row:
        """The conversation as a training row."""
        return {"messages": list(self.messages), "tools": list(self.tools)}


def conversation_key(row: Any) -> str:
    """A content hash naming a conversation in the stored split (equal rows share it)."""
    encoded = json.dumps(row, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


class _RowProblem(Exception):
    pass


def _template_call(call: Any, where: str, validators: dict[str, Any]) -> dict[str, Any]:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or set(call) - {"name", "arguments", "id", "type"}:
        raise _RowProblem(f'{where}: each tool call is {{"name": ..., "arguments": {{...}}}}')
    name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(name, str) or not name:
        raise _RowProblem(f'{where}: a tool call needs a "name" string')
    try:
        arguments = parse_arguments(arguments)
    except FormProblem as exc:
        raise _RowProblem(f"{where}: the arguments of '{name}': {exc}") from None
    if not isinstance(arguments, dict):
        got = "missing" if arguments is None else type(arguments).__name__
        raise _RowProblem(
            f"{where}: the arguments of '{name}' must be a JSON object (or a JSON string of "
            f"one), got {got}"
        )
    if name not in validators:
        known = ", ".join(sorted(validators)) or "none"
        raise _RowProblem(
            f"{where}: calls tool '{name}', which is not among the tools (known: {known}); "
            "add it to task.tools or fix the call"
        )
    violation = schema_violation(validators[name], arguments)
    if violation is not None:
        raise _RowProblem(f"{where}: arguments of '{name}' fail its schema {violation}")
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _check_think(content: str, where: str) -> None:
    if (THINK_OPEN in content or THINK_CLOSE in content) and not opens_with_one_think_block(
        content
    ):
        raise _RowProblem(
            f"{where}: a <think> block must open the turn and be closed once: <think>...</think> answer"
        )


def parse_conversation(
    row: Any, default_tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages, tools) of one data row in template form; _RowProblem says what is wrong."""
    if not isinstance(row, dict):
        raise _RowProblem(f"each line must be a JSON object, got {type(row).__name__}")
    extra = sorted(row.keys() - {"messages", "tools"})
    if extra or "messages" not in row:
        what = f"unexpected {', '.join(map(repr, extra))}" if extra else "missing 'messages'"
        raise _RowProblem(f'{what}: each row is {{"messages": [...]}} (optionally "tools")')
    tools = default_tools or []
    if "tools" in row:
        try:
            tools = normalise_tools(row["tools"])
        except ValueError as exc:
            raise _RowProblem(f"tools: {exc}") from None
    validators = schema_validators(tools)
    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        raise _RowProblem('\'messages\' must be a non-empty list of {"role", "content"} objects')
    messages: list[dict[str, Any]] = []
    open_calls = 0
    for index, message in enumerate(raw, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise _RowProblem(f'{where}: must be an object with "role" and "content"')
        role = message.get("role")
        if role not in ROLES:
            raise _RowProblem(f"{where}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        where = f"message {index} ({role})"
        unknown = sorted(message.keys() - MESSAGE_KEYS)
        if unknown:
            raise _RowProblem(f"{where}: unexpected {', '.join(map(repr, unknown))}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise _RowProblem(f"{where}: content must be a string")
        out: dict[str, Any] = {"role": role, "content": content or ""}
        if role == "system" and index != 1:
            raise _RowProblem(f"{where}: a system message may only come first")
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _RowProblem(f"{where}: tool_calls must be a list of calls")
            if not messages or messages[-1]["role"] == "system":
                raise _RowProblem(
                    f"{where}: the conversation needs a user turn before the first assistant turn"
                )
            if not calls and not (content or "").strip():
                raise _RowProblem(f"{where}: an assistant turn needs content or tool_calls")
            _check_think(content or "", where)
            if calls:
                out["tool_calls"] = [
                    _template_call(call, f"{where}, call {n}", validators)
                    for n, call in enumerate(calls, start=1)
                ]
            open_calls = len(calls)
        else:
            if "tool_calls" in message:
                raise _RowProblem(f"{where}: only assistant turns carry tool_calls")
            if content is None:
                raise _RowProblem(f'{where}: needs "content"')
            if role == "tool":
                if open_calls <= 0:
                    raise _RowProblem(
                        f"{where}: a tool result with no assistant tool call before it "
                        "(one tool turn answers one call)"
                    )
                open_calls -= 1
            else:
                open_calls = 0
        for key in ("name", "tool_call_id"):
            if key in message:
                out[key] = message[key]
        messages.append(out)
    if not any(m["role"] == "assistant" for m in messages):
        raise _RowProblem("the conversation has no assistant turn, so nothing to learn from")
    return messages, tools


# --- rendering and tokenising ----------------------------------------------------------


class TemplateMismatch(ValueError):
    """The chat template renders a conversation's prefix differently from the whole."""


def _turn_end(tokenizer: Any, turn: str, start: int) -> int:
    """Where an assistant turn's trained text ends: just after its end-of-turn token (what
    follows, e.g. a newline, is context the model never has to produce)."""
    eos = tokenizer.eos_token
    if eos and eos in turn[start:]:
        return turn.rindex(eos) + len(eos)
    return len(turn)


def render_segments(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any]
) -> list[list[tuple[str, bool]]]:
    """The conversation as text segments marked trained (assistant turns) or not.

    Normally one sequence: the whole conversation with every assistant turn trained. Where
    the template renders earlier turns differently once later ones exist (Qwen3 drops past
    reasoning), one sequence per assistant turn, each training its last turn only.
    """
    full = render_chat(tokenizer, messages, tools)
    spans: list[tuple[str, int, int]] = []  # (rendered prefix, start, end) per assistant turn
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:index], tools, add_generation_prompt=True)
        turn = render_chat(tokenizer, messages[: index + 1], tools)
        if not turn.startswith(prompt):
            raise TemplateMismatch(
                "the chat template renders an assistant turn without the generation prompt "
                "it uses for inference; its assistant turns cannot be located"
            )
        spans.append((turn, len(prompt), _turn_end(tokenizer, turn, len(prompt))))
    if all(full.startswith(turn[:end]) for turn, _, end in spans):
        segments, position = [], 0
        for _, start, end in spans:
            segments += [(full[position:start], False), (full[start:end], True)]
            position = end
        segments.append((full[position:], False))
        return [[(text, trained) for text, trained in segments if text]]
    return [[(turn[:start], False), (turn[start:end], True)] for turn, start, end in spans]


def encode_segments(tokenizer: Any, segments: list[tuple[str, bool]]) -> dict[str, list[int]]:
    """input_ids and assistant_masks of one sequence. Each segment is tokenised on its own
    with no special tokens added: the template writes BOS where the model wants one, so it
    appears exactly once, and a trained turn starts at the same token as inference does."""
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(trained)] * len(piece)
    return {"input_ids": ids, "assistant_masks": mask}


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any]
) -> list[dict[str, list[int]]]:
    """Training sequences of one conversation, loss on assistant tokens only."""
    return [encode_segments(tokenizer, s) for s in render_segments(tokenizer, messages, tools)]


# --- the task --------------------------------------------------------------------------


def split_conversations(
    keys: list[str], config: ChatConfig, seed: int, given: list[str | None] | None = None
) -> dict[str, list[str]]:
    """Conversation keys per split: shuffled by `seed`, then validation, test, train shares.
    Equal conversations share a key, so they land in the same split (the first one's).

    `given` (per key: the split the data put it in, or None) keeps the data's validation and
    test splits; a split the data does not give is taken from the rest by its fraction."""
    fixed: dict[str, str] = {}
    for key, split in zip(keys, given or [None] * len(keys), strict=True):
        if split is not None and split != "train":
            fixed.setdefault(key, split)
    unique = [k for k in dict.fromkeys(keys) if k not in fixed]
    random.Random(seed).shuffle(unique)
    out = {name: [k for k, s in fixed.items() if s == name] for name in ("validation", "test")}
    n_val = 0 if out["validation"] else max(1, round(config.eval_fraction * len(unique)))
    n_test = 0 if out["test"] else round(config.test_fraction * len(unique))
    if config.test_fraction > 0 and not out["test"]:
        n_test = max(1, n_test)
    out["validation"] += unique[:n_val]
    out["test"] += unique[n_val : n_val + n_test]
    out["train"] = unique[n_val + n_test :]
    return out


class ChatTask(Task):
    """Conversations with tool calls and reasoning."""

    config_class = ChatConfig
    keep_tokens = (CALL_OPEN, CALL_CLOSE, THINK_OPEN, THINK_CLOSE)

    def __init__(
        self,
        config: ChatConfig,
        conversations: list[Conversation],
        seed: int,
        dataset_sha256: str,
        source: str = "",
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.dataset_sha256 = dataset_sha256
        self.conversations = conversations
        self.source = source
        self.tools = list(tools or [])
        self.seed = seed
        keys, given = [c.key for c in conversations], [c.split for c in conversations]
        self.assign(split_conversations(keys, config, seed, given))
        longest = max(
            len(m["content"]) + len(json.dumps(m.get("tool_calls", []), ensure_ascii=False))
            for c in conversations
            for m in c.messages
            if m["role"] == "assistant"
        )
        self.max_new_tokens = config.max_new_tokens or min(512, longest // 2 + 16)

    def assign(self, split: dict[str, list[str]]) -> None:
        """Use `split` (conversation keys per split)."""
        self.split = {name: list(split.get(name, [])) for name in SPLITS}
        where = {key: name for name in SPLITS for key in self.split[name]}
        self.parts: dict[str, list[Conversation]] = {name: [] for name in SPLITS}
        for conversation in self.conversations:
            self.parts[where[conversation.key]].append(conversation)
        random.Random(self.seed).shuffle(self.parts["train"])

    def split_record(self) -> dict[str, Any]:
        """The split as stored beside a sweep: conversation keys (content hashes) per split."""
        return {"kind": "chat", "seed": self.seed, "data_sha256": self.dataset_sha256, **self.split}

    def reuse_split(self, record: dict[str, Any]) -> None:
        """Take the split a sweep stored; InputError when the data no longer matches it."""
        stored = {key for name in SPLITS for key in record.get(name, [])}
        present = {c.key for c in self.conversations}
        if stored != present:
            new, gone = len(present - stored), len(stored - present)
            raise InputError.at(
                self.source,
                None,
                f"the data changed since this sweep split it ({new} conversation(s) new, "
                f"{gone} gone); restore the data or start a new sweep without --resume",
            )
        self.assign({name: record.get(name, []) for name in SPLITS})

    @classmethod
    def from_spec(cls, spec: Spec) -> ChatTask:
        """Read `task.tools` and `task.data`, checking every conversation."""
        assert isinstance(spec.task, ChatConfig)
        config = spec.task
        default_tools = None
        if config.tools is not None:
            tools_path = Path(config.tools)
            reason = path_problem(tools_path)
            if reason == "not found":
                reason = "not found; fix the path (relative paths are relative to the spec file)"
            if reason is not None:
                raise InputError(
                    [spec.source.problem(("task", "tools"), f"task.tools {tools_path} {reason}")]
                )
            default_tools = load_tools_file(tools_path)
        path = require_data(spec, folder_ok=True)
        data = read_rows(path)
        conversations: list[Conversation] = []
        problems: list[Problem] = []
        ignored: Counter[str] = Counter()
        for (number, row), split, where in zip(data.rows, data.splits, data.where, strict=True):
            try:
                converted, unused = as_messages_row(row)
                messages, tools = parse_conversation(converted, default_tools)
            except (_RowProblem, FormProblem) as exc:
                problems.append(Problem(where, number, str(exc)))
                continue
            ignored.update(unused)
            key = conversation_key(converted)
            conversations.append(Conversation(number, key, tuple(messages), tuple(tools), split))
        if problems:
            raise InputError(problems)
        if ignored:
            fields = ", ".join(f"'{k}' ({n} row{'s' * (n > 1)})" for k, n in ignored.items())
            log.info(f"{path}: the chat task does not use the field(s) {fields}; ignored")
        minimum = 3 if config.test_fraction > 0 else 2
        if len({c.key for c in conversations}) < minimum:
            raise InputError.at(
                path,
                None,
                f"{len(conversations)} distinct conversation(s); a chat task needs at least "
                f"{minimum} (train, validation{', test' if minimum == 3 else ''})",
            )
        files = data.files + ([Path(config.tools)] if config.tools else [])
        return cls(
            config, conversations, spec.train.seed, sha256_of(files), str(path), default_tools
        )

    def serving_config(self) -> dict[str, Any]:
        """The tools of `task.tools`, rendered into every served conversation that brings
        none of its own, as training and evaluation render them."""
        return {"tools": self.tools}

    @classmethod
    def serving_answer(cls, response: str) -> dict[str, Any]:
        """The turn as OpenAI's assistant message (see `assistant_message`)."""
        return assistant_message(response)

    def corpus(self) -> list[str]:
        """Every message, tool definition and call (as a Hermes/Qwen `<tool_call>` block)."""
        texts: list[str] = []
        for conversation in self.conversations:
            texts += [json.dumps(t, ensure_ascii=False) for t in conversation.tools]
            for message in conversation.messages:
                texts.append(message["content"])
                for call in message.get("tool_calls", []):
                    function = call["function"]
                    body = json.dumps(
                        {"name": function["name"], "arguments": function["arguments"]},
                        ensure_ascii=False,
                    )
                    texts.append(f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
        return [t for t in texts if t]

    def train_rows(self) -> list[Row]:
        """Training conversations, shuffled."""
        return [c.row() for c in self.parts["train"]]

    def sourced_rows(self) -> list[tuple[str, int, Row]]:
        """The training and validation conversations with their lines (test ones are only
        generated from, never tokenised for training)."""
        return [
            (self.source, c.line, c.row()) for c in self.parts["train"] + self.parts["validation"]
        ]

    def eval_rows(self) -> list[Row]:
        """Validation conversations (for eval_loss)."""
        return [c.row() for c in self.parts["validation"]]

    def trainer_rows(self, rows: list[Row], tokenizer: Any) -> list[dict[str, Any]]:
        """Token ids with an assistant mask: loss on assistant turns only."""
        out: list[dict[str, Any]] = []
        for row in rows:
            out += encode_conversation(tokenizer, row["messages"], row["tools"])
        return out

    @staticmethod
    def _cases(conversations: list[Conversation]) -> list[EvalCase]:
        cases = []
        for conversation in conversations:
            messages = list(conversation.messages)
            for index, message in enumerate(messages):
                if message["role"] != "assistant" or messages[index - 1]["role"] not in (
                    "user",
                    "tool",
                ):
                    continue
                cases.append(
                    EvalCase(
                        messages=messages[:index],
                        condition=CALL if message.get("tool_calls") else ANSWER,
                        expected=message,
                        extra={"tools": list(conversation.tools)} if conversation.tools else {},
                    )
                )
        return cases

    def eval_cases(self) -> list[EvalCase]:
        """Every assistant turn of the validation conversations that answers a user or a tool."""
        return self._cases(self.parts["validation"])

    def metric_names(self) -> list[str]:
        """The metrics trials report on this data: a score no held-out turn applies to (tool
        metrics on data without tool calls) is absent, not 1.0, and left out of chat_score."""
        applicable = applicable_scores(self.eval_cases())
        return with_intervals([*LOSS_METRICS, *applicable, "chat_score"])

    def unreported_reason(self, metric: str) -> str | None:
        if metric not in APPLIES or metric in self.metric_names():
            return None
        return f"{APPLIES[metric]} in this data's validation split"

    def test_cases(self) -> list[EvalCase]:
        """The same turns of the test conversations (scored only for the registered version)."""
        return self._cases(self.parts["test"])

    def score(
        self, cases: list[EvalCase], responses: list[str]
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Tool-call, answer and reasoning metrics; one sample per turn."""
        validators_by_tools: dict[str, dict[str, Any]] = {}
        per_turn: list[dict[str, float]] = []
        samples = []
        for case, response in zip(cases, responses, strict=True):
            tools = case.extra.get("tools", [])
            key = json.dumps(tools, sort_keys=True)
            if key not in validators_by_tools:
                validators_by_tools[key] = schema_validators(tools)
            scores = score_turn(case.expected, response, validators_by_tools[key])
            per_turn.append(scores)
            expected = case.expected.get("content") or ""
            calls = reference_calls(case.expected)
            if calls:
                expected = (expected + "\n" if expected else "") + "\n".join(
                    json.dumps({"name": n, "arguments": a}, ensure_ascii=False) for n, a in calls
                )
            samples.append(
                {
                    "prompt": case.messages[-1]["content"],
                    "condition": case.condition,
                    "response": response,
                    "expected": expected,
                    **{k: bool(v) for k, v in scores.items()},
                    "correct": all(v == 1.0 for v in scores.values()),
                }
            )
        return chat_metrics(per_turn) | chat_intervals(per_turn), samples
