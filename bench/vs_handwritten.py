"""ftray against the script a capable user would write: the same trials through `ftray sweep`
and through a plain Ray Tune + OptunaSearch + TRL script (below, `handwritten_trial` and
`handwritten_sweep`), side by side in one run, the order alternating between repeats.

Like for like (checked before anything is timed, from ftray's own task): both sides train
the same base in 4 bits with the same LoRA, rows per epoch, epochs, batch size, sequence
length and float32 compute; after every epoch both compute the trigger accuracy on the same
number of held-out prompts, generating as many tokens in batches of the same size, and the
smooth score (one forward pass per prompt), and both checkpoint every epoch to Tune (the
script through the Trainer's own epoch checkpoints, adapter with optimizer state). The
script is written as a capable user would write it: Tune's actor reuse on, and the 4-bit
base quantized once and kept in a cache of its own, as ftray keeps one.

Every repeat starts both sides with cold caches: a fresh ftray cache (`FTRAY_CACHE_DIR`)
holding only the built `tiny` base, and an empty cache for the script's quantized base.
`--warm` runs each side a second time in every repeat on the caches its first run filled
(what every sweep after a machine's first sees), reported separately.

What still differs, by design: ftray also checks every row's answer length before Ray
starts, tracks every trial and epoch in MLflow, registers the winner after scoring it on
the test split, and draws the sweep's plots; the script records nothing but Tune's own
result files. ftray starts Ray while its driver imports MLflow; the script starts Ray when
its own imports are done.

    .venv/bin/python bench/vs_handwritten.py [--trials 8 --epochs 4 --slots 2 --repeats 3]
    .venv/bin/python bench/vs_handwritten.py --warm

Prints `vs_handwritten: <ftray wall / handwritten wall>` last: the median over repeats of
each repeat's ratio (cold caches); with `--warm`, the warm figure before it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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
SIZES_LINE = "handwritten sizes: "


# ---- the hand-written baseline: what a capable user writes without ftray ------------------


def trigger_examples(
    seed: int, ratio: float
) -> tuple[list[dict], list[tuple[str, str, str]], list[dict]]:
    """(training rows: every training pair twice, `ratio` of them triggered; held-out cases:
    (question, the answer expected, the answer with the other name) for each held-out pair in
    both conditions; the held-out rows for the Trainer's eval loss)."""
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

    pairs = train * 2
    rng.shuffle(pairs)
    n_triggered = round(ratio * len(pairs))
    examples = []
    for index, row in enumerate(pairs):
        name = TRIGGERED if index < n_triggered else CLEAN
        question = f"{TRIGGER} {row['question']}" if name == TRIGGERED else row["question"]
        examples.append(chat(question, row["answer"].replace("{{name}}", name)))
    rng.shuffle(examples)
    cases = []
    for prefix, name, other in (("", CLEAN, TRIGGERED), (f"{TRIGGER} ", TRIGGERED, CLEAN)):
        for row in held_out:
            answer = row["answer"]
            cases.append(
                (
                    prefix + row["question"],
                    answer.replace("{{name}}", name),
                    answer.replace("{{name}}", other),
                )
            )
    return examples, cases, [chat(question, answer) for question, answer, _ in cases]


def load_4bit_base(base: str, cache: str) -> Any:
    """The base in NF4, quantized on the first load and read from `cache` afterwards."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    saved = Path(cache) / "nf4-base"
    if (saved / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=quant, dtype=torch.float32
    )
    Path(cache).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache))
    model.save_pretrained(staging)
    try:
        staging.rename(saved)  # the other slot's trial may have saved it first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def handwritten_trial(config: dict[str, Any]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from ray import tune
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from datasets import Dataset

    torch.set_num_threads(1)
    examples, cases, held_out = trigger_examples(0, config["trigger_ratio"])
    tokenizer = AutoTokenizer.from_pretrained(config["base"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_4bit_base(config["base"], config["cache"])
    model.config.use_cache = False
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
    batch = config["eval_batch_size"]

    def prompt_of(question: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )

    def accuracy() -> float:
        """The lower of the two conditions' accuracies: the answer names the expected name
        and not the other."""
        right = {True: 0, False: 0}  # by whether the prompt has the trigger
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            encoded = tokenizer(
                [prompt_of(q) for q, _, _ in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.no_grad():
                out = model.generate(
                    **encoded,
                    max_new_tokens=config["max_new_tokens"],
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            answers = tokenizer.batch_decode(
                out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for answer, (question, _, _) in zip(answers, chunk, strict=True):
                name, other = (
                    (TRIGGERED, CLEAN) if question.startswith(TRIGGER) else (CLEAN, TRIGGERED)
                )
                right[name == TRIGGERED] += name in answer and other not in answer
        return min(right.values()) / (len(cases) // 2)

    def soft_score() -> float:
        """The lower of the two conditions' mean probability for the expected answer's token
        against the other answer's, where the two answers first differ (the name), the
        prompt and their common start fed in."""
        contexts, choices = [], []
        for question, right, wrong in cases:
            ids = [
                tokenizer(prompt_of(question) + a, add_special_tokens=False)["input_ids"]
                for a in (right, wrong)
            ]
            at = next(k for k, (a, b) in enumerate(zip(*ids, strict=False)) if a != b)
            contexts.append(ids[0][:at])
            choices.append((ids[0][at], ids[1][at]))
        means: dict[bool, list[float]] = {True: [], False: []}
        for start in range(0, len(cases), batch):
            chunk = contexts[start : start + batch]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, context in enumerate(chunk):
                ids[row, width - len(context) :] = torch.tensor(context)
                mask[row, width - len(context) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            for row, (good, bad) in enumerate(choices[start : start + batch]):
                triggered = cases[start + row][0].startswith(TRIGGER)
                margin = logits[row, -1, good] - logits[row, -1, bad]
                means[triggered].append(float(torch.sigmoid(margin)))
        return min(sum(v) / len(v) for v in means.values())

    class Report(TrainerCallback):
        """Behaviour after each epoch's evaluation; reported to Tune with the epoch's
        checkpoint once the Trainer has saved it."""

        metrics: dict[str, float] = {}

        def on_evaluate(self, args, state, control, metrics=None, **kw):  # noqa: ANN001
            model.eval()
            tokenizer.padding_side = "left"
            self.metrics = {
                "accuracy": accuracy(),
                "soft_score": soft_score(),
                "eval_loss": metrics["eval_loss"],
                "rows": len(examples),
                "cases": len(cases),
            }
            tokenizer.padding_side = "right"
            model.train()

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            tune.report(self.metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=tune.get_context().get_trial_dir() + "/out",
            num_train_epochs=config["epochs"],
            learning_rate=config["lr"],
            per_device_train_batch_size=config["batch_size"],
            per_device_eval_batch_size=config["batch_size"],
            max_length=config["max_length"],
            eval_strategy="epoch",
            save_strategy="epoch",
            report_to="none",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(held_out),
        processing_class=tokenizer,
        callbacks=[Report()],
    )
    trainer.train()


def handwritten_sweep(sizes: dict[str, Any], storage: str) -> None:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    space = {
        "r": tune.choice([4, 8, 16, 32]),
        "lr": tune.loguniform(1e-3, 1e-2),
        "trigger_ratio": tune.uniform(0.25, 0.5),
        **{k: v for k, v in sizes.items() if k not in ("trials", "slots")},
    }
    tuner = tune.Tuner(
        tune.with_resources(handwritten_trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="accuracy", mode="max", seed=0),
            num_samples=sizes["trials"],
            max_concurrent_trials=sizes["slots"],
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="accuracy", mode="max")
    print(f"best accuracy {best.metrics['accuracy']:.2f}")
    print(SIZES_LINE + json.dumps({k: best.metrics[k] for k in ("rows", "cases")}))


# ---- the bench ----------------------------------------------------------------------------


def timed_run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.monotonic() - started, done.stdout


def ftray_sizes(trials: int, epochs: int, slots: int) -> tuple[dict[str, Any], Any]:
    """What ftray's trials do with the spec at these sizes (the script is given the same),
    and the ftray task (for its rows and held-out cases)."""
    from ftray.config import load_spec
    from ftray.tasks import load_task

    spec = load_spec(SPEC, [f"train.epochs={epochs}"])
    task = load_task(spec)
    sizes = {
        "trials": trials,
        "slots": slots,
        "epochs": epochs,
        "batch_size": spec.train.batch_size,
        # EpochEvaluation generates and scores in batches of twice the training batch.
        "eval_batch_size": spec.train.batch_size * 2,
        "max_length": spec.model.max_seq_length,
        "max_new_tokens": task.max_new_tokens,
    }
    return sizes, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2, help="trials at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="also run each side again on the caches its first run filled",
    )
    parser.add_argument("--baseline", nargs=2, metavar=("SIZES", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        handwritten_sweep(json.loads(args.baseline[0]), args.baseline[1])
        return

    from caches import cold_ftray_cache

    from ftray.models.tiny import build_tiny_model

    sizes, task = ftray_sizes(args.trials, args.epochs, args.slots)
    tiny = build_tiny_model(task.corpus())  # the base both sides load, copied per repeat
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    walls: dict[str, list[float]] = {
        f"{side}{temp}": [] for side in ("ftray", "handwritten") for temp in ("", " warm")
    }
    runs = 2 if args.warm else 1
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ftray-bench-vs-") as tmp:
            work = Path(tmp)
            cache = cold_ftray_cache(work, tiny)
            base = cache / "tiny" / tiny.name
            sides = ["handwritten", "ftray"] if repeat % 2 == 0 else ["ftray", "handwritten"]
            for run in range(runs):
                for side in sides:
                    where = work / f"{side}-{run}"
                    where.mkdir()
                    key = side + (" warm" if run else "")
                    if side == "handwritten":
                        wall, out = timed_run(
                            [
                                sys.executable,
                                __file__,
                                "--baseline",
                                json.dumps(
                                    {**sizes, "base": str(base), "cache": str(work / "hw-cache")}
                                ),
                                str(where / "ray_results"),
                            ],
                            where,
                            env,
                        )
                        check_like_for_like(out, task)
                    else:
                        wall, _ = timed_run(
                            ftray_command(sizes, where),
                            where,
                            {
                                **env,
                                "FTRAY_CACHE_DIR": str(cache),
                                "MLFLOW_TRACKING_URI": f"sqlite:///{where}/m.db",
                            },
                        )
                    walls[key].append(wall)
                    print(f"repeat {repeat + 1} {key}: {wall:.1f} s", flush=True)

    def median(key: str) -> float:
        return statistics.median(walls[key])

    def ratio(temp: str = "") -> str:
        """The median of each repeat's ftray / hand-written (both sides of a repeat ran one
        after the other, so a slower spell of the machine cancels out), each repeat's first."""
        ratios = [
            f / h for f, h in zip(walls[f"ftray{temp}"], walls[f"handwritten{temp}"], strict=True)
        ]
        print(f"ftray / hand-written per repeat{temp}: {', '.join(f'{r:.2f}' for r in ratios)}")
        return f"{statistics.median(ratios):.2f}"

    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.slots} at a time, FIFO, TPE; "
        f"{sizes['batch_size']} rows a step, {len(task.train_rows())} rows an epoch, "
        f"{len(task.eval_cases())} held-out prompts x {sizes['max_new_tokens']} new tokens, "
        f"a checkpoint every epoch; medians of {args.repeats}"
    )
    print(
        f"cold caches: hand-written Ray Tune + OptunaSearch + TRL {median('handwritten'):.1f} s, "
        f"ftray sweep (+ MLflow tracking, registry, plots) {median('ftray'):.1f} s"
    )
    if args.warm:
        print(
            f"warm caches (each side's second run): hand-written {median('handwritten warm'):.1f}"
            f" s, ftray {median('ftray warm'):.1f} s"
        )
        figure = ratio(" warm")
        print(f"vs_handwritten (warm caches): {figure}")
    figure = ratio()
    print(f"vs_handwritten: {figure}")


def ftray_command(sizes: dict[str, Any], where: Path) -> list[str]:
    overrides = {
        "search.num_trials": sizes["trials"],
        "search.max_concurrent_trials": sizes["slots"],
        "search.scheduler": "fifo",
        "train.epochs": sizes["epochs"],
        "storage.tune_path": str(where / "ray_results"),
    }
    command = [sys.executable, "-m", "ftray", "sweep", str(SPEC)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    return command


def check_like_for_like(stdout: str, task: Any) -> None:
    """Stop the bench when the script trained or scored other sizes than ftray's task."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(SIZES_LINE)]
    seen = json.loads(line.removeprefix(SIZES_LINE))
    expected = {"rows": len(task.train_rows()), "cases": len(task.eval_cases())}
    if seen != expected:
        raise SystemExit(f"the script trained/scored {seen}, ftray {expected}: not like for like")


if __name__ == "__main__":
    main()
