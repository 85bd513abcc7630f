"""Golden test of what the chat task trains on: the rendered text of one conversation (system
prompt, tool call, tool result, reasoned answer) through the tiny model's template, its
tokens and its labels as TRL's trainer builds them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftray.config import load_spec
from ftray.models.tiny import CHATML_TEMPLATE, build_tiny_model
from ftray.tasks import load_task
from ftray.tasks.chat import ChatTask, encode_conversation

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "<think>I need the weather.</think>",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "content": "Oslo: 3 degrees"},
        {"role": "assistant", "content": "<think>It is cold.</think>\nIt is 3 degrees in Oslo."},
    ]
}
TOOLS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOL_LINE = (
    '{"type": "function", "function": {"name": "get_weather", "description": "", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}}}}'
)
GOLDEN = (
    "<|im_start|>system\nYou are terse.\n\n# Tools\n\nYou may call one or more functions to "
    "assist with the user query.\n\nYou are provided with function signatures within "
    "<tools></tools> XML tags:\n<tools>\n" + TOOL_LINE + "\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML "
    'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
    "<|im_start|>assistant\n<think>I need the weather.</think>\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\nOslo: 3 degrees\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n<think>It is cold.</think>\nIt is 3 degrees in Oslo.<|im_end|>\n"
)
TRAINED = [
    "<think>I need the weather.</think>\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>',
    "<think>It is cold.</think>\nIt is 3 degrees in Oslo.<|im_end|>",
]


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ChatTask, Any]:
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("golden")
    rows = [CONVERSATION] + [
        {
            "messages": [
                {"role": "user", "content": f"hi {n}"},
                {"role": "assistant", "content": "hello"},
            ]
        }
        for n in range(3)
    ]
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tools.json").write_text(json.dumps(TOOLS))
    (folder / "spec.yaml").write_text(
        "name: golden\n"
        "task: {kind: chat, data: chat.jsonl, tools: tools.json, test_fraction: 0.0}\n"
        "model: {base: tiny}\n"
    )
    spec = load_spec(folder / "spec.yaml")
    task = load_task(spec)
    assert isinstance(task, ChatTask)
    base = build_tiny_model(task.corpus())
    return spec, task, AutoTokenizer.from_pretrained(base)


def spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for index, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (index == 0 or not mask[index - 1]):
            out.append([])
        if bit:
            out[-1].append(token)
    return out


def the_conversation(task: ChatTask) -> dict[str, Any]:
    return next(c.row() for c in task.conversations if c.line == 1)


def test_rendered_text_is_the_golden_text(chat: tuple[Any, ChatTask, Any]) -> None:
    _, task, tokenizer = chat
    row = the_conversation(task)
    text = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert text == GOLDEN


def test_loss_falls_on_assistant_turns_only_each_ending_its_turn(
    chat: tuple[Any, ChatTask, Any],
) -> None:
    _, task, tokenizer = chat
    row = the_conversation(task)
    (encoded,) = encode_conversation(tokenizer, row["messages"], row["tools"])
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert tokenizer.decode(ids) == GOLDEN
    trained = spans(ids, mask)
    assert [tokenizer.decode(s) for s in trained] == TRAINED
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # five turns end with <|im_end|>: system, user, tool untrained; the two assistant turns trained
    ends = [bit for token, bit in zip(ids, mask, strict=True) if token == end]
    assert ends == [0, 0, 1, 0, 1]
    assert all(s[-1] == end for s in trained)
    # the prompt a trained turn follows is tokenised exactly as inference tokenises it
    prompt = tokenizer.apply_chat_template(
        row["messages"][:2], tools=row["tools"], tokenize=False, add_generation_prompt=True
    )
    first = mask.index(1)
    assert ids[:first] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # the tiny model, like Qwen, has no BOS token; none is added
    assert tokenizer.bos_token_id is None or tokenizer.bos_token_id not in ids


def test_exactly_one_bos_where_the_template_writes_it_and_the_tokenizer_adds_it(
    chat: tuple[Any, ChatTask, Any],
) -> None:
    """Llama 3's trap: its template writes BOS and its tokenizer adds one too."""
    _, task, tokenizer = chat
    import copy

    llama_like = copy.deepcopy(tokenizer)
    llama_like.add_special_tokens({"bos_token": "<s>"})
    llama_like.add_bos_token = True
    llama_like.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE
    bos = llama_like.bos_token_id
    assert bos is not None
    assert llama_like("x")["input_ids"][0] == bos  # the tokenizer adds one by default
    row = the_conversation(task)
    text = llama_like.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert text == "<s>" + GOLDEN
    (encoded,) = encode_conversation(llama_like, row["messages"], row["tools"])
    assert encoded["input_ids"].count(bos) == 1 and encoded["input_ids"][0] == bos
    assert [
        llama_like.decode(s) for s in spans(encoded["input_ids"], encoded["assistant_masks"])
    ] == TRAINED


def test_templates_that_rewrite_history_train_one_sequence_per_turn(
    chat: tuple[Any, ChatTask, Any],
) -> None:
    """Qwen3 drops the reasoning of earlier turns: each turn is trained in the context the
    model sees at inference."""
    _, task, tokenizer = chat
    import copy

    forgetful = copy.deepcopy(tokenizer)
    # Earlier assistant turns lose their <think> block once a later turn exists.
    forgetful.chat_template = CHATML_TEMPLATE.replace(
        "{{- '\n' + message['content'] }}",
        "{{- '\n' + (message['content'].split('</think>')[-1] if not loop.last else message['content']) }}",
    )
    assert forgetful.chat_template != CHATML_TEMPLATE
    row = the_conversation(task)
    sequences = encode_conversation(forgetful, row["messages"], row["tools"])
    assert len(sequences) == 2
    assert [
        [forgetful.decode(s) for s in spans(seq["input_ids"], seq["assistant_masks"])]
        for seq in sequences
    ] == [[TRAINED[0]], [TRAINED[1]]]


def test_the_trainer_masks_everything_but_assistant_tokens(
    chat: tuple[Any, ChatTask, Any], tmp_path: Path
) -> None:
    from ftray.training.trial import build_trainer

    spec, task, tokenizer = chat
    base = build_tiny_model(task.corpus())
    task.assign({"train": [c.key for c in task.conversations], "validation": [], "test": []})
    task.parts["validation"] = task.parts["train"][:1]
    trainer = build_trainer(spec, task, str(base), tmp_path)
    row = next(
        r for r in trainer.train_dataset if tokenizer.decode(r["input_ids"]).startswith(GOLDEN[:20])
    )
    labels = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(labels) == "".join(TRAINED)
