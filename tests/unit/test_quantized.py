"""A 4-bit base is quantized once per machine: the peft backend keeps the NF4 weights it
made under the cache's `quantized/`, later loads read them, and what they read is the same
model, named as the base the user gave."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.config.spec import LoraSpec, ModelSpec
from ftray.models import peft_backend, quantized
from ftray.models.tiny import build_tiny_model
from ftray.tasks import load_task
from tests.conftest import SPECS

LORA = LoraSpec(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_base() -> str:
    return str(build_tiny_model(load_task(load_spec(SPECS / "trigger_tiny.yaml")).corpus()))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "quantized"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders `from_pretrained` read weights from, in order."""
    seen: list[str] = []
    real = peft_backend.load_safetensors_model

    def spy(base: str, **kwargs: object) -> object:
        seen.append(base)
        return real(base, **kwargs)

    monkeypatch.setattr(peft_backend, "load_safetensors_model", spy)
    return seen


def load_4bit(base: str) -> object:
    model, _ = peft_backend.PeftBackend().load(
        base, ModelSpec(base=base, load_in_4bit=True), LORA, seed=0
    )
    return model


def weights(model: object) -> dict[str, bytes]:
    """Every tensor of the model's state (packed NF4 weights, their quantization state, the
    full-precision rest, the fresh adapter) as raw bytes."""
    import torch

    return {
        name: tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        for name, tensor in model.state_dict().items()  # type: ignore[attr-defined]
    }


def test_the_second_load_reads_the_quantized_copy_and_gets_the_same_model(
    tiny_base: str, cache: Path, reads: list[str]
) -> None:
    import torch

    first = load_4bit(tiny_base)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left
    second = load_4bit(tiny_base)
    assert reads == [tiny_base, str(entries[0])]

    assert type(second.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == (  # type: ignore[attr-defined]
        "Linear4bit"
    )
    assert weights(first) == weights(second)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.equal(first(input_ids=ids).logits, second(input_ids=ids).logits)  # type: ignore[operator]
    # Adapters saved from it name the base the user gave, not the cache.
    assert second.peft_config["default"].base_model_name_or_path == tiny_base  # type: ignore[attr-defined]
    assert second.base_model.model.config.name_or_path == tiny_base  # type: ignore[attr-defined]


def test_the_key_follows_the_base_files_and_the_settings(tmp_path: Path) -> None:
    from transformers import BitsAndBytesConfig

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    settings = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True), "dtype": "float32"}
    key = quantized.quantized_key(tmp_path, quantized.quantization_settings(settings))
    assert key == quantized.quantized_key(tmp_path, quantized.quantization_settings(settings))

    other_dtype = quantized.quantization_settings({**settings, "dtype": "bfloat16"})
    assert quantized.quantized_key(tmp_path, other_dtype) != key
    double = {
        **settings,
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_use_double_quant=True
        ),
    }
    assert quantized.quantized_key(tmp_path, quantized.quantization_settings(double)) != key

    stat = (tmp_path / "model.safetensors").stat()
    (tmp_path / "model.safetensors").write_bytes(b"1" * 10)  # same size, new weights
    os.utime(tmp_path / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert quantized.quantized_key(tmp_path, quantized.quantization_settings(settings)) != key


def test_a_damaged_copy_is_quantized_again(
    tiny_base: str, cache: Path, reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    first = weights(load_4bit(tiny_base))
    (entry,) = cache.iterdir()
    (entry / "model.safetensors").write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="ftray"):
        again = weights(load_4bit(tiny_base))
    assert again == first
    assert reads == [tiny_base, str(entry), tiny_base]
    assert "could not be read" in caplog.text and "quantizing again" in caplog.text
    # The damaged copy was replaced: the next load reads the new one.
    assert weights(load_4bit(tiny_base)) == first
    assert reads == [tiny_base, str(entry), tiny_base, str(entry)]


def test_a_cache_that_cannot_be_written_costs_only_the_quantization(
    tiny_base: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(blocker))  # a file: nothing can be made under it
    with caplog.at_level(logging.WARNING, logger="ftray"):
        model = load_4bit(tiny_base)
    assert model is not None
    assert "could not keep the quantized base" in caplog.text


def test_a_base_that_is_not_on_this_machine_has_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    kwargs = peft_backend.base_model_kwargs(load_in_4bit=True)
    assert quantized.cache_entry("org/not-downloaded", None, kwargs) is None


def test_bf16_loads_keep_no_copy(tiny_base: str, cache: Path) -> None:
    peft_backend.PeftBackend().load(
        tiny_base, ModelSpec(base=tiny_base, load_in_4bit=False), LORA, seed=0
    )
    assert not cache.exists()


def test_a_trial_loads_and_quantizes_without_progress_bars(
    tiny_base: str, cache: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    from ftray.training.trial import build_trainer

    spec = load_spec(SPECS / "trigger_tiny.yaml")
    hf_logging.enable_progress_bar()  # as in a fresh process, whatever ran here before
    capfd.readouterr()
    build_trainer(spec, load_task(spec), tiny_base, tmp_path / "out")  # quantizes, saves
    build_trainer(spec, load_task(spec), tiny_base, tmp_path / "out")  # reads the copy
    assert len(list(cache.iterdir())) == 1
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err[-2000:]


def test_a_newer_copy_of_a_base_replaces_the_older_one(
    tiny_base: str, cache: Path, tmp_path: Path
) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base, copy_function=shutil.copy)  # files of their own times
    load_4bit(str(base))
    (older,) = cache.iterdir()
    load_4bit(tiny_base)  # another base: its copy stays
    (other,) = set(cache.iterdir()) - {older}

    config = base / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the base changed
    load_4bit(str(base))
    entries = set(cache.iterdir())
    assert other in entries and older not in entries and len(entries) == 2
    (newer,) = entries - {other}
    assert quantized._source(newer) == str(base.resolve())


def test_scoring_a_registered_adapter_reads_the_trials_copy(
    tiny_base: str, cache: Path, tmp_path: Path, reads: list[str]
) -> None:
    import torch

    trained = load_4bit(tiny_base)  # a trial: quantizes and keeps the copy
    trained.save_pretrained(tmp_path / "adapter")  # type: ignore[attr-defined]
    peft_backend.load_tokenizer(tiny_base).save_pretrained(tmp_path / "adapter")
    (entry,) = cache.iterdir()

    adapter = str(tmp_path / "adapter")
    scored, _ = peft_backend.load_for_inference(tiny_base, adapter, load_in_4bit=True)
    assert reads == [tiny_base, str(entry)]
    # A served model's bundled base is quantized where it lies, and leaves no copy behind.
    served, _ = peft_backend.load_for_inference(
        tiny_base, adapter, load_in_4bit=True, keep_quantized=False
    )
    assert reads == [tiny_base, str(entry), tiny_base]
    assert list(cache.iterdir()) == [entry]
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.equal(scored(input_ids=ids).logits, served(input_ids=ids).logits)


def test_inference_on_a_base_not_quantized_before_keeps_a_copy(
    tiny_base: str, cache: Path, tmp_path: Path, reads: list[str]
) -> None:
    load_4bit(tiny_base).save_pretrained(tmp_path / "adapter")  # type: ignore[attr-defined]
    peft_backend.load_tokenizer(tiny_base).save_pretrained(tmp_path / "adapter")
    import shutil

    shutil.rmtree(cache)
    peft_backend.load_for_inference(tiny_base, str(tmp_path / "adapter"), load_in_4bit=True)
    peft_backend.load_for_inference(tiny_base, str(tmp_path / "adapter"), load_in_4bit=True)
    (entry,) = cache.iterdir()
    assert reads == [tiny_base, tiny_base, str(entry)]
