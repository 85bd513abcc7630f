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


# The chat task's model gets attention heads that a pretrained model has and a random one
# lacks (layer, head, kind, width): a previous-token head and an 8-token window in layer 0,
# a 32-token window in layer 1. Random attention is nearly uniform over a 400-token
# conversation, so the model cannot see what it wrote a few tokens back, and a tool call
# breaks where a value should follow its key; with these heads, LoRA learns calls that
# validate (README, Status). Their queries and keys read one embedding channel that holds
# the same value in every token, so RoPE alone shapes them: the score between positions
# Δ apart is a sum of cos(θ·Δ) and sin(θ·Δ) over RoPE's frequencies θ, with weights solved
# as linear programs (`positional_kernel`).
POSITIONAL_HEADS = ((0, 0, "previous", 1), (0, 1, "window", 8), (1, 0, "window", 32))
CONSTANT_VALUE = 0.085  # about 4 after RMSNorm beside the other channels' N(0, 0.02)
POSITIONAL_SPAN = 1024  # distances the kernels are solved over (max_position_embeddings)


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
    settings: dict[str, Any] = {
        "v": BUILDER_VERSION,
        "arch": ARCHITECTURE,
        "vocab": VOCAB_SIZE,
        "head": LM_HEAD_STD,
    }
    if uses_markup(corpus):  # only chat corpora get the positional heads
        settings["positional_heads"] = {
            "heads": [list(h) for h in POSITIONAL_HEADS],
            "constant": CONSTANT_VALUE,
            "span": POSITIONAL_SPAN,
        }
    digest.update(json.dumps(settings).encode())
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
    if uses_markup(corpus):
        add_positional_heads(model)
    model.generation_config.pad_token_id = hf_tokenizer.pad_token_id
    model.generation_config.eos_token_id = hf_tokenizer.eos_token_id
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)


def rope_frequencies(config: Any) -> Any:
    """RoPE's angular frequencies θ_i for one head (Llama's default rotary embedding)."""
    import numpy as np

    head_dim = config.hidden_size // config.num_attention_heads
    base = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)


def positional_kernel(theta: Any, kind: str, width: int) -> Any:
    """Weights (a_i, b_i) of score(Δ) = Σ a_i cos(θ_i Δ) + b_i sin(θ_i Δ), each at most 10
    (previous) or 5 (window) in size: margins of about 9 and 20-50 nats.

    `previous`: the largest margin between Δ = width (1: the previous token) and every other
    distance. `window`: scores within 1 of the top for Δ <= width and as far below as
    possible from Δ >= 2·width on. Both are linear programs over Δ = 0 .. POSITIONAL_SPAN - 1.
    """
    import numpy as np
    from scipy.optimize import linprog

    distances = np.arange(POSITIONAL_SPAN)
    basis = np.concatenate(
        [np.cos(np.outer(distances, theta)), np.sin(np.outer(distances, theta))], axis=1
    )
    # Variables: the weights, then the margin t (maximised).
    rows, bounds = [], []
    equal: dict[str, Any] = {}
    if kind == "previous":
        # f(width) = 0 and f(d) <= -t elsewhere: the score is scaled by how far each token's
        # normalised constant channel strays from its mean, which must not move the top.
        equal = {"A_eq": np.r_[basis[width], 0.0][None, :], "b_eq": np.zeros(1)}
        for d in distances:
            if d != width:
                rows.append(np.r_[basis[d], 1.0])
                bounds.append(0.0)
    else:
        for d in distances:
            rows.append(np.r_[basis[d], 0.0])  # f(d) <= 0
            bounds.append(0.0)
            if d <= width:  # f(d) >= -1
                rows.append(np.r_[-basis[d], 0.0])
                bounds.append(1.0)
            if d >= 2 * width:  # f(d) <= -t
                rows.append(np.r_[basis[d], 1.0])
                bounds.append(0.0)
    size = basis.shape[1]
    limit = 10.0 if kind == "previous" else 5.0
    result = linprog(
        np.r_[np.zeros(size), -1.0],
        A_ub=np.array(rows),
        b_ub=np.array(bounds),
        bounds=[(-limit, limit)] * size + [(None, None)],
        method="highs",
        **equal,
    )
    if not result.success:  # pragma: no cover - the programs are feasible by construction
        raise RuntimeError(f"no {kind} kernel of width {width}: {result.message}")
    return result.x[:size]


def add_positional_heads(model: Any) -> None:
    """Give the model POSITIONAL_HEADS (see there), in place.

    Every token's embedding holds CONSTANT_VALUE in its last channel; the chosen heads'
    queries and keys read only that channel, every other head and MLP ignores it, and no
    layer writes to it, so each layer's normalised input keeps it at about the same value.
    """
    import torch

    config = model.config
    theta = rope_frequencies(config)
    pairs = len(theta)
    head_dim = 2 * pairs
    channel = config.hidden_size - 1
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[:, channel] = CONSTANT_VALUE
        # The channel's value after RMSNorm, given the other channels' spread.
        others = torch.cat([embed[:, :channel], embed[:, channel + 1 :]], dim=1)
        rms = torch.sqrt((others.pow(2).sum(1) + CONSTANT_VALUE**2) / config.hidden_size)
        normalised = float((CONSTANT_VALUE / rms).mean())
        for layer in model.model.layers:
            attention = layer.self_attn
            attention.q_proj.weight[:, channel] = 0.0
            attention.k_proj.weight[:, channel] = 0.0
            attention.o_proj.weight[channel] = 0.0
            layer.mlp.down_proj.weight[channel] = 0.0
        for layer_index, head, kind, width in POSITIONAL_HEADS:
            weights = positional_kernel(theta, kind, width)
            cos_part, sin_part = weights[:pairs], weights[pairs:]
            # q·k over a RoPE pair is Re[z_q conj(z_k) e^{jθΔ}]; with z_k = 1 and
            # z_q = a - jb that is a cos(θΔ) + b sin(θΔ). Attention divides by sqrt(head_dim).
            scale = head_dim**0.5 / normalised**2
            query = torch.zeros(head_dim)
            query[:pairs] = torch.tensor(cos_part * scale)
            query[pairs:] = torch.tensor(-sin_part * scale)
            key = torch.zeros(head_dim)
            key[:pairs] = 1.0
            attention = model.model.layers[layer_index].self_attn
            rows = slice(head * head_dim, (head + 1) * head_dim)
            for projection, vector in ((attention.q_proj, query), (attention.k_proj, key)):
                projection.weight[rows] = 0.0
                projection.weight[rows, channel] = vector
