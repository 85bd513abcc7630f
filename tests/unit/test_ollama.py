"""The Ollama Modelfile: its Go TEMPLATE renders, through Go's text/template, exactly what the
tokenizer's chat template renders; templates that cannot be written so are refused."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from ftray.export.ollama import (
    ChatLayout,
    Frame,
    UntranslatableTemplate,
    derive_layout,
    go_template,
    modelfile,
    stop_strings,
)
from ftray.models.tiny import CHATML_TEMPLATE as TINY_TEMPLATE
from tests.export_tools import GoRender, go_renderer

Message = dict[str, str]

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
    assert layout == ChatLayout(
        system=Frame("<|im_start|>system\n", "<|im_end|>\n"),
        user=Frame("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=Frame("<|im_start|>assistant\n", "<|im_end|>\n"),
        generation_prompt="<|im_start|>assistant\n",
    )
    assert stop_strings(layout, tokenizer) == ["<|im_end|>"]
    assert modelfile(tokenizer, "model-q8_0.gguf") == (
        "FROM ./model-q8_0.gguf\n"
        'TEMPLATE """{{ range .Messages }}'
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
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
