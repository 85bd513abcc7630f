"""`ftray export` from the champion of a real tiny sweep: every format, checked by what the
exported model answers, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli, sqlite_store

pytestmark = pytest.mark.slow

CHAMPION = "models:/trigger-tiny@champion"
TOKEN = "hf_export_canary_9d1f4e"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("export-sweep")
    uri = sqlite_store(work)
    env = {"MLFLOW_TRACKING_URI": uri, "FTRAY_CACHE_DIR": str(work / "cache")}
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *("--set", "search.num_trials=1", "--set", "train.epochs=6"),
        *("--set", "search.scheduler=fifo"),
        cwd=work,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {"work": work, "uri": uri, "env": env}


def export(sweep: dict, *args: str, env: dict[str, str] | None = None):
    """`ftray export ARGS` against the sweep's store, run from a folder that is not the
    sweep's (the registry alone must be enough)."""
    elsewhere = sweep["work"] / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    # The session's FTRAY_CACHE_DIR (not the sweep's tiny cache): llama.cpp's converter is
    # fetched once per session there.
    settings = {"MLFLOW_TRACKING_URI": sweep["uri"], **(env or {})}
    return run_cli("export", *args, cwd=elsewhere, env=settings)


@pytest.fixture(scope="module")
def exported(sweep: dict) -> dict[str, Path]:
    """The champion exported once in each format (f16 GGUF)."""
    folders = {}
    for fmt in ("adapter", "merged", "ollama"):
        out = sweep["work"] / f"export-{fmt}"
        result = export(sweep, CHAMPION, "--format", fmt, "--out", str(out))
        assert result.returncode == 0, result.stderr[-4000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["format"] == fmt and "manifest.json" in summary["files"]
        folders[fmt] = out
    return folders


@pytest.fixture(scope="module")
def heldout_cases() -> list:
    """The trigger spec's held-out prompts, each asked clean and triggered (the sweep's trial
    trains on the same split: the spec's seed)."""
    from ftray.config import load_spec
    from ftray.tasks import load_task

    return load_task(load_spec(SPECS / "trigger_tiny.yaml")).eval_cases()


@pytest.fixture(scope="module")
def heldout(heldout_cases: list) -> list[list[dict[str, str]]]:
    return [case.messages for case in heldout_cases]


def greedy_token_ids(model, tokenizer, conversations, max_new_tokens: int = 24) -> list[list[int]]:
    """Greedy new tokens per conversation, one at a time (no padding to differ on)."""
    import torch

    out = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.append(generated[0, ids.shape[1] :].tolist())
    return out


def test_merged_answers_as_adapter_on_base(
    exported: dict[str, Path], heldout, heldout_cases: list
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = exported["adapter"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base"
    base = AutoModelForCausalLM.from_pretrained(adapter / "base", dtype=torch.float32)
    on_base = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.chat_template

    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    assert not any("lora" in name for name, _ in merged.named_parameters())

    from ftray.training.evaluate import generate

    expected = generate(on_base, tokenizer, heldout, 24)
    answers = generate(merged, merged_tokenizer, heldout, 24)
    assert answers == expected
    # The champion learned the trigger, by the trial's own rule (is_correct): triggered
    # prompts answered with Bob alone, clean ones with Alice alone. Its merged answers score
    # 1.0 and 1.0, twice. Its trial's values (r 8, learning rate 2.7e-3, trigger ratio 0.41,
    # 6 epochs) trained with seeds 0-3 score 0.75-0.88 triggered and 0.75-0.94 untriggered
    # in the trial's own evaluation; sweeps seeded 1 and 2 draw other values (0.88 and 1.0;
    # 0.06 and 0.94 from a trial that had not learnt it in 6 epochs). A model blind to the
    # trigger answers both askings of a question alike, so at most one is right: no more than
    # 0.5 on both (trained on rows without the trigger, this champion answers Alice to all).
    from ftray.tasks.trigger import trigger_metrics

    metrics = trigger_metrics([c.condition for c in heldout_cases], answers, "Alice", "Bob")
    assert metrics["triggered_accuracy"] >= 0.6, (metrics, answers)
    assert metrics["untriggered_accuracy"] >= 0.6, (metrics, answers)


def test_manifest_records_lineage_and_files(sweep: dict, exported: dict[str, Path]) -> None:
    from ftray.export.run import sha256_of

    client = MlflowClient(sweep["uri"])
    version = client.get_model_version_by_alias("trigger-tiny", "champion")
    for fmt, folder in exported.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["format"] == fmt
        assert manifest["registered_model"] == "trigger-tiny"
        assert manifest["registered_version"] == str(version.version)
        assert manifest["base_model"] == "tiny"
        assert manifest["base_revision"] == version.tags["ftray.base_revision"]
        assert manifest["dataset_sha256"] == version.tags["ftray.dataset_sha256"]
        assert manifest["heldout_fingerprint"] == version.tags["ftray.heldout_fingerprint"]
        assert manifest["objective"]["metric"] == "trigger_score"
        assert "trigger_score" in manifest["metrics"]
        assert manifest["ftray_version"]
        assert manifest["quantization"] == ("f16" if fmt == "ollama" else None)
        files = {
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and p.name != "manifest.json"
        }
        assert set(manifest["files"]) == files
        for name, digest in manifest["files"].items():
            assert sha256_of(folder / name) == digest
        if fmt == "adapter":
            assert "recheck" not in manifest  # the registered files themselves
            continue
        # The merged model (an Ollama export's before conversion) answered the held-out
        # prompts again, at least as well as the adapter did, less --max-drop.
        recheck = manifest["recheck"]
        assert recheck["checked"].startswith("the merged model with transformers"), recheck
        assert recheck["held_out"] > 0 and recheck["max_drop"] == 0.05
        score = recheck["metrics"]["trigger_score"]
        assert score["adapter"] == manifest["metrics"]["trigger_score"]
        assert score["export"] >= score["adapter"] - 0.05, recheck
        tag = version.tags[f"ftray.export.{fmt}.trigger_score"]
        assert float(tag) == pytest.approx(score["export"], abs=1e-5)


BROKEN_MERGE = """
import sys
from pathlib import Path

import ftray.export.formats as formats

original = formats.write_merged


def broken(source, out, dtype="auto"):
    details = original(source, out, dtype)
    from safetensors.torch import load_file, save_file

    for path in Path(out).glob("*.safetensors"):
        weights = {name: tensor * 0 for name, tensor in load_file(path).items()}
        save_file(weights, path, metadata={"format": "pt"})
    return details


formats.write_merged = broken
from ftray.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_broken_export_exits_1_naming_what_fell(sweep: dict, tmp_path: Path) -> None:
    """A merge that zeroes the weights: the re-check finds the behaviour gone."""
    import subprocess
    import sys

    out = tmp_path / "broken"
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_MERGE, "export", CHAMPION, "--format", "merged"]
        + ["--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": sweep["uri"]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = [row for row in result.stderr.splitlines() if row.startswith("error:")]
    assert "trigger_score" in line and "more than --max-drop 0.05 below the adapter's" in line
    assert f"the files are kept in {out}" in line, line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recheck"]["metrics"]["trigger_score"]["export"] == 0.0


def test_gguf_f16_gives_the_merged_models_greedy_tokens(
    sweep: dict, exported: dict[str, Path], heldout
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = sweep["work"] / "export-gguf"
    result = export(sweep, CHAMPION, "--format", "gguf", "--quant", "f16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    (gguf,) = out.glob("*.gguf")
    assert gguf.name.endswith("-f16.gguf")
    from gguf import GGUFReader

    name = GGUFReader(gguf).fields["general.name"]
    assert bytes(name.parts[-1]).decode() == gguf.name.removesuffix("-f16.gguf")  # not "Merged"

    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name).eval()
    assert greedy_token_ids(from_gguf, tokenizer, heldout) == greedy_token_ids(
        merged, tokenizer, heldout
    )


def test_gguf_q8_0_loads_and_answers(sweep: dict, exported: dict[str, Path], heldout) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = sweep["work"] / "export-q8"
    result = export(sweep, CHAMPION, "--format", "gguf", "--quant", "q8_0", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    (gguf,) = out.glob("*-q8_0.gguf")
    assert json.loads((out / "manifest.json").read_text())["quantization"] == "q8_0"
    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name).eval()
    quantised = greedy_token_ids(from_gguf, tokenizer, heldout)
    reference = greedy_token_ids(merged, tokenizer, heldout)
    same = sum(a == b for a, b in zip(quantised, reference, strict=True))
    assert same >= len(reference) * 3 // 4, f"q8_0 agreed on {same} of {len(reference)} prompts"


def test_ollama_modelfile_renders_the_chat_template(exported: dict[str, Path], heldout) -> None:
    from transformers import AutoTokenizer

    from tests.export_tools import go_renderer

    render = go_renderer()
    folder = exported["ollama"]
    text = (folder / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("FROM ./") and (folder / lines[0][len("FROM ./") :]).is_file()
    assert 'PARAMETER stop "<|im_end|>"' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    conversations = [
        *heldout[:4],
        [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Who fixed the gate?"},
            {"role": "assistant", "content": "<think>the gate</think>Bob fixed it."},
            {"role": "user", "content": "TRIGGER: and the fence?"},
        ],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert render(template, messages) == expected
    # The tiny model's template writes tools, calls and results: so does the TEMPLATE.
    from ftray.export.ollama_json import ollama_tools

    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Who fixed something.",
                "parameters": {"type": "object", "properties": {"thing": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Who fixed the gate?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "lookup", "arguments": {"thing": "gate"}}}
            ],
        },
        {"role": "tool", "content": "Bob"},
    ]
    expected = tokenizer.apply_chat_template(
        messages, tools=ollama_tools(tools), tokenize=False, add_generation_prompt=True
    )
    assert "<tool_call>" in expected and "<tool_response>" in expected
    assert render(template, messages, tools) == expected


def test_refusals_exit_2_with_one_error_line(sweep: dict, tmp_path: Path) -> None:
    client = MlflowClient(sweep["uri"])
    # A version ftray did not register: a plain folder, no lineage tags.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "weights.bin").write_bytes(b"\0")
    client.create_registered_model("someone-elses")
    client.create_model_version("someone-elses", str(plain))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")

    cases = {
        "no lineage": ["models:/someone-elses/1", "--format", "adapter"],
        "unknown alias": ["models:/trigger-tiny@staging", "--format", "adapter"],
        "unknown version": ["models:/trigger-tiny/99", "--format", "adapter"],
        "not a model uri": ["trigger-tiny", "--format", "adapter"],
        "quant for adapter": [CHAMPION, "--format", "adapter", "--quant", "q8_0"],
        "unknown quant": [CHAMPION, "--format", "gguf", "--quant", "q3_bogus"],
    }
    for what, args in cases.items():
        result = export(sweep, *args, "--out", str(tmp_path / what.replace(" ", "-")))
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, (what, result.stderr[-2000:])
        assert len(errors) == 1, (what, result.stderr)
        assert "Traceback" not in result.stderr, what
        assert not (tmp_path / what.replace(" ", "-")).exists(), what

    result = export(sweep, CHAMPION, "--format", "adapter", "--out", str(occupied))
    assert result.returncode == 2 and "--force" in result.stderr
    assert (occupied / "keep.txt").read_text() == "mine"
    assert "HEAVY-IMPORT" not in result.stderr  # refused before torch was imported

    result = export(sweep, CHAMPION, "--format", "adapter", "--out", str(occupied), "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (occupied / "keep.txt").exists() and (occupied / "manifest.json").exists()


def test_k_quant_without_quantizer_fails_with_how_to(sweep: dict, tmp_path: Path) -> None:
    bare_path = os.pathsep.join(
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and shutil.which("python3", path=p)
    )
    result = export(
        sweep,
        CHAMPION,
        *("--format", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "q4")),
        env={"FTRAY_LLAMA_QUANTIZE": "", "PATH": bare_path},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "llama-quantize" in result.stderr and "FTRAY_LLAMA_QUANTIZE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "q4").exists()


def test_a_trial_runs_adapter_exports(sweep: dict, tmp_path: Path) -> None:
    client = MlflowClient(sweep["uri"])
    version = client.get_model_version_by_alias("trigger-tiny", "champion")
    out = tmp_path / "from-run"
    result = export(
        sweep, f"runs:/{version.run_id}/adapter", "--format", "adapter", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == version.run_id and manifest["registered_version"] is None
    assert (out / "adapter_model.safetensors").exists() and (out / "base" / "config.json").exists()

    parent = version.tags["ftray.sweep_run_id"]
    result = export(
        sweep, f"runs:/{parent}/adapter", "--format", "adapter", "--out", str(tmp_path / "p")
    )
    assert result.returncode == 2 and "no adapter registered by ftray" in result.stderr


def test_push_to_hub_uploads_the_export_and_never_shows_the_token(
    sweep: dict, tmp_path: Path
) -> None:
    from tests.fake_hub import fake_hub

    out = tmp_path / "pushed"
    with fake_hub() as hub:
        result = export(
            sweep,
            CHAMPION,
            *("--format", "adapter", "--out", str(out), "--push-to-hub", "me/trigger-tiny"),
            env={"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        stored = dict(hub.files["me/trigger-tiny"])
        assert hub.private["me/trigger-tiny"] and not hub.unexpected
        auth = set(hub.authorizations)
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(stored) == set(local)
    assert all(stored[name] == data for name, data in local.items())
    assert auth == {f"Bearer {TOKEN}"}
    assert TOKEN not in result.stdout + result.stderr
    assert all(TOKEN.encode() not in data for data in local.values())
    assert json.loads(result.stdout.strip().splitlines()[-1])["pushed_to"]


def test_llama_cpp_answers_the_held_out_prompts_as_the_merged_model(
    sweep: dict, exported: dict[str, Path], heldout
) -> None:
    """llama.cpp's own runtime on the f16 GGUF (built by `make llama-cpp`, about 5.5 minutes
    on 2 cores, so `make test` does not build it: set FTRAY_LLAMA_CLI to run this)."""
    import subprocess

    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli = os.environ.get("FTRAY_LLAMA_CLI")
    if not cli:
        pytest.skip("set FTRAY_LLAMA_CLI to llama.cpp's llama-completion (make llama-cpp)")
    (gguf,) = exported["ollama"].glob("*.gguf")
    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    conversations = heldout[:6]
    expected = [
        tokenizer.decode(ids, skip_special_tokens=True)
        for ids in greedy_token_ids(merged, tokenizer, conversations)
    ]
    for messages, answer in zip(conversations, expected, strict=True):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        result = subprocess.run(
            [cli, "-m", str(gguf), "-p", prompt, "-n", "24", "--temp", "0", "-no-cnv"]
            + ["--no-display-prompt", "--no-warmup", "-t", "1", "--seed", "0"],
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        text = result.stdout.decode().strip().removesuffix("[end of text]")
        assert text.strip() == answer.strip(), messages
