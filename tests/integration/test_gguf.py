"""Real GGUF export: llama.cpp's converter fetched from the llama-cpp-python sdist turns a small
random Llama with a SentencePiece tokenizer into f16 and q8_0 files that transformers loads back
and that generate the same greedy tokens as the original.

The first run downloads the sdist (about 75 MB) into `$FTRAY_CACHE_DIR/llama.cpp/` when
FTRAY_CACHE_DIR is set in the environment pytest starts with, else into a temporary folder (once
per session); `$FTRAY_LLAMA_CPP_DIR` skips the download. Needs `sentencepiece` (the converter
reads `tokenizer.model` with it) and `gguf` (transformers reads GGUF with it). With
`FTRAY_LLAMA_QUANTIZE` set, a K-quant is written too; with `FTRAY_LLAMA_CLI` set to llama.cpp's
`llama-completion`, llama.cpp itself runs the f16 file greedily.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftray.export import gguf

pytestmark = pytest.mark.slow

# Read at collection, before tests/conftest.py points FTRAY_CACHE_DIR at a fresh folder.
_USER_CACHE_DIR = os.environ.get("FTRAY_CACHE_DIR")
_USER_LLAMA_CPP_DIR = os.environ.get("FTRAY_LLAMA_CPP_DIR")

CORPUS = [
    f"the quick brown fox jumps over the lazy dog {i} times, said the cat to the {animal}."
    for i in range(300)
    for animal in ("mouse", "bird", "owl")
]
PROMPT = "the lazy dog said"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The converter tree, fetched once; FTRAY_LLAMA_CPP_DIR points at it for this module."""
    patch = pytest.MonkeyPatch()
    if not _USER_LLAMA_CPP_DIR:
        # The session's cache (tests/conftest.py), so the e2e export tests find it there too.
        cache = _USER_CACHE_DIR or os.environ.get("FTRAY_CACHE_DIR")
        patch.setenv("FTRAY_CACHE_DIR", cache or str(tmp_path_factory.mktemp("llama-cpp-cache")))
    tree = gguf.converter_dir()
    patch.setenv("FTRAY_LLAMA_CPP_DIR", str(tree))
    yield tree
    patch.undo()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama (hidden 64, 2 layers) with a byte-fallback SentencePiece BPE of 500 pieces."""
    spm = pytest.importorskip("sentencepiece", reason="the converter reads tokenizer.model with it")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = tmp_path_factory.mktemp("hf-llama")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=proto,
        model_type="bpe",
        vocab_size=500,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 500
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # A wider head than Llama's init, so greedy choices do not hinge on rounding.
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompt_ids(hf_model: Path) -> list[int]:
    from transformers import LlamaTokenizer

    ids = LlamaTokenizer.from_pretrained(hf_model)(PROMPT)["input_ids"]
    return ids if ids[0] == 1 else [1, *ids]


def _greedy(model, ids: list[int]) -> tuple[list[int], object]:
    import torch

    inputs = torch.tensor([ids])
    with torch.no_grad():
        logits = model(inputs).logits
        out = model.generate(
            inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2, eos_token_id=None
        )
    return out[0, len(ids) :].tolist(), logits


def _from_gguf(path: Path):
    pytest.importorskip("gguf", reason="transformers reads GGUF files with it")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def _original(hf_model: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_model).eval()


@pytest.fixture(scope="module")
def f16_file(llama_cpp: Path, hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf-f16")
    return gguf.convert(hf_model, folder / "model-f16.gguf", "f16", name="tiny-llama-v2")


def test_fetched_tree_has_the_converter_and_quantize_sources_only(llama_cpp: Path) -> None:
    if _USER_LLAMA_CPP_DIR:
        pytest.skip("FTRAY_LLAMA_CPP_DIR is set: nothing was fetched")
    assert llama_cpp.name == gguf.LLAMA_CPP_PYTHON_VERSION
    for needed in ("convert_hf_to_gguf.py", "gguf-py/gguf", "CMakeLists.txt", "tools/quantize"):
        assert (llama_cpp / needed).exists(), needed
    for dropped in ("models", "docs", "tests", ".git"):
        assert not (llama_cpp / dropped).exists(), dropped
    size = sum(p.stat().st_size for p in llama_cpp.rglob("*") if p.is_file())
    assert size < 100e6, f"{size / 1e6:.0f} MB cached"


def test_f16_gguf_generates_the_same_greedy_tokens(
    f16_file: Path, hf_model: Path, prompt_ids: list[int]
) -> None:
    import torch
    from gguf import GGUFReader

    fields = GGUFReader(f16_file).fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"  # SentencePiece
    assert len(fields["tokenizer.ggml.tokens"].data) == 500
    assert bytes(fields["general.name"].parts[-1]).decode() == "tiny-llama-v2"

    expected, expected_logits = _greedy(_original(hf_model), prompt_ids)
    tokens, logits = _greedy(_from_gguf(f16_file), prompt_ids)
    assert tokens == expected
    scale = expected_logits.abs().max().item()
    torch.testing.assert_close(logits, expected_logits, atol=2e-3 * scale, rtol=0)


def test_q8_0_gguf_stays_close(
    llama_cpp: Path, hf_model: Path, prompt_ids: list[int], tmp_path: Path
) -> None:
    import torch

    out = gguf.convert(hf_model, tmp_path / "model-q8_0.gguf", "q8_0")
    expected, expected_logits = _greedy(_original(hf_model), prompt_ids)
    tokens, logits = _greedy(_from_gguf(out), prompt_ids)
    scale = expected_logits.abs().max().item()
    torch.testing.assert_close(logits, expected_logits, atol=0.05 * scale, rtol=0)
    assert tokens[:4] == expected[:4]


def test_k_quant_with_llama_quantize(
    llama_cpp: Path, hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.environ.get("FTRAY_LLAMA_QUANTIZE"):
        pytest.skip("set FTRAY_LLAMA_QUANTIZE to llama.cpp's llama-quantize to test K-quants")
    pytest.importorskip("gguf")
    from gguf import GGUFReader

    out = gguf.convert(hf_model, tmp_path / "model-q4_k_m.gguf", "q4_k_m")
    reader = GGUFReader(out)
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-q4_k_m.gguf"]


def test_llama_cpp_runs_the_f16_file_greedily(
    f16_file: Path, hf_model: Path, prompt_ids: list[int]
) -> None:
    cli = os.environ.get("FTRAY_LLAMA_CLI")
    if not cli:
        pytest.skip("set FTRAY_LLAMA_CLI to llama.cpp's llama-completion to run the GGUF")
    result = subprocess.run(
        [
            cli,
            "-m",
            str(f16_file),
            "-p",
            PROMPT,
            "-n",
            str(NEW_TOKENS),
            "--temp",
            "0",
            "--ignore-eos",
            "-no-cnv",
            "--no-display-prompt",
            "--no-warmup",
            "-t",
            "1",
            "--seed",
            "0",
        ],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:].decode(errors="replace")
    expected, _ = _greedy(_original(hf_model), prompt_ids)
    assert result.stdout.rstrip(b"\n") == _piece_bytes(hf_model, expected)


def _piece_bytes(hf_model: Path, ids: list[int]) -> bytes:
    """The bytes llama.cpp prints for these SentencePiece tokens (byte pieces as raw bytes)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(hf_model / "tokenizer.model"))
    out = b""
    for piece in map(processor.id_to_piece, ids):
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode()
    return out
