"""`ftray export` refuses bad arguments before anything heavy is imported, and the merged
tokenizer spells out what llama.cpp's converter reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftray.errors import InputError
from ftray.export.run import ExportRequest, check_request
from ftray.export.source import parse_model_uri
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("models:/trigger-tiny@champion", {"name": "trigger-tiny", "alias": "champion"}),
        ("models:/trigger-tiny/3", {"name": "trigger-tiny", "version": "3"}),
        ("runs:/0123abcd/adapter", {"run": "0123abcd"}),
    ],
)
def test_model_uris_parse(uri: str, parts: dict[str, str]) -> None:
    assert parse_model_uri(uri) == parts


@pytest.mark.parametrize(
    "uri", ["trigger-tiny", "models:/", "models:/a/b", "runs:/abc/checkpoints", "s3://x/y"]
)
def test_other_uris_are_bad_input(uri: str) -> None:
    with pytest.raises(InputError, match="models:/NAME@ALIAS"):
        parse_model_uri(uri)


def test_requests_are_checked(tmp_path: Path) -> None:
    def request(**fields) -> ExportRequest:
        base = {"model_uri": "models:/m@champion", "format": "gguf", "out": tmp_path / "o"}
        return ExportRequest(**(base | fields))

    check_request(request(quant="Q4_K_M"))
    assert request(quant="Q4_K_M").quantization == "q4_k_m"
    assert request().quantization == "f16"
    assert request(format="merged").quantization is None
    with pytest.raises(InputError, match="only gguf and ollama"):
        check_request(request(format="merged", quant="q8_0"))
    with pytest.raises(InputError, match="unknown GGUF type"):
        check_request(request(quant="q9"))
    with pytest.raises(InputError, match="is not one of"):
        check_request(request(format="merged", dtype="int4"))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    with pytest.raises(InputError, match="--force"):
        check_request(request())
    check_request(request(force=True))


@pytest.mark.parametrize(
    "args",
    [
        ["not-a-uri", "--format", "adapter"],
        ["models:/m@champion", "--format", "adapter", "--quant", "q8_0"],
        ["models:/m@champion", "--format", "gguf", "--quant", "q9_x"],
    ],
)
def test_cli_refuses_before_loading_anything(args: list[str], tmp_path: Path) -> None:
    result = run_cli("export", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        result.stderr.strip().splitlines()[0]
    ]
    assert "HEAVY-IMPORT" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_merged_tokenizer_config_marks_chat_tokens_special(tmp_path: Path) -> None:
    """llama.cpp's converter reads `added_tokens_decoder` and `add_bos_token` from
    tokenizer_config.json; transformers 5 leaves both out, and then llama.cpp splits
    `<|im_start|>` into characters and puts a BOS before every prompt."""
    from transformers import AutoTokenizer

    from ftray.export.formats import spell_out_tokenizer_config
    from ftray.models.tiny import build_tiny_model

    base = build_tiny_model(["Alice fixed the gate.", "Bob fixed it with oil."] * 20)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.save_pretrained(tmp_path)
    spell_out_tokenizer_config(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    added = {
        entry["content"]: entry["special"] for entry in config["added_tokens_decoder"].values()
    }
    assert added["<|im_start|>"] and added["<|im_end|>"]
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nAlice<|im_end|>\n"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
