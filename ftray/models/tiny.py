"""The `tiny` base model: a small random Llama with a SentencePiece tokenizer trained on the
task's own text, built offline and cached by content hash.

The tokenizer is SentencePiece BPE with byte fallback (as Llama 2 and Mistral ship), which
llama.cpp's GGUF converter accepts, so every export format can be tested on it.

LoRA on it learns a trigger mapping in seconds on a CPU, which makes demos and tests real
without downloading weights. Every trial of a sweep loads the same cached folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUILDER_VERSION = 4
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
# Markup the chat task's text uses, kept as whole pieces (plain text to the tokenizer, not
# special tokens: decoding keeps them, as Qwen's and Hermes' tokenizers do). Only a corpus
# that uses markup gets them (and the template's own words); any other corpus builds the
# same tokenizer and model as before they existed.
MARKUP_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<tools>",
    "</tools>",
    "<think>",
    "</think>",
]
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
# The template's own words, so the tokenizer learns them as few pieces.
TEMPLATE_TEXTS = ["system", "user", "assistant", TOOLS_PREAMBLE, TOOLS_POSTAMBLE]
# ChatML as Qwen2.5 and Hermes write it: tools listed in the system turn, calls as
# <tool_call>{"name", "arguments"}</tool_call> after the content, tool results as a user turn
# of <tool_response> blocks; reasoning stays in the content as <think>...</think>. Without
# tools it renders plain ChatML.
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- " + repr(TOOLS_PREAMBLE) + " }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- " + repr(TOOLS_POSTAMBLE) + " + '<|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message['content'] %}{{- '\n' + message['content'] }}{%- endif %}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- if call['function'] is defined %}{%- set call = call['function'] %}{%- endif %}"
    "{{- '\n<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{{- call['arguments'] | tojson }}{{- '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
VOCAB_SIZE = 1024
# Llama's default init (std 0.02) caps the logit margin a normalised hidden state can reach
# at about 2.5, so a LoRA on the frozen random head could never make an answer likely.
# A wider head lets the adapter alone push the right token well ahead.
LM_HEAD_STD = float(os.environ.get("FTRAY_TINY_HEAD_STD", "0.15"))


def ftray_cache() -> Path:
    """ftray's cache: $FTRAY_CACHE_DIR, else ~/.cache/ftray."""
    return Path(os.environ.get("FTRAY_CACHE_DIR", Path.home() / ".cache" / "ftray"))


def cache_root() -> Path:
    """Where built tiny models live: $FTRAY_CACHE_DIR/tiny, else ~/.cache/ftray/tiny."""
    return ftray_cache() / "tiny"


def checks_cache_root() -> Path:
    """Where the outcomes of data checks that passed are kept (see training.lengths)."""
    return ftray_cache() / "checks"


def tiny_model_key(corpus: list[str]) -> str:
    """Content hash of everything that determines the built model."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"v": BUILDER_VERSION, "arch": ARCHITECTURE, "vocab": VOCAB_SIZE, "head": LM_HEAD_STD}
        ).encode()
    )
    for text in sorted(set(corpus)):
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]


def tiny_model_built(corpus: list[str], cache_dir: Path | None = None) -> bool:
    """Whether the tiny model for this corpus is already in the cache."""
    target = (cache_dir or cache_root()) / tiny_model_key(corpus)
    return (target / "config.json").exists() and (target / "tokenizer.json").exists()


def build_tiny_model(corpus: list[str], cache_dir: Path | None = None) -> Path:
    """The folder of the tiny model for this corpus, building it on first use."""
    root = cache_dir or cache_root()
    target = root / tiny_model_key(corpus)
    if tiny_model_built(corpus, root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _write_tiny_model(corpus, staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same build first; theirs is identical.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def uses_markup(corpus: list[str]) -> bool:
    """Whether the corpus holds chat markup (tool calls, reasoning blocks)."""
    return any(token in text for text in corpus for token in MARKUP_TOKENS)


def _train_tokenizer(corpus: list[str], folder: Path) -> Any:
    """Train a SentencePiece BPE model on the corpus; return it as a Hugging Face tokenizer.

    `tokenizer.model` stays in the folder beside `tokenizer.json`: llama.cpp's converter
    reads the SentencePiece model.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    chat = uses_markup(corpus)

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sorted(set(corpus) | set(TEMPLATE_TEXTS if chat else []))),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        # Text round-trips exactly: no leading "▁" added, spaces and newlines kept as is.
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        user_defined_symbols=SPECIAL_TOKENS + (MARKUP_TOKENS if chat else []),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "legacy": False,
                "add_prefix_space": False,
                "add_bos_token": False,
                "add_eos_token": False,
                "unk_token": "<unk>",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|pad|>",
                "additional_special_tokens": ["<|im_start|>", "<|endoftext|>"],
                "model_max_length": ARCHITECTURE["max_position_embeddings"],
            }
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # Whole pieces in SentencePiece already; as added (not special) tokens the Hugging Face
    # tokenizer matches them whole too, and decoding keeps them.
    if chat:
        tokenizer.add_tokens(MARKUP_TOKENS, special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _write_tiny_model(corpus: list[str], folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_tokenizer = _train_tokenizer(corpus, folder)
    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        pad_token_id=hf_tokenizer.pad_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **ARCHITECTURE,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = LlamaForCausalLM(config)
        torch.nn.init.normal_(model.lm_head.weight, mean=0.0, std=LM_HEAD_STD)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = hf_tokenizer.pad_token_id
    model.generation_config.eos_token_id = hf_tokenizer.eos_token_id
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
