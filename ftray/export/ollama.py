"""An Ollama Modelfile whose TEMPLATE renders what the tokenizer's chat template renders.

The layout is read off the chat template itself: it is rendered with marker contents, each
role's prefix and suffix, the generation prompt, a leading BOS and any default system prompt
are taken from the text around the markers, and the result is checked by rendering several
other conversations both ways. A template that is not a plain per-message layout (it rewrites
content, frames a message by its position, refuses a system message) is refused.

Only the tokenizer's `apply_chat_template`, `chat_template`, `eos_token` and `bos_token` are
used, so this module imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from ftray.errors import InputError

Message = dict[str, str]

WHERE = "chat template"
ROLES = ("system", "user", "assistant")

# Marker contents: plain lower-case ASCII, so a template that rewrites content shows up as a
# missing marker, and none is a prefix of another.
_SYSTEM = "ftray-marker-system-7c1e"
_USER_1 = "ftray-marker-user-one-7c1e"
_ASSISTANT_1 = "ftray-marker-assistant-one-7c1e"
_USER_2 = "ftray-marker-user-two-7c1e"

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
class ChatLayout:
    """A per-message chat layout: `bos`, an optional default system message, then each
    message framed by its role's prefix and suffix, then the generation prompt."""

    system: Frame
    user: Frame
    assistant: Frame
    generation_prompt: str
    bos: str = ""
    default_system: str | None = None

    def frame(self, role: str) -> Frame:
        """The frame of `role` (system, user or assistant)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        frame: Frame = getattr(self, role)
        return frame

    def render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        """The text of `messages`, as the Go TEMPLATE (with its BOS) renders it in Ollama."""
        parts = [self.bos]
        if self.default_system is not None and not _ollama_system(messages):
            parts += [self.system.prefix, self.default_system, self.system.suffix]
        for message in messages:
            frame = self.frame(message["role"])
            parts += [frame.prefix, message["content"], frame.suffix]
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


def derive_layout(tokenizer: Any, where: str = WHERE) -> ChatLayout:
    """Read the per-message layout off `tokenizer.chat_template` and check it.

    Raises UntranslatableTemplate (located at `where`) when the template is not such a layout.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UntranslatableTemplate.because("the tokenizer has no chat template", where)
    system = {"role": "system", "content": _SYSTEM}
    user_1 = {"role": "user", "content": _USER_1}
    assistant_1 = {"role": "assistant", "content": _ASSISTANT_1}
    user_2 = {"role": "user", "content": _USER_2}

    full = [system, user_1, assistant_1, user_2]
    closed = _render(tokenizer, full, False, where)
    # before_system = bos + system prefix; system_user = system suffix + user prefix;
    # user_assistant = user suffix + assistant prefix; assistant_user = assistant suffix +
    # user prefix; after_user = user suffix.
    before_system, system_user, user_assistant, assistant_user, after_user = _split(
        closed, full, where
    )
    prompted = _render(tokenizer, full, True, where)
    if not prompted.startswith(closed):
        raise UntranslatableTemplate.because(
            "the generation prompt changes the text of the messages before it", where
        )
    short = [user_1, assistant_1]
    before_user, _, assistant_suffix = _split(_render(tokenizer, short, False, where), short, where)

    user_suffix = after_user
    generation_prompt = prompted[len(closed) :]
    if not user_assistant.startswith(user_suffix):
        _position_dependent(
            f"a user message is followed by {user_assistant!r} before an assistant message "
            f"but by {user_suffix!r} at the end",
            where,
        )
    assistant_prefix = user_assistant[len(user_suffix) :]
    if not assistant_user.startswith(assistant_suffix):
        _position_dependent(
            f"an assistant message is followed by {assistant_user!r} before a user message "
            f"but by {assistant_suffix!r} at the end",
            where,
        )
    user_prefix = assistant_user[len(assistant_suffix) :]
    if not system_user.endswith(user_prefix):
        _position_dependent(
            f"a user message after a system message is preceded by {system_user!r}, which "
            f"does not end with {user_prefix!r} that precedes a user message after an "
            "assistant message",
            where,
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
        )
    opening = before_user[len(bos) : len(before_user) - len(user_prefix)]
    default_system = None
    if opening:
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
    for messages, add_generation_prompt in _CHECKS:
        _check(tokenizer, layout, list(messages), add_generation_prompt, where)
    return layout


def go_template(layout: ChatLayout, include_bos: bool = False, where: str = WHERE) -> str:
    """The Ollama TEMPLATE body (Go text/template over `.Messages`) for `layout`.

    The BOS is left out unless `include_bos`: Ollama's tokenizer adds it from the GGUF's
    metadata, as the chat template's rendering would otherwise start with two.
    """
    pieces = [_go_text(layout.bos) if include_bos else ""]
    for text in [layout.bos, layout.default_system or "", layout.generation_prompt]:
        _check_modelfile_text(text, where)
    for role in ROLES:
        for text in (layout.frame(role).prefix, layout.frame(role).suffix):
            _check_modelfile_text(text, where)
    if layout.default_system is not None:
        block = layout.system.prefix + layout.default_system + layout.system.suffix
        pieces.append("{{ if not .System }}" + _go_text(block) + "{{ end }}")
    pieces.append("{{ range .Messages }}")
    for index, role in enumerate(ROLES):
        frame = layout.frame(role)
        keyword = "if" if index == 0 else "else if"
        pieces.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}'
            + _go_text(frame.prefix)
            + "{{ .Content }}"
            + _go_text(frame.suffix)
        )
    pieces.append("{{ end }}{{ end }}")
    pieces.append(_go_text(layout.generation_prompt))
    body = "".join(pieces)
    _check_modelfile_text(body, where)
    return body


def stop_strings(layout: ChatLayout, tokenizer: Any) -> list[str]:
    """Where generation stops: the assistant's end-of-turn text and the EOS token."""
    candidates = [layout.assistant.suffix.strip(), getattr(tokenizer, "eos_token", None) or ""]
    return list(dict.fromkeys(stop for stop in candidates if stop))


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


def _ollama_system(messages: list[Message]) -> str:
    """What Ollama passes as `.System`: every system message's content, joined."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "system")


def _roles(messages: list[Message]) -> str:
    return ", ".join(m["role"] for m in messages)


def _render(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool, where: str
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as err:  # a template's raise_exception, or any error it runs into
        raise UntranslatableTemplate.because(
            f"it fails on a conversation of {_roles(messages)} "
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


def _position_dependent(detail: str, where: str) -> NoReturn:
    raise UntranslatableTemplate.because(
        f"it frames a message by its position, not only by its role: {detail}", where
    )


def _check(
    tokenizer: Any,
    layout: ChatLayout,
    messages: list[Message],
    add_generation_prompt: bool,
    where: str,
) -> None:
    expected = _render(tokenizer, messages, add_generation_prompt, where)
    actual = layout.render(messages, add_generation_prompt)
    if expected == actual:
        return
    for message in messages:
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
        f"it is not a plain per-message layout: for a conversation of {_roles(messages)} "
        f"(add_generation_prompt={add_generation_prompt}) it renders "
        f"{expected[lo : at + 30]!r} where the per-message layout gives "
        f"{actual[lo : at + 30]!r} (the framing depends on message position or content)",
        where,
    )


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


def _go_text(text: str) -> str:
    """`text` as literal Go template text: every `{{` (and a trailing `{`) quoted."""
    escaped = text.replace("{{", '{{"{{"}}')
    if escaped.endswith("{"):
        escaped = escaped[:-1] + '{{"{"}}'
    return escaped
