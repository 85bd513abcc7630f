"""Memory of a 4-bit base: peak resident memory of loading a Llama base of about 85M
parameters (random weights, built offline like `tiny`) and training one LoRA step on it,
with `load_in_4bit: true` (NF4 through bitsandbytes, ftray's peft backend) against bf16.

Each load runs in a fresh process, trained the way ftray's trainer trains (the gradient
checkpointing its TRL configuration turns on). The figure is the growth of the process's
peak resident memory over its resident memory once every library is imported (the peak is
reset there), so the ~0.5 GB of Python, torch and transformers every process pays does not
hide the weights. The 4-bit base is loaded twice in each repeat, with ftray's cache of
quantized bases (`ftray.models.quantized`) empty and then warm: the first trial on a machine
quantizes the base and keeps the result, the others read it.

    .venv/bin/python bench/memory.py

Prints `memory: <4-bit peak growth, cache warm / bf16 peak growth>` last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 512,
}


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmHWM: peak resident; RssAnon: resident now,
    not file-backed), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset this process's peak resident memory to its resident memory now (Linux 4.0+);
    returns that, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def peak_kib() -> int:
    """This process's peak resident memory since the last `reset_peak`, in KiB."""
    return status_kib("VmHWM")


def build_base(folder: Path) -> int:
    """A random Llama with the tiny model's tokenizer, saved in bf16; its parameter count."""
    import torch
    import transformers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()

    from ftray.config import load_spec
    from ftray.models.tiny import build_tiny_model
    from ftray.tasks import load_task

    spec = load_spec(ROOT / "search_spaces" / "trigger_tiny.yaml")
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(load_task(spec).corpus()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **ARCHITECTURE,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def one_mode(base: str, mode: str) -> dict[str, float]:
    """In this process: load `base` in `mode` (4bit or bf16) with a LoRA, train one step."""
    # Every library either mode uses is imported before the baseline is read.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import trl  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import ftray.models.peft_backend as peft_backend
    import ftray.models.quantized  # noqa: F401
    from ftray.config import load_spec
    from ftray.config.spec import LoraSpec, ModelSpec
    from ftray.training.trial import sft_config

    spec = load_spec(ROOT / "search_spaces" / "trigger_tiny.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        args = sft_config(spec, Path(scratch))
    after_imports = reset_peak()
    # bf16 as ftray computes on a GPU (on a CPU it computes in float32, so 4-bit loading
    # would read the weights as float32 before quantizing them).
    peft_backend.compute_dtype = lambda: torch.bfloat16
    model_spec = ModelSpec(base=base, load_in_4bit=mode == "4bit", max_seq_length=128)
    lora = LoraSpec(r=8, alpha=16, dropout=0.0)
    model, tokenizer = peft_backend.PeftBackend().load(base, model_spec, lora, seed=0)
    loaded = peak_kib()
    anon_loaded = status_kib("RssAnon")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if args.gradient_checkpointing:  # as transformers' Trainer and TRL's SFTTrainer do
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs
        )
        model.enable_input_require_grads()
    batch = tokenizer(["Who wrote the letter? Alice wrote it."] * 8, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    trained = peak_kib()
    return {
        "load_mib": (loaded - after_imports) / 1024,
        "train_mib": (trained - after_imports) / 1024,
        "after_imports_mib": after_imports / 1024,
        "anon_after_load_mib": anon_loaded / 1024,
        "weights_mib": weight_bytes / 2**20,
        "loss": float(loss.detach()),
        "checkpointing": float(bool(args.gradient_checkpointing)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("BASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_mode(*args.child)))
        return

    folder = Path(tempfile.mkdtemp(prefix="ftray-bench-memory-"))
    runs = {"4bit, cache empty": "4bit", "4bit, cache warm": "4bit", "bf16": "bf16"}
    try:
        params = build_base(folder / "base")
        results: dict[str, list[dict[str, float]]] = {run: [] for run in runs}
        for repeat in range(args.repeats):
            cache = folder / f"cache-{repeat}"  # empty for the first 4-bit load of a repeat
            for run, mode in runs.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(folder / "base"), mode],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "FTRAY_CACHE_DIR": str(cache)},
                )
                results[run].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    losses = {run: {r["loss"] for r in results[run]} for run in runs}
    if losses["4bit, cache empty"] != losses["4bit, cache warm"]:
        raise SystemExit(f"the cached 4-bit base trained differently: losses {losses}")

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(
        f"base: Llama, {params / 1e6:.0f}M parameters, bf16 on disk; LoRA r=8 on the default "
        f"target modules; gradient checkpointing "
        f"{'on' if median('bf16', 'checkpointing') else 'off'} as ftray trains; one step's loss "
        f"{median('4bit, cache empty', 'loss'):.4f} with either 4-bit load"
    )
    for run in results:
        print(
            f"{run}: peak growth {median(run, 'train_mib'):.0f} MiB after load + one step "
            f"({median(run, 'load_mib'):.0f} MiB after load; resident after imports "
            f"{median(run, 'after_imports_mib'):.0f} MiB); parameters hold "
            f"{median(run, 'weights_mib'):.0f} MiB; median of {args.repeats}"
        )
    bf16 = median("bf16", "train_mib")
    print(
        f"first trial on a machine (cache empty): {median('4bit, cache empty', 'train_mib') / bf16:.2f}"
    )
    print(f"memory: {median('4bit, cache warm', 'train_mib') / bf16:.2f}")


if __name__ == "__main__":
    main()
