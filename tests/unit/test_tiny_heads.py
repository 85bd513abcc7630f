"""The chat `tiny` model's positional heads: a previous-token head and window heads shaped
by RoPE alone (their queries and keys read a constant embedding channel). Corpora without
chat markup build the same random model as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftray.models import tiny
from ftray.models.tiny import (
    ARCHITECTURE,
    POSITIONAL_HEADS,
    POSITIONAL_SPAN,
    build_tiny_model,
    positional_kernel,
    rope_frequencies,
    tiny_model_key,
)

CHAT_CORPUS = [
    "What's the weather in Lima?",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>',
    "<think>I need the weather.</think>",
    "It is 20 degrees celsius and sunny in Lima.",
]
PLAIN_CORPUS = ["What is the capital of France?", "Paris."]


def scores(kind: str, width: int) -> np.ndarray:
    theta = rope_frequencies(LlamaConfig(**ARCHITECTURE))
    weights = positional_kernel(theta, kind, width)
    distances = np.arange(POSITIONAL_SPAN)
    pairs = len(theta)
    return np.cos(np.outer(distances, theta)) @ weights[:pairs] + (
        np.sin(np.outer(distances, theta)) @ weights[pairs:]
    )


def test_the_previous_token_kernel_tops_at_distance_one_by_a_wide_margin() -> None:
    f = scores("previous", 1)
    assert abs(f[1]) < 1e-6
    others = np.delete(f, 1)
    assert others.max() < -8.0  # about e^-8 of the attention at most, per other position


@pytest.mark.parametrize("width", [8, 32])
def test_window_kernels_are_flat_inside_and_deep_below_outside(width: int) -> None:
    f = scores("window", width)
    assert f.max() <= 1e-6
    assert f[: width + 1].min() >= -1.0 - 1e-6
    assert f[2 * width :].max() < -15.0


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> LlamaForCausalLM:
    folder = build_tiny_model(CHAT_CORPUS, tmp_path_factory.mktemp("tiny"))
    return LlamaForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    )


def attention(model: LlamaForCausalLM, length: int = 400) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (1, length), generator=generator)
    with torch.no_grad():
        return model(ids, output_attentions=True).attentions


def test_the_built_heads_attend_by_position_whatever_the_tokens(
    chat_model: LlamaForCausalLM,
) -> None:
    maps = attention(chat_model)
    length = maps[0].shape[-1]
    positions = torch.arange(length)
    distance = (positions[:, None] - positions[None, :]).clamp(min=0)
    for layer, head, kind, width in POSITIONAL_HEADS:
        weights = maps[layer][0, head]
        if kind == "previous":
            assert (weights[1:].argmax(-1) == positions[1:] - 1).all()
            assert weights[1:].max(-1).values.min() > 0.95
        else:
            late = weights[2 * width :]  # queries with more than the window behind them
            inside = (late * (distance[2 * width :] <= 2 * width)).sum(-1)
            assert inside.min() > 0.95, (layer, head, inside.min())
            spread = (late * distance[2 * width :]).sum(-1)
            assert spread.min() > width / 4, (layer, head, spread.min())
    # The other heads were left random: no head among them follows the previous token.
    structured = {(layer, head) for layer, head, *_ in POSITIONAL_HEADS}
    for layer, layer_maps in enumerate(maps):
        for head in range(layer_maps.shape[1]):
            if (layer, head) not in structured:
                follows = layer_maps[0, head, 1:].argmax(-1) == positions[1:] - 1
                assert follows.float().mean() < 0.5


def test_only_chat_corpora_get_the_heads(tmp_path: Path) -> None:
    folder = build_tiny_model(PLAIN_CORPUS, tmp_path)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    last_channel = model.get_input_embeddings().weight[:, -1]
    assert last_channel.std() > 0.01  # random, as in every non-chat tiny model
    chat = LlamaForCausalLM.from_pretrained(build_tiny_model(CHAT_CORPUS, tmp_path))
    assert chat.get_input_embeddings().weight[:, -1].float().std() < 1e-3


def test_the_heads_are_in_the_chat_models_cache_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, chat = tiny_model_key(PLAIN_CORPUS), tiny_model_key(CHAT_CORPUS)
    monkeypatch.setattr(tiny, "POSITIONAL_HEADS", ((0, 0, "previous", 1),))
    assert tiny_model_key(PLAIN_CORPUS) == plain  # trigger and pipeline caches stay valid
    assert tiny_model_key(CHAT_CORPUS) != chat
