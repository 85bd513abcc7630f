"""The Ollama Modelfile: its Go TEMPLATE renders, through Go's text/template with the data Ollama
gives it, exactly what the tokenizer's chat template renders, tool definitions, tool calls and
tool results included; templates that cannot be written so are refused."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from ftray.errors import InputError
from ftray.export.ollama import (
    ChatLayout,
    Frame,
    ToolResultLayout,
    UntranslatableTemplate,
    derive_layout,
    go_template,
    modelfile,
    stop_strings,
)
from ftray.export.ollama_json import ollama_messages, ollama_tools
from ftray.models.tiny import CHATML_TEMPLATE as TINY_TEMPLATE
from tests.conftest import SPECS
from tests.export_tools import GoRender, go_render_all, go_renderer, go_tool_call_tag

Message = dict[str, Any]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_LIKE_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}" + CHATML_TEMPLATE
)
# HuggingFaceH4/zephyr-7b-beta's template, verbatim.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
# [INST] framing with a BOS first and a system block: a per-message layout.
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYS]' + message['content'] + '[/SYS]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
# mistralai/Mistral-7B-Instruct-v0.1's template, verbatim: no system role.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
# meta-llama/Llama-2-7b-chat-hf's template, verbatim: the system prompt goes inside the first
# [INST], and content is stripped.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
# Literal `{{` in the framing, a prefix ending in `{` and a suffix starting with `}`.
BRACES_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '{{' + message['role'] + '}} {' + message['content'] + '}\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '{{assistant}} {' }}{% endif %}"
)

# Llama 3.1's layout with tools given in the system message (its template's
# tools_in_user_message=false): the definitions as `tojson(indent=4)`, each call as a JSON object
# with "parameters", a tool result as an `ipython` turn whose content is written as a JSON
# string, a turn with calls ending in <|eom_id|>. Unlike Llama 3.1's own template it keeps
# contents verbatim (no `| trim`), takes several calls in a message, and has no date line.
LLAMA3_TOOLS_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{%- if tools %}{{- 'Environment: ipython\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\n\n' }}"
    "{%- if tools %}"
    "{{- 'You have access to the following functions. To call a function, please respond "
    'with JSON for a function call. Respond in the format {"name": function name, '
    '"parameters": dictionary of argument name and its value}. Do not use variables.\n\n\' }}'
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\n\n' }}{%- endfor %}"
    "{%- endif %}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- for call in message['tool_calls'] %}{%- set call = call['function'] %}"
    "{%- if not loop.first %}{{- '\n' }}{%- endif %}"
    "{{- '{\"name\": \"' + call['name'] + '\", \"parameters\": ' }}"
    "{{- call['arguments'] | tojson + '}' }}"
    "{%- endfor %}"
    "{{- '<|eom_id|>' }}"
    "{%- elif message['role'] == 'tool' or message['role'] == 'ipython' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}"
    "{{- message['content'] | tojson + '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{- message['content'] + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
# meta-llama/Llama-3.1-8B-Instruct's handling of tools, as it ships (tools_in_user_message
# defaults to true): the definitions go into the first user message.
LLAMA31_TOOLS_IN_FIRST_USER_MESSAGE = (
    "{{- bos_token }}"
    "{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{%- if tools is not none %}{{- 'Environment: ipython\n' }}{%- endif %}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- if tools_in_user_message and not tools is none %}"
    "{%- set first_user_message = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{{- '<|start_header_id|>user<|end_header_id|>\n\n' }}"
    "{{- 'Given the following functions, please respond with a JSON for a function call.\n\n' }}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\n\n' }}{%- endfor %}"
    "{{- first_user_message + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{- message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>reasoning</think>answer"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "\n<think>\nstep one\n</think>\n\n4"},
        {"role": "user", "content": '  edge {{ .Content }} {{"{{"}} """ \\ }}  \n'},
        {"role": "assistant", "content": "{"},
        {"role": "user", "content": "last"},
    ],
    [
        {"role": "system", "content": "Multi\nline\nsystem."},
        {"role": "user", "content": "Ünïcödé ✓"},
    ],
]


def make_tokenizer(template: str, eos: str = "<|im_end|>", bos: str | None = None) -> Any:
    """A real PreTrainedTokenizerFast over a tiny WordLevel vocabulary: nothing downloaded."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, eos: 2}
    if bos is not None:
        vocab[bos] = 3
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token=eos,
        bos_token=bos,
    )
    tokenizer.chat_template = template
    return tokenizer


def chat(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="session")
def go_render() -> GoRender:
    """Renders a TEMPLATE for some messages with Go's text/template, as Ollama does."""
    return go_renderer()


@pytest.mark.parametrize(
    ("template", "eos", "bos"),
    [
        pytest.param(CHATML_TEMPLATE, "<|im_end|>", None, id="chatml"),
        pytest.param(TINY_TEMPLATE, "<|im_end|>", "<s>", id="tiny-model"),
        pytest.param(QWEN_LIKE_TEMPLATE, "<|im_end|>", None, id="chatml-default-system"),
        pytest.param(ZEPHYR_TEMPLATE, "</s>", "<s>", id="zephyr"),
        pytest.param(INST_TEMPLATE, "</s>", "<s>", id="inst-with-bos"),
        pytest.param(BRACES_TEMPLATE, "<eos>", None, id="literal-braces"),
    ],
)
def test_go_template_renders_what_the_chat_template_renders(
    go_render: GoRender, template: str, eos: str, bos: str | None
) -> None:
    tokenizer = make_tokenizer(template, eos=eos, bos=bos)
    layout = derive_layout(tokenizer)
    with_bos = go_template(layout, include_bos=True)
    without_bos = go_template(layout)
    for messages in CONVERSATIONS:
        expected = chat(tokenizer, messages)
        assert go_render(with_bos, messages) == expected, messages
        assert layout.bos + go_render(without_bos, messages) == expected, messages
        assert layout.render(messages, add_generation_prompt=True) == expected
        assert layout.render(messages, add_generation_prompt=False) == chat(
            tokenizer, messages, add_generation_prompt=False
        )


def test_modelfile_template_round_trips_through_go(go_render: GoRender) -> None:
    for template in (CHATML_TEMPLATE, BRACES_TEMPLATE):
        tokenizer = make_tokenizer(template)
        text = modelfile(tokenizer, "model.gguf")
        match = re.search(r'^TEMPLATE """(.*?)"""$', text, flags=re.DOTALL | re.MULTILINE)
        assert match, text
        for messages in CONVERSATIONS:
            assert go_render(match[1], messages) == chat(tokenizer, messages)


def test_go_escaping_of_awkward_framing(go_render: GoRender) -> None:
    layout = ChatLayout(
        system=Frame("{{{", "}}}{"),
        user=Frame("{", "{{"),
        assistant=Frame("}{{ .Content }}", "{{/* c */}}"),
        generation_prompt="{{-",
        default_system="{{ .System }} {",
    )
    for messages in CONVERSATIONS:
        expected = layout.render(messages, add_generation_prompt=True)
        assert go_render(go_template(layout), messages) == expected


def test_chatml_layout_stops_and_modelfile() -> None:
    tokenizer = make_tokenizer(CHATML_TEMPLATE)
    layout = derive_layout(tokenizer)
    # It writes a tool message as any other role, and no tools or calls.
    assert layout == ChatLayout(
        system=Frame("<|im_start|>system\n", "<|im_end|>\n"),
        user=Frame("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=Frame("<|im_start|>assistant\n", "<|im_end|>\n"),
        generation_prompt="<|im_start|>assistant\n",
        results=ToolResultLayout(
            "<|im_start|>tool\n", "<|im_end|>\n<|im_start|>tool\n", "<|im_end|>\n"
        ),
    )
    assert stop_strings(layout, tokenizer) == ["<|im_end|>"]
    assert modelfile(tokenizer, "model-q8_0.gguf") == (
        "FROM ./model-q8_0.gguf\n"
        'TEMPLATE """{{ range .Messages }}'
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "tool" }}<|im_start|>tool\n{{ .Content }}<|im_end|>\n'
        "{{ end }}{{ end }}<|im_start|>assistant\n"
        '"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0\n"
    )


def test_default_system_prompt_and_bos_are_read_off_the_template() -> None:
    qwen_like = derive_layout(make_tokenizer(QWEN_LIKE_TEMPLATE))
    assert qwen_like.default_system == "You are a helpful assistant."
    assert go_template(qwen_like).startswith(
        "{{ if not .System }}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{{ end }}"
    )
    inst_tokenizer = make_tokenizer(INST_TEMPLATE, eos="</s>", bos="<s>")
    inst = derive_layout(inst_tokenizer)
    assert (inst.bos, inst.generation_prompt, inst.default_system) == ("<s>", "", None)
    assert inst.user == Frame("[INST] ", " [/INST]")
    assert not go_template(inst).startswith("<s>")
    assert stop_strings(inst, inst_tokenizer) == ["</s>"]
    zephyr_tokenizer = make_tokenizer(ZEPHYR_TEMPLATE, eos="</s>", bos="<s>")
    zephyr = derive_layout(zephyr_tokenizer)
    assert zephyr.bos == ""
    assert zephyr.generation_prompt == "<|assistant|>\n"
    assert stop_strings(zephyr, zephyr_tokenizer) == ["</s>"]


@pytest.mark.parametrize(
    ("template", "bos", "needles"),
    [
        pytest.param(
            CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim"),
            None,
            ["not keep message content verbatim", "stripped or rewritten"],
            id="trim",
        ),
        pytest.param(
            CHATML_TEMPLATE.replace("message['content']", "message['content'].upper()"),
            None,
            ["drops or rewrites the content of the system message"],
            id="upper",
        ),
        pytest.param(
            CHATML_TEMPLATE.replace(
                "message['content']", "message['content'].split('</think>')[-1]"
            ),
            None,
            ["not keep message content verbatim", "<think>"],
            id="drops-reasoning",
        ),
        pytest.param(
            "{{ '<|im_start|>user\n' + messages[-1]['content'] + '<|im_end|>\n' }}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            None,
            ["drops or rewrites the content of the system message"],
            id="last-message-only",
        ),
        pytest.param(
            MISTRAL_TEMPLATE,
            "<s>",
            ["fails on a conversation of system, user", "TemplateError"],
            id="mistral-no-system",
        ),
        pytest.param(
            LLAMA2_TEMPLATE,
            "<s>",
            ["frames a message by its position", "<</SYS>>"],
            id="llama2-system-inside-inst",
        ),
    ],
)
def test_untranslatable_templates_are_refused(
    template: str, bos: str | None, needles: list[str]
) -> None:
    tokenizer = make_tokenizer(template, eos="</s>" if bos else "<|im_end|>", bos=bos)
    with pytest.raises(UntranslatableTemplate) as caught:
        modelfile(tokenizer, "model.gguf")
    message = str(caught.value)
    assert message.startswith("chat template: cannot be written as an Ollama TEMPLATE: ")
    for needle in needles:
        assert needle in message, message


def test_triple_quotes_are_refused() -> None:
    tokenizer = make_tokenizer(CHATML_TEMPLATE.replace("'<|im_start|>'", '\'"""\''))
    derive_layout(tokenizer)  # a fine layout; only the Modelfile cannot hold it
    with pytest.raises(UntranslatableTemplate, match='contains """'):
        modelfile(tokenizer, "model.gguf")


def test_model_uri_locates_the_error() -> None:
    tokenizer = make_tokenizer(MISTRAL_TEMPLATE, eos="</s>", bos="<s>")
    with pytest.raises(UntranslatableTemplate) as caught:
        derive_layout(tokenizer, where="hf://mistralai/Mistral-7B-Instruct-v0.1")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("hf://mistralai/Mistral-7B-Instruct-v0.1", None)


def test_no_chat_template_is_refused() -> None:
    tokenizer = make_tokenizer(CHATML_TEMPLATE)
    tokenizer.chat_template = None
    with pytest.raises(UntranslatableTemplate, match="no chat template"):
        derive_layout(tokenizer)


def test_module_imports_without_torch_or_transformers() -> None:
    probe = (
        "import sys, ftray.export.ollama; "
        "print(sorted({'torch', 'transformers', 'jinja2'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# --- tools: definitions, calls and results --------------------------------------------------


def calls(*pairs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": name, "arguments": arguments}}
        for name, arguments in pairs
    ]


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": 'Search <the> docs & answer; say "none" when nothing fits. Ünïcödé ✓',
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for"},
                    "limit": {"type": ["integer", "null"], "description": "At most this many"},
                    "scope": {"type": "string", "enum": ["api", "guide", 3]},
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "plan_trip",
            "description": "",
            "parameters": {
                "type": "object",
                "properties": {
                    "legs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"to": {"type": "string"}, "day": {"type": "integer"}},
                            "required": ["to"],
                        },
                    },
                    "budget": {"anyOf": [{"type": "number"}, {"type": "string"}]},
                    "traveller": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "address": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
]
TOOL_CONVERSATIONS: list[list[Message]] = [
    [
        {"role": "system", "content": "Use the tools when they help."},
        {"role": "user", "content": "Find the retry docs."},
        {
            "role": "assistant",
            "content": "<think>The docs search fits.</think>",
            "tool_calls": calls(("search_docs", {"scope": "api", "query": "retry <backoff>"})),
        },
        {"role": "tool", "content": '{"hits": ["retry.md"], "note": "a & b"}'},
        {"role": "assistant", "content": "See retry.md."},
    ],
    [
        {"role": "user", "content": "Plan Oslo then Rome, and tell me the time."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": calls(
                (
                    "plan_trip",
                    {
                        "legs": [{"to": "Oslo", "day": 1}, {"to": "Rome", "day": 3}],
                        "budget": 1250.5,
                        "traveller": {"name": "Ann", "address": {"city": "Bergen"}, "vip": True},
                        "notes": None,
                    },
                ),
                ("now", {}),
            ),
        },
        {"role": "tool", "content": "planned"},
        {"role": "tool", "content": "12:00\nUTC"},
        {"role": "assistant", "content": "Planned; it is noon."},
        {"role": "user", "content": "Thanks!"},
    ],
    [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": calls(("now", {}))},
        {"role": "tool", "content": "12:00"},
    ],
    [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls(("now", {}))},
    ],
]
TOOL_TEMPLATES = [
    pytest.param(TINY_TEMPLATE, "<|im_end|>", None, id="tiny-model"),
    pytest.param(LLAMA3_TOOLS_TEMPLATE, "<|eot_id|>", "<|begin_of_text|>", id="llama3-style"),
    pytest.param(CHATML_TEMPLATE, "<|im_end|>", None, id="chatml-without-tools"),
    pytest.param(ZEPHYR_TEMPLATE, "</s>", "<s>", id="zephyr-drops-tool-turns"),
]


def expected_text(tokenizer: Any, messages: list[Message], tools: list | None) -> str:
    """The chat template's text of what Ollama hands a TEMPLATE for `messages` and `tools`."""
    text = tokenizer.apply_chat_template(
        ollama_messages(messages),
        tools=ollama_tools(tools) or None,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert isinstance(text, str)
    return text


def template_of(modelfile_text: str) -> str:
    match = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, flags=re.DOTALL | re.MULTILINE)
    assert match, modelfile_text
    return match[1]


@pytest.mark.parametrize(("template", "eos", "bos"), TOOL_TEMPLATES)
def test_tools_calls_and_results_render_as_the_chat_template_does(
    template: str, eos: str, bos: str | None
) -> None:
    tokenizer = make_tokenizer(template, eos=eos, bos=bos)
    layout = derive_layout(tokenizer)
    go = template_of(modelfile(tokenizer, "model.gguf"))
    cases = [
        (messages[:end], tools)
        for tools in (None, TOOLS, TOOLS[1:2])
        for messages in TOOL_CONVERSATIONS + CONVERSATIONS
        for end in range(1, len(messages) + 1)
    ]
    rendered = go_render_all(go, cases)
    for (messages, tools), text in zip(cases, rendered, strict=True):
        expected = expected_text(tokenizer, messages, tools)
        assert layout.bos + text == expected, (messages, tools)
        assert layout.render(messages, True, tools) == expected


def test_tool_definitions_calls_and_results_are_read_off_the_template() -> None:
    tiny = derive_layout(make_tokenizer(TINY_TEMPLATE, bos=None))
    assert tiny.calls is not None and tiny.results is not None and tiny.tools is not None
    assert (tiny.calls.first_call, tiny.calls.name_arguments) == (
        '\n<tool_call>\n{"name": "',
        '", "arguments": ',
    )
    assert tiny.results.grouped  # consecutive results share one user turn
    assert (tiny.tools.whole, tiny.tools.definitions.indent, tiny.tools.between) == (
        True,
        None,
        "\n",
    )
    llama_tokenizer = make_tokenizer(
        LLAMA3_TOOLS_TEMPLATE, eos="<|eot_id|>", bos="<|begin_of_text|>"
    )
    llama = derive_layout(llama_tokenizer)
    assert llama.tools is not None and llama.tools.definitions.indent == 4
    assert llama.tools.layout.calls is not None and not llama.tools.layout.calls.keeps_content
    assert llama.results is not None and llama.results.quoted and not llama.results.grouped
    # A turn with tool calls ends with <|eom_id|>, which must stop generation too.
    assert stop_strings(llama, llama_tokenizer) == ["<|eot_id|>", "<|eom_id|>"]
    # A template that writes no tools gives a TEMPLATE without .Tools: Ollama then says the
    # model does not take tools, rather than dropping them.
    chatml = derive_layout(make_tokenizer(CHATML_TEMPLATE))
    assert chatml.tools is None and chatml.calls is None
    assert ".Tools" not in go_template(chatml)
    assert "$.Tools" in go_template(tiny)


@pytest.mark.parametrize(
    ("template", "eos", "bos", "tag"),
    [
        pytest.param(TINY_TEMPLATE, "<|im_end|>", None, "<tool_call>", id="tiny-model"),
        pytest.param(
            LLAMA3_TOOLS_TEMPLATE, "<|eot_id|>", "<|begin_of_text|>", "{", id="llama3-style"
        ),
    ],
)
def test_ollama_finds_the_tool_calls_in_a_reply(
    template: str, eos: str, bos: str | None, tag: str
) -> None:
    """Ollama's reply parser looks for the text that opens the TEMPLATE's tool calls (a bare
    "{" means any JSON object); a wrong tag would leave calls in the reply's content."""
    go = template_of(modelfile(make_tokenizer(template, eos=eos, bos=bos), "model.gguf"))
    assert go_tool_call_tag(go) == tag


@pytest.mark.parametrize(
    ("template", "needles"),
    [
        pytest.param(
            TINY_TEMPLATE.replace(
                "tool | tojson",
                "tool['function']['name'] + ': ' + tool['function']['description']",
            ),
            ["writes tool definitions other than as JSON", "ftray_marker_tool_one: "],
            id="tools-as-text",
        ),
        pytest.param(
            TINY_TEMPLATE.replace("tool | tojson", "tool | tojson(ensure_ascii=True)"),
            ["writes tool definitions other than as JSON", "\\\\u00e9"],
            id="tools-ascii-escaped",
        ),
        pytest.param(
            TINY_TEMPLATE.replace(
                "call['arguments'] | tojson",
                "call['arguments'] | dictsort | map('join', '=') | join(', ')",
            ),
            ["writes a tool call's arguments other than as one JSON object"],
            id="arguments-key-by-key",
        ),
        pytest.param(
            TINY_TEMPLATE.replace(
                "'\n<tool_response>\n' + message['content']",
                "'\n<tool_response name=\"' + message['name'] | default('') + '\">\n'"
                " + message['content']",
            ),
            ["writes a tool message's name"],
            id="tool-message-name",
        ),
        pytest.param(
            TINY_TEMPLATE.replace(
                "'\n<tool_response>\n' + message['content']",
                "'\n<tool_response name=\"' + message['name'] + '\">\n' + message['content']",
            ),
            ["fails on a conversation of user, assistant with 1 tool call(s), tool", "name"],
            id="tool-message-needs-a-name",
        ),
        pytest.param(
            LLAMA31_TOOLS_IN_FIRST_USER_MESSAGE,
            ["given tools", "first user message", "⟪tools⟫"],
            id="llama3.1-tools-in-first-user-message",
        ),
        pytest.param(
            LLAMA3_TOOLS_TEMPLATE.replace(
                "{%- for call in message['tool_calls'] %}",
                "{%- if message['tool_calls'] | length != 1 %}"
                "{{- raise_exception('Only one tool call at a time.') }}{%- endif %}"
                "{%- for call in message['tool_calls'] %}",
            ),
            ["fails on a conversation of user, assistant with 2 tool call(s)", "one tool call"],
            id="one-call-per-message",
        ),
    ],
)
def test_tool_rendering_it_cannot_translate_is_refused_naming_it(
    template: str, needles: list[str]
) -> None:
    tokenizer = make_tokenizer(template, eos="<|eot_id|>", bos="<|begin_of_text|>")
    with pytest.raises(UntranslatableTemplate) as caught:
        modelfile(tokenizer, "model.gguf", where="models:/chat-tiny/3")
    assert isinstance(caught.value, InputError)  # `ftray export` exits 2 with the line
    message = str(caught.value)
    assert message.startswith("models:/chat-tiny/3: cannot be written as an Ollama TEMPLATE: ")
    for needle in needles:
        assert needle in message, message


def test_what_ollama_keeps_of_the_shipped_tools() -> None:
    """Ollama's API drops JSON Schema keywords outside its own types before any TEMPLATE sees
    them: of the chat demo's tools, only `additionalProperties` goes."""
    from ftray.tasks.chat import load_tools_file

    tools = load_tools_file(SPECS.parent / "datasets" / "chat" / "tools.json")
    without = copy.deepcopy(tools)
    for tool in without:
        del tool["function"]["parameters"]["additionalProperties"]
    assert ollama_tools(tools) == without
    tokenizer = make_tokenizer(TINY_TEMPLATE)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    trained = expected_text(tokenizer, messages, tools).replace(
        ', "additionalProperties": false', ""
    )
    assert expected_text(tokenizer, messages, without) == trained


def chat_heldout() -> list[tuple[list[Message], list[dict[str, Any]]]]:
    """Every prefix, as Ollama is asked at each turn, of every held-out conversation (validation
    and test) of the shipped chat spec, with its tools."""
    from ftray.config import load_spec
    from ftray.tasks import load_task
    from ftray.tasks.chat import ChatTask

    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    assert isinstance(task, ChatTask)
    heldout = task.parts["validation"] + task.parts["test"]
    assert len(heldout) >= 10
    return [
        (list(conversation.messages[:end]), list(conversation.tools))
        for conversation in heldout
        for end in range(1, len(conversation.messages) + 1)
    ]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Any:
    """The tokenizer of the chat spec's tiny model (built from its data, cached per session)."""
    from transformers import AutoTokenizer

    from ftray.config import load_spec
    from ftray.models.tiny import build_tiny_model
    from ftray.tasks import load_task

    task = load_task(load_spec(SPECS / "chat_tiny.yaml"))
    return AutoTokenizer.from_pretrained(build_tiny_model(task.corpus()))


@pytest.mark.slow
@pytest.mark.parametrize("template", [None, LLAMA3_TOOLS_TEMPLATE], ids=["tiny-model", "llama3"])
def test_shipped_chat_data_renders_the_same_through_go(
    chat_tokenizer: Any, template: str | None
) -> None:
    """The TEMPLATE, through Go's text/template with the data Ollama gives it, renders every
    held-out conversation of the chat demo as the tokenizer's chat template does (given the
    tools as Ollama keeps them): with the tiny model's own template, and with a Llama-3-style
    one set on its tokenizer."""
    tokenizer = copy.deepcopy(chat_tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    text = modelfile(tokenizer, "chat-tiny-v1-f16.gguf", where="models:/chat-tiny@champion")
    go, layout = template_of(text), derive_layout(tokenizer)
    cases = chat_heldout()
    roles = {m["role"] for messages, _ in cases for m in messages}
    assert roles == {"system", "user", "assistant", "tool"}
    assert any(m.get("tool_calls") for messages, _ in cases for m in messages)
    for (messages, tools), rendered in zip(cases, go_render_all(go, cases), strict=True):
        expected = expected_text(tokenizer, messages, tools)
        assert layout.bos + rendered == expected, json.dumps(messages)
