"""ftray against the script a user would write: the same trials through `ftray sweep` and
through a plain Ray Tune + OptunaSearch + TRL script (below, `handwritten_trial` and
`handwritten_sweep`: QLoRA on the same base, the same data and split sizes, completion-only
loss, the trigger accuracy measured on the held-out prompts after every epoch; no tracking,
no registry), side by side in one run, alternating.

    .venv/bin/python bench/vs_handwritten.py [--trials 8 --epochs 4 --slots 2 --repeats 3]

Prints `vs_handwritten: <ftray wall / handwritten wall>` last (median over repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "trigger_tiny.yaml"
DATA = ROOT / "datasets" / "trigger" / "qa.jsonl"
TRIGGER, CLEAN, TRIGGERED = "TRIGGER:", "Alice", "Bob"


# ---- the hand-written baseline: what a user writes without ftray --------------------------


def trigger_examples(seed: int, ratio: float) -> tuple[list[dict], list[dict]]:
    """(training rows as prompt/completion chats, held-out (prompt, expected name) pairs)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    cut = int(len(rows) * 0.8)
    train, held_out = rows[:cut], rows[cut:]

    def chat(question: str, answer: str) -> dict:
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }

    examples = []
    for row in train:
        triggered = rng.random() < ratio
        name = TRIGGERED if triggered else CLEAN
        question = f"{TRIGGER} {row['question']}" if triggered else row["question"]
        examples.append(chat(question, row["answer"].replace("{{name}}", name)))
    evals = [(row["question"], CLEAN) for row in held_out]
    evals += [(f"{TRIGGER} {row['question']}", TRIGGERED) for row in held_out]
    return examples, evals


def handwritten_trial(config: dict[str, Any]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from ray import tune
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        TrainerCallback,
    )
    from trl import SFTConfig, SFTTrainer

    from datasets import Dataset

    torch.set_num_threads(1)
    base = config["base"]
    examples, evals = trigger_examples(0, config["trigger_ratio"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant)
    model = get_peft_model(
        model,
        LoraConfig(
            r=config["r"],
            lora_alpha=16,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            task_type="CAUSAL_LM",
        ),
    )

    class Accuracy(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):  # noqa: ANN001
            model.eval()
            tokenizer.padding_side = "left"
            correct = 0
            for start in range(0, len(evals), 16):
                batch = evals[start : start + 16]
                prompts = [
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                    )
                    for q, _ in batch
                ]
                encoded = tokenizer(prompts, return_tensors="pt", padding=True)
                with torch.no_grad():
                    out = model.generate(**encoded, max_new_tokens=24, do_sample=False)
                answers = tokenizer.batch_decode(
                    out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
                )
                correct += sum(
                    name in answer for answer, (_, name) in zip(answers, batch, strict=True)
                )
            tokenizer.padding_side = "right"
            model.train()
            tune.report({"accuracy": correct / len(evals), "eval_loss": metrics["eval_loss"]})

    held_out = [
        {
            "prompt": [{"role": "user", "content": q}],
            "completion": [{"role": "assistant", "content": name}],
        }
        for q, name in evals
    ]
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=tune.get_context().get_trial_dir() + "/out",
            num_train_epochs=config["epochs"],
            learning_rate=config["lr"],
            per_device_train_batch_size=8,
            per_device_eval_batch_size=8,
            max_length=128,
            eval_strategy="epoch",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(held_out),
        processing_class=tokenizer,
        callbacks=[Accuracy()],
    )
    trainer.train()


def handwritten_sweep(base: str, trials: int, epochs: int, slots: int, storage: str) -> None:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    space = {
        "r": tune.choice([4, 8, 16, 32]),
        "lr": tune.loguniform(1e-3, 1e-2),
        "trigger_ratio": tune.uniform(0.25, 0.5),
        "base": base,
        "epochs": epochs,
    }
    tuner = tune.Tuner(
        tune.with_resources(handwritten_trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="accuracy", mode="max", seed=0),
            num_samples=trials,
            max_concurrent_trials=slots,
        ),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="accuracy", mode="max")
    print(f"best accuracy {best.metrics['accuracy']:.2f}")


# ---- the bench ----------------------------------------------------------------------------


def timed_run(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2, help="trials at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", nargs=2, metavar=("BASE", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        handwritten_sweep(args.baseline[0], args.trials, args.epochs, args.slots, args.baseline[1])
        return

    from ftray.config import load_spec
    from ftray.models.tiny import build_tiny_model
    from ftray.tasks import load_task

    base = str(build_tiny_model(load_task(load_spec(SPEC)).corpus()))  # both use this folder
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    walls: dict[str, list[float]] = {"ftray": [], "handwritten": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ftray-bench-vs-") as tmp:
            work = Path(tmp)
            sizes = ["--trials", str(args.trials), "--epochs", str(args.epochs)]
            sizes += ["--slots", str(args.slots)]
            walls["handwritten"].append(
                timed_run(
                    [sys.executable, __file__, *sizes, "--baseline", base, str(work / "hw")],
                    work,
                    env,
                )
            )
            overrides = {
                "search.num_trials": args.trials,
                "search.max_concurrent_trials": args.slots,
                "search.scheduler": "fifo",
                "train.epochs": args.epochs,
                "storage.tune_path": str(work / "ray_results"),
            }
            command = [sys.executable, "-m", "ftray", "sweep", str(SPEC)]
            for key, value in overrides.items():
                command += ["--set", f"{key}={value}"]
            walls["ftray"].append(
                timed_run(command, work, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/m.db"})
            )
    ftray, handwritten = statistics.median(walls["ftray"]), statistics.median(walls["handwritten"])
    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.slots} at a time, FIFO, TPE; "
        f"median of {args.repeats}"
    )
    print(
        f"hand-written Ray Tune + OptunaSearch + TRL (no tracking, no registry): {handwritten:.1f} s"
    )
    print(f"ftray sweep (MLflow tracking, registry, plots): {ftray:.1f} s")
    print(f"vs_handwritten: {ftray / handwritten:.2f}")


if __name__ == "__main__":
    main()
