"""What looks secret and how it is masked (ftray/redaction.py), where ftray shows it, and
weights read as safetensors only."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.log import configure, get_logger
from ftray.redaction import (
    looks_secret,
    mask_override,
    mask_secrets,
    mask_url_passwords,
    redact,
)
from ftray.tracking.store import safe_params
from tests.conftest import SPECS


@pytest.mark.parametrize(
    "key",
    [
        "hf_token",
        "model.hf_token",
        "HF_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "db.passwd",
        "judge.api_key",
        "apikey",
        "private-key",
        "credentials",
        "RAY_AUTH_TOKEN",
    ],
)
def test_secret_looking_keys(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize(
    "key",
    [
        "task.max_new_tokens",
        "TOKENIZERS_PARALLELISM",
        "lora.r",
        "model.base",
        "author",
        "password.x",
    ],
)
def test_ordinary_keys(key: str) -> None:
    assert not looks_secret(key)


def test_masking() -> None:
    assert (
        mask_url_passwords("at postgresql://ftray:s3cr%40t@db:5432/x and http://h/y")
        == "at postgresql://ftray:***@db:5432/x and http://h/y"
    )
    assert redact({"a": {"api_key": "k", "uri": "mysql://u:p@h/d"}, "b": [1, "x"]}) == {
        "a": {"api_key": "***", "uri": "mysql://u:***@h/d"},
        "b": [1, "x"],
    }
    assert mask_override("model.hf_token=hf_abc") == "model.hf_token=***"
    assert mask_override("storage.optuna_url=postgresql://u:pw@h/d") == (
        "storage.optuna_url=postgresql://u:***@h/d"
    )
    assert mask_override("lora.r=16") == "lora.r=16"
    assert safe_params({"judge.api_key": "k", "lora.r": 8}) == {
        "judge.api_key": "***",
        "lora.r": "8",
    }


def test_log_lines_mask_secret_environment_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_unit_canary_1234")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    configure()
    get_logger().info("token hf_unit_canary_1234 at sqlite:///x and postgresql://u:pw@h/d false")
    assert capsys.readouterr().err.strip() == (
        "[ftray] token *** at sqlite:///x and postgresql://u:***@h/d false"
    )
    assert mask_secrets("no secret here") == "no secret here"


@pytest.mark.parametrize(
    "override",
    ["model.hf_token=canary_77", "tracking.password=canary_77", "model.token=[canary_77"],
)
def test_secret_looking_set_is_refused_with_the_value_masked(override: str) -> None:
    with pytest.raises(InputError) as caught:
        load_spec(SPECS / "trigger_tiny.yaml", [override])
    message = str(caught.value)
    assert "canary_77" not in message
    assert f"--set {override.split('=')[0]}=***" in message


def plant_pickle(path: Path, marker: Path) -> None:
    class Plant:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Plant(), protocol=2))


def test_pickled_weights_are_refused_unread(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    from ftray.models.peft_backend import (
        NotSafetensors,
        load_adapter,
        load_base_model,
        load_safetensors_model,
    )

    marker = tmp_path / "unpickled"
    base = tmp_path / "base"
    LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(base)
    plant_pickle(base / "pytorch_model.bin", marker)
    with pytest.raises(NotSafetensors, match="has no safetensors weights"):
        load_safetensors_model(str(base))
    with pytest.raises(NotSafetensors):
        load_base_model(str(base), None)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    plant_pickle(adapter / "adapter_model.bin", marker)
    with pytest.raises(NotSafetensors, match=r"it has adapter_model\.bin"):
        load_adapter(object(), adapter)
    assert not marker.exists()
