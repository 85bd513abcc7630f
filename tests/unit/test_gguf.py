"""GGUF export without llama.cpp: quant names, finding llama-quantize, errors that say how to fix
them, what the converter is run with, and which part of the sdist is cached (fake trees)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from ftray.errors import InputError
from ftray.export import gguf
from ftray.export.errors import ExportFailed

# Checks what the real converter is run with, then writes the GGUF it was asked for.
FAKE_CONVERTER = """\
import json, os, sys
args = sys.argv[1:]
out = args[args.index("--outfile") + 1]
kind = args[args.index("--outtype") + 1]
name = args[args.index("--model-name") + 1] if "--model-name" in args else None
with open(out, "w") as f:
    json.dump({"outtype": kind, "model": args[0], "no_local_gguf": "NO_LOCAL_GGUF" in os.environ,
               "pythonpath": os.environ["PYTHONPATH"].split(os.pathsep), "model_name": name}, f)
"""
FAILING_CONVERTER = """\
import sys
sys.stderr.write("".join(f"line {i}\\n" for i in range(100)))
sys.stderr.write("ValueError: tokenizer refused\\n")
sys.exit(3)
"""
# Appends its arguments to calls.log next to it and copies input to output.
FAKE_QUANTIZE = f"""\
#!{sys.executable}
import pathlib, shutil, sys
with open(pathlib.Path(sys.argv[0]).parent / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
shutil.copyfile(sys.argv[1], sys.argv[2])
"""


def _tree(root: Path, converter: str = FAKE_CONVERTER) -> Path:
    (root / "gguf-py" / "gguf").mkdir(parents=True)
    (root / "convert_hf_to_gguf.py").write_text(converter)
    return root


def _model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    return root


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def no_quantizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FTRAY_LLAMA_QUANTIZE unset and a PATH without llama-quantize."""
    monkeypatch.delenv("FTRAY_LLAMA_QUANTIZE", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_unknown_quant_is_an_input_error_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        gguf.convert(_model(tmp_path / "m"), tmp_path / "out.gguf", "q4_k_xl")
    message = str(caught.value)
    assert message.startswith("--quant: ")
    for name in (*gguf.QUANTS_WITHOUT_COMPILER, *gguf.QUANTS_WITH_QUANTIZER):
        assert name in message


def test_quant_lists_are_disjoint_and_lower_case() -> None:
    assert not set(gguf.QUANTS_WITHOUT_COMPILER) & set(gguf.QUANTS_WITH_QUANTIZER)
    names = (*gguf.QUANTS_WITHOUT_COMPILER, *gguf.QUANTS_WITH_QUANTIZER)
    assert all(name == name.lower() for name in names)
    assert {"f16", "q8_0"} <= set(gguf.QUANTS_WITHOUT_COMPILER)
    assert {"q4_k_m", "q5_k_m", "q6_k", "q4_0"} <= set(gguf.QUANTS_WITH_QUANTIZER)


def test_folder_without_config_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        gguf.convert(tmp_path / "m", tmp_path / "out.gguf", "f16")


def test_llama_cpp_dir_without_the_converter_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "not-llama").mkdir()
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(tmp_path / "not-llama"))
    with pytest.raises(ExportFailed, match="FTRAY_LLAMA_CPP_DIR=.*has no convert_hf_to_gguf.py"):
        gguf.converter_dir()
    with pytest.raises(ExportFailed, match="FTRAY_LLAMA_CPP_DIR"):
        gguf.convert(_model(tmp_path / "m"), tmp_path / "out.gguf", "f16")


def test_k_quant_without_llama_quantize_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_quantizer: None
) -> None:
    tree = _tree(tmp_path / "llama.cpp")
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(tree))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(ExportFailed) as caught:
        gguf.convert(_model(tmp_path / "m"), out, "Q4_K_M")
    message = str(caught.value)
    assert "FTRAY_LLAMA_QUANTIZE" in message
    assert f"cmake -S {tree} -B {tree / 'build'}" in message
    assert "--target llama-quantize" in message
    assert not out.exists()


def test_llama_quantize_setting_that_is_not_a_file_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(_tree(tmp_path / "llama.cpp")))
    monkeypatch.setenv("FTRAY_LLAMA_QUANTIZE", str(tmp_path / "nope"))
    with pytest.raises(ExportFailed, match="FTRAY_LLAMA_QUANTIZE=.*not an executable"):
        gguf.convert(_model(tmp_path / "m"), tmp_path / "out.gguf", "q6_k")


def test_converter_runs_with_its_own_gguf_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = _tree(tmp_path / "llama.cpp")
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(tree))
    monkeypatch.setenv("NO_LOCAL_GGUF", "1")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    model = _model(tmp_path / "m")
    out = tmp_path / "out" / "model-q8_0.gguf"
    assert gguf.convert(model, out, "q8_0") == out
    written = json.loads(out.read_text())
    assert written["outtype"] == "q8_0"
    assert written["model"] == str(model)
    assert written["no_local_gguf"] is False
    assert written["pythonpath"][0] == str(tree / "gguf-py")
    assert written["pythonpath"][-1] == "/somewhere/else"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model-q8_0.gguf"]


def test_the_gguf_is_named_as_asked_else_by_the_converter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`general.name` is the converter's `--model-name`; without it the converter guesses one
    from the folder's name (an export's folder is `merged`, so "Merged")."""
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(_tree(tmp_path / "llama.cpp")))
    model = _model(tmp_path / "merged")
    named = gguf.convert(model, tmp_path / "named.gguf", "f16", name="chat-tiny-v3")
    assert json.loads(named.read_text())["model_name"] == "chat-tiny-v3"
    unnamed = gguf.convert(model, tmp_path / "unnamed.gguf", "f16")
    assert json.loads(unnamed.read_text())["model_name"] is None


def test_k_quant_converts_to_f16_then_runs_llama_quantize(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(_tree(tmp_path / "llama.cpp")))
    quantize = _executable(tmp_path / "bin" / "llama-quantize", FAKE_QUANTIZE)
    monkeypatch.setenv("FTRAY_LLAMA_QUANTIZE", str(quantize))
    out = tmp_path / "out" / "model.gguf"
    gguf.convert(_model(tmp_path / "m"), out, "q4_k_m", name="chat-tiny-v3")
    assert json.loads(out.read_text())["outtype"] == "f16"
    assert json.loads(out.read_text())["model_name"] == "chat-tiny-v3"
    source, target, kind = (tmp_path / "bin" / "calls.log").read_text().split()
    assert (Path(source).name, kind) == ("model-f16.gguf", "Q4_K_M")
    assert Path(target).name == "model.gguf" and Path(target) != out
    # The f16 intermediate and the temporary folder are gone.
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]


def test_llama_quantize_built_in_the_tree_is_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_quantizer: None
) -> None:
    tree = _tree(tmp_path / "llama.cpp")
    _executable(tree / "build" / "bin" / "llama-quantize", FAKE_QUANTIZE)
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(tree))
    gguf.convert(_model(tmp_path / "m"), tmp_path / "model.gguf", "q5_k_m")
    assert "Q5_K_M" in (tree / "build" / "bin" / "calls.log").read_text()


def test_converter_failure_quotes_the_end_of_its_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = _tree(tmp_path / "llama.cpp", FAILING_CONVERTER)
    monkeypatch.setenv("FTRAY_LLAMA_CPP_DIR", str(tree))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(ExportFailed) as caught:
        gguf.convert(_model(tmp_path / "m"), out, "f16")
    message = str(caught.value)
    assert "convert_hf_to_gguf.py failed (exit code 3)" in message
    assert "ValueError: tokenizer refused" in message
    assert "line 99" in message and "line 10\n" not in message
    assert list(out.parent.iterdir()) == []


def test_cache_is_under_ftray_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path / "cache"))
    assert gguf.cache_dir() == tmp_path / "cache" / "llama.cpp" / gguf.LLAMA_CPP_PYTHON_VERSION


def test_cached_tree_is_used_without_fetching(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FTRAY_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path / "cache"))
    tree = _tree(gguf.cache_dir())
    monkeypatch.setattr(gguf, "_fetch", lambda target: pytest.fail("fetched again"))
    assert gguf.converter_dir() == tree


def test_failed_download_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FTRAY_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("FTRAY_CACHE_DIR", str(tmp_path / "cache"))
    failing_python = _executable(tmp_path / "python", "#!/bin/sh\necho 'no network' >&2\nexit 1\n")
    monkeypatch.setattr(sys, "executable", str(failing_python))
    with pytest.raises(ExportFailed) as caught:
        gguf.converter_dir()
    message = str(caught.value)
    assert "no network" in message
    assert "FTRAY_LLAMA_CPP_DIR" in message
    assert f"llama-cpp-python=={gguf.LLAMA_CPP_PYTHON_VERSION} --no-deps --no-binary :all:" in (
        message
    )
    # Nothing half-made is left in the cache.
    assert list((tmp_path / "cache" / "llama.cpp").iterdir()) == []


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_the_llama_cpp_tree_minus_tests_docs_and_models_is_kept(tmp_path: Path) -> None:
    top = f"llama_cpp_python-{gguf.LLAMA_CPP_PYTHON_VERSION}"
    vendor = f"{top}/vendor/llama.cpp"
    sdist = _sdist(
        tmp_path / "sdist.tar.gz",
        {
            f"{top}/pyproject.toml": "",
            f"{top}/llama_cpp/__init__.py": "",
            f"{vendor}/convert_hf_to_gguf.py": "",
            f"{vendor}/conversion/__init__.py": "",
            f"{vendor}/gguf-py/gguf/__init__.py": "",
            f"{vendor}/CMakeLists.txt": "",
            f"{vendor}/tools/quantize/quantize.cpp": "",
            f"{vendor}/scripts/build.sh": "",
            f"{vendor}/models/ggml-vocab-llama.gguf": "",
            f"{vendor}/docs/build.md": "",
            f"{vendor}/tests/test-tokenizer.cpp": "",
            f"{vendor}/.git": "gitdir: ../../.git/modules/vendor/llama.cpp",
            f"{vendor}/../../../escape.txt": "",
        },
    )
    staging = tmp_path / "staging"
    gguf._extract_tree(sdist, staging)
    kept = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert kept == [
        "CMakeLists.txt",
        "conversion/__init__.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
        "scripts/build.sh",
        "tools/quantize/quantize.cpp",
    ]
    assert os.access(staging / "scripts" / "build.sh", os.X_OK)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    ("registered", "version", "name"),
    [("chat-tiny", "3", "chat-tiny-v3"), (None, None, "run-0123456789ab")],
)
def test_an_export_names_the_gguf_after_the_model(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    registered: str | None,
    version: str | None,
    name: str,
) -> None:
    """The GGUF's `general.name` is the registered name and version (the run without one),
    not the converter's guess from the merged folder's name."""
    from types import SimpleNamespace

    from ftray.export import formats, run

    converted: dict[str, object] = {}

    def fake_convert(model_dir: Path, out_file: Path, quant: str, name: str | None = None) -> Path:
        converted.update(folder=model_dir.name, file=out_file.name, quant=quant, name=name)
        return out_file

    monkeypatch.setattr(formats, "write_merged", lambda source, out, dtype: {"dtype": "float32"})
    monkeypatch.setattr(gguf, "convert", fake_convert)
    source = SimpleNamespace(
        registered_name=registered,
        registered_version=version,
        run_id="0123456789abcdef",
        lineage={"base_model": "tiny"},
    )
    request = run.ExportRequest("models:/chat-tiny/3", "gguf", tmp_path / "out")
    details = run._write(request, source, tmp_path / "staging", tmp_path / "work")
    assert converted == {
        "folder": "merged",
        "file": f"{name}-f16.gguf",
        "quant": "f16",
        "name": name,
    }
    assert details["gguf"] == f"{name}-f16.gguf"
