"""`push_to_hub` against a fake Hub: files arrive intact, the token goes only where it must."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftray.errors import InputError
from ftray.export.errors import ExportFailed
from ftray.export.hub import push_to_hub
from tests.fake_hub import FakeHub, fake_hub

TOKEN = "hf_fake_token_123"
REPO = "someone/tiny-adapter"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with fake_hub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every ftray and huggingface_hub record, debug included, whatever `configure()` did."""
    loggers = [logging.getLogger(name) for name in ("ftray", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


@pytest.fixture
def export(tmp_path: Path) -> dict[str, bytes]:
    """A small export folder: text, a ~100 KB binary `.safetensors`, a nested file, a README."""
    files = {
        "adapter_config.json": b'{"r": 8, "lora_alpha": 16}\n',
        "adapter_model.safetensors": bytes(range(256)) * 400,
        "README.md": b"---\nlibrary_name: peft\n---\n# tiny adapter\n",
        "tokenizer/special_tokens_map.json": b'{"eos_token": "</s>"}\n',
    }
    for name, data in files.items():
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes(data)
    return files


def test_push_uploads_every_file_intact(
    hub: FakeHub,
    export: dict[str, bytes],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
) -> None:
    url = push_to_hub(tmp_path / "out", REPO, commit_message="tiny adapter")

    assert hub.files[REPO] == export
    assert hub.private[REPO] is True
    assert [c["summary"] for c in hub.commits] == ["tiny adapter"]
    assert url == f"{hub.url}/{REPO}/commit/{hub.commits[0]['oid']}"
    assert hub.unexpected == []
    assert hub.authorizations and set(hub.authorizations) == {f"Bearer {TOKEN}"}
    assert f"pushing 4 files to {REPO} at {hub.url}" in logs.messages

    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert all(TOKEN not in record.getMessage() for record in logs.records)
    assert all(TOKEN.encode() not in data for data in export.values())


def test_push_works_under_hf_hub_offline_and_keeps_it_set(
    hub: FakeHub, export: dict[str, bytes], tmp_path: Path
) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # set by tests/conftest.py before huggingface_hub loads
    push_to_hub(tmp_path / "out", REPO)
    assert hub.files[REPO] == export
    assert constants.HF_HUB_OFFLINE


def test_pushing_again_to_an_existing_repo_adds_a_commit(
    hub: FakeHub, export: dict[str, bytes], tmp_path: Path
) -> None:
    push_to_hub(tmp_path / "out", REPO)
    (tmp_path / "out" / "extra.txt").write_bytes(b"second\n")
    push_to_hub(tmp_path / "out", REPO, commit_message="second")
    assert hub.files[REPO] == {**export, "extra.txt": b"second\n"}
    assert [c["summary"] for c in hub.commits][-1] == "second"


def test_missing_token_is_an_input_error(
    hub: FakeHub, export: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(InputError, match="HF_TOKEN.*write access"):
        push_to_hub(tmp_path / "out", REPO)
    assert hub.requests == []


def test_missing_folder_is_an_input_error(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        push_to_hub(tmp_path / "nowhere", REPO)
    assert hub.requests == []


def test_empty_folder_is_an_input_error(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "out" / ".git").mkdir(parents=True)
    (tmp_path / "out" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    with pytest.raises(InputError, match="no files to push"):
        push_to_hub(tmp_path / "out", REPO)
    assert hub.requests == []


@pytest.mark.parametrize("endpoint", ["commit", "create", "preupload"])
def test_hub_refusal_is_export_failed_without_the_token(
    hub: FakeHub,
    export: dict[str, bytes],
    tmp_path: Path,
    endpoint: str,
    capfd: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
) -> None:
    hub.fail[endpoint] = 403
    with pytest.raises(ExportFailed, match="403") as failure:
        push_to_hub(tmp_path / "out", REPO)
    assert REPO in str(failure.value)
    assert TOKEN not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert REPO not in hub.files or hub.files[REPO] == {}
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert all(TOKEN not in record.getMessage() for record in logs.records)


def test_token_echoed_by_the_hub_is_scrubbed(
    hub: FakeHub, export: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A token that is also the repo name makes the Hub's error (it quotes the URL) contain it.
    monkeypatch.setenv("HF_TOKEN", "someone")
    hub.fail["commit"] = 403
    with pytest.raises(ExportFailed) as failure:
        push_to_hub(tmp_path / "out", REPO)
    assert "someone" not in str(failure.value)
    assert "***/tiny-adapter" in str(failure.value)


def test_unreachable_hub_is_export_failed(
    export: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_hub() as gone:
        url = gone.url  # a port nobody listens on once the block ends
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ExportFailed) as failure:
        push_to_hub(tmp_path / "out", REPO)
    assert TOKEN not in str(failure.value)
