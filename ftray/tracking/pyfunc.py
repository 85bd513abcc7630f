"""The registered version as an MLflow Model: a `pyfunc` that loads the base and the LoRA
adapter and answers prompts greedily with the training chat template.

It is logged as code (`pyfunc_entry.py`), not as a pickle: loading it runs that file, never
unpickles anything from the registry. The `tiny` base travels inside the model; a Hub base
is named by id and pinned revision and loaded from the local Hugging Face cache.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
MODEL_NAME = "model"
REQUIREMENTS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "mlflow")


def conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """The conversations to answer: prompts as strings, a DataFrame with a `prompt` (or
    `messages`) column, or chat messages (`[{"role", "content"}, ...]`, or `{"messages": ...}`)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in ("prompt", "messages") if c in model_input.columns), None)
        items = list(model_input[column] if column else model_input.iloc[:, 0])
    elif isinstance(model_input, str | dict):
        items = [model_input]
    else:
        items = list(model_input)
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("messages", item.get("prompt"))
        if isinstance(item, str):
            out.append([{"role": "user", "content": item}])
        elif isinstance(item, list) and all(isinstance(m, dict) for m in item):
            out.append([{"role": m["role"], "content": m["content"]} for m in item])
        else:
            raise ValueError(
                "each input must be a prompt string or a list of chat messages "
                f"[{{'role': ..., 'content': ...}}], got {type(item).__name__}"
            )
    return out


class AdapterModel(PythonModel):
    """Greedy answers of the base model with ftray's LoRA adapter."""

    def load_context(self, context: Any) -> None:
        from ftray.models.peft_backend import load_for_inference

        config = context.model_config
        bundled = context.artifacts.get("base")
        self.config = config
        self.model, self.tokenizer = load_for_inference(
            bundled or config["base_model"],
            context.artifacts["adapter"],
            bool(config.get("load_in_4bit", True)),
            config.get("base_revision"),
            # A bundled base is downloaded to a new folder each time: a cached copy keyed by
            # its files would never be read again.
            keep_quantized=not bundled,
        )

    def predict(
        self, context: Any, model_input: Any, params: dict[str, Any] | None = None
    ) -> list[str]:
        from ftray.training.evaluate import generate

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.config["max_new_tokens"])
        return generate(
            self.model,
            self.tokenizer,
            conversations(model_input),
            max_new_tokens,
            int(self.config.get("batch_size", 16)),
        )


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_adapter_model(
    client: Any,
    experiment_id: str,
    run_id: str,
    adapter_dir: Path,
    base_dir: Path | None,
    config: dict[str, Any],
    example: list[str],
) -> Any:
    """Log the adapter (and a bundled base) as a pyfunc LoggedModel of `run_id`; returns it.

    The model is saved locally and then uploaded, so logging never loads the weights (a 7B
    base on a CPU-only head node would take minutes).
    """
    import mlflow
    from mlflow.models import infer_signature

    logged = client.create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type="ftray-lora"
    )
    artifacts = {"adapter": str(adapter_dir)}
    if base_dir is not None:
        artifacts["base"] = str(base_dir)
    staging = Path(tempfile.mkdtemp(prefix="ftray-model-"))
    try:
        mlflow.pyfunc.save_model(
            str(staging / MODEL_NAME),
            python_model=str(ENTRY),
            artifacts=artifacts,
            model_config=config,
            signature=infer_signature(
                example, ["answer"], params={"max_new_tokens": int(config["max_new_tokens"])}
            ),
            input_example=example,
            pip_requirements=_requirements(),
        )
        client.log_model_artifacts(logged.model_id, str(staging / MODEL_NAME))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return client.finalize_logged_model(logged.model_id, "READY")
