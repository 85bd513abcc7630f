"""The registered version as an MLflow Model: a `pyfunc` that loads the base and the LoRA
adapter and answers conversations greedily through the training chat template, with the
tools the task trained with (a chat model answers OpenAI assistant messages).

It is logged as code (`pyfunc_entry.py`), not as a pickle: loading it runs that file, never
unpickles anything from the registry. The `tiny` base travels inside the model; a Hub base
is named by id and pinned revision and loaded from the local Hugging Face cache.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from ftray.tracking.predict_inputs import read_requests

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
MODEL_NAME = "model"
REQUIREMENTS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "mlflow")
TASK_CONFIG = "task"
"""The artifact holding `Task.serving_config()` as JSON: a file, not the model_config, which
MLflow writes as YAML with its keys sorted, and a chat template renders tools in key order."""


class AdapterModel(PythonModel):
    """Greedy answers of the base model with ftray's LoRA adapter, rendered and read as the
    task's training and evaluation do (a chat model's tools, its answers as OpenAI assistant
    messages)."""

    # MLflow wraps a PythonModel's `predict` in a check of its input against the type hint
    # of `model_input`, and warns at class creation when that hint is not a list[...] (or
    # there is none); `predict` reads its forms itself (`read_requests`), so it opts out as
    # MLflow's own chat models do. `model_input` has no hint: saving would try to make the
    # input schema of one (and warn that it cannot), and the model must have none.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from ftray.models.peft_backend import load_for_inference
        from ftray.tasks import Task, registered_tasks

        config = context.model_config
        bundled = context.artifacts.get("base")
        self.config = config
        self.task = registered_tasks().get(config.get("task", ""), Task)
        task_config = context.artifacts.get(TASK_CONFIG)
        served = json.loads(Path(task_config).read_text()) if task_config else {}
        self.tools = served.get("tools") or []
        self.model, self.tokenizer = load_for_inference(
            bundled or config["base_model"],
            context.artifacts["adapter"],
            bool(config.get("load_in_4bit", True)),
            config.get("base_revision"),
            # A bundled base is downloaded to a new folder each time: a cached copy keyed by
            # its files would never be read again.
            keep_quantized=not bundled,
        )

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:
        """One answer per conversation (see `read_requests` for the forms read), or one
        answer for one request given alone (a string or a dict); `params` may set
        `max_new_tokens`."""
        from ftray.training.evaluate import generate

        requests, single = read_requests(model_input)
        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.config["max_new_tokens"])
        responses = generate(
            self.model,
            self.tokenizer,
            [r.messages for r in requests],
            max_new_tokens,
            int(self.config.get("batch_size", 16)),
            tools=[self.tools if r.tools is None else r.tools for r in requests],
            keep_tokens=self.task.keep_tokens,
        )
        answers = [self.task.serving_answer(response) for response in responses]
        return answers[0] if single else answers


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def model_signature(max_new_tokens: int) -> Any:
    """The model's signature: its one parameter, `max_new_tokens`, and no input schema.

    MLflow recasts what `predict` is given to fit an input schema: a list of chat messages
    would become a table of roles and contents, and a schema of strings turns a request
    dict away, in `mlflow.pyfunc.load_model` and behind `mlflow models serve` alike.
    `predict` reads its forms itself and says which it takes.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    return ModelSignature(params=ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)]))


def save_adapter_model(
    path: Path,
    adapter_dir: Path,
    base_dir: Path | None,
    config: dict[str, Any],
    example: list[str],
    task_config: dict[str, Any] | None = None,
) -> None:
    """Save the adapter (and a bundled base) as an MLflow Model in the folder `path`, without
    loading any weights; `config` is the pyfunc's model_config, `task_config` what the task
    serves with (`Task.serving_config`)."""
    import mlflow

    artifacts = {"adapter": str(adapter_dir)}
    if base_dir is not None:
        artifacts["base"] = str(base_dir)
    with tempfile.TemporaryDirectory(prefix="ftray-task-") as folder:
        if task_config:
            artifacts[TASK_CONFIG] = str(Path(folder) / "task.json")
            Path(artifacts[TASK_CONFIG]).write_text(json.dumps(task_config, ensure_ascii=False))
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(ENTRY),
            artifacts=artifacts,
            model_config=config,
            signature=model_signature(int(config["max_new_tokens"])),
            input_example=example,
            pip_requirements=_requirements(),
        )


def log_adapter_model(
    client: Any,
    experiment_id: str,
    run_id: str,
    adapter_dir: Path,
    base_dir: Path | None,
    config: dict[str, Any],
    example: list[str],
    task_config: dict[str, Any] | None = None,
) -> Any:
    """Log the adapter (and a bundled base) as a pyfunc LoggedModel of `run_id`; returns it.

    The model is saved locally and then uploaded, so logging never loads the weights (a 7B
    base on a CPU-only head node would take minutes).
    """
    logged = client.create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type="ftray-lora"
    )
    staging = Path(tempfile.mkdtemp(prefix="ftray-model-"))
    try:
        save_adapter_model(
            staging / MODEL_NAME, adapter_dir, base_dir, config, example, task_config
        )
        client.log_model_artifacts(logged.model_id, str(staging / MODEL_NAME))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return client.finalize_logged_model(logged.model_id, "READY")
