"""Contract test of the `unsloth` backend against a FAKE `unsloth` module.

The real unsloth is not installed here (it is GPU-only; without a GPU, Unsloth 2026.10
falls back to the CPU unless UNSLOTH_DISABLE_CPU_FALLBACK=1), so these tests install a
stand-in `unsloth` into sys.modules whose FastLanguageModel records what it is called with.
The parameter names the fake accepts are those of unsloth 2026.10.7
(unsloth/models/loader.py FastLanguageModel.from_pretrained, unsloth/models/llama.py
FastLlamaModel.get_peft_model): a keyword the real signature lacks fails here as a
TypeError. Nothing here shows the path works on a GPU.
"""

from __future__ import annotations

import builtins
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import ftray.models.backend
from ftray.config import load_spec
from ftray.models.backend import (
    BackendUnavailable,
    resolve_backend_name,
    select_backend,
    wait_for_free_gpu_memory,
)
from ftray.models.unsloth_backend import (
    COMPILE_CACHE_ENV,
    FTRAY_CACHE_ENV,
    UnslothBackend,
    compile_cache_dir,
)
from tests.conftest import SPECS

OVERRIDES = [
    "lora.r=32",
    "lora.alpha=64",
    "lora.dropout=0.05",
    "model.max_seq_length=512",
    "train.seed=7",
]
FAKE_BASE = "org/some-instruct-model"


class FakeTokenizer:
    pad_token: str | None = None
    eos_token = "</s>"


class FakePeftModel:
    """What the trainer touches on the returned model, nothing more."""

    def __init__(self, base_model: Any, **kwargs: Any) -> None:
        self.base_model = base_model
        self.peft_config = {"default": types.SimpleNamespace(**kwargs)}
        self.config = types.SimpleNamespace(use_cache=False)
        self.saved_to: list[str] = []

    def save_pretrained(self, path: str) -> None:
        self.saved_to.append(str(path))

    def print_trainable_parameters(self) -> None:
        pass


def _checkpointing_flags(model: Any) -> list[bool]:
    return [
        m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")
    ]


def make_fake_unsloth(
    load_base: Any = None, wrap: Any = None
) -> tuple[types.ModuleType, dict[str, Any]]:
    """A module named `unsloth` and the record of what its FastLanguageModel received.

    The fake methods take exactly the keywords ftray passes, named as in the real
    signatures, so a renamed/misspelled keyword fails with a TypeError. With `wrap` (a real
    peft model), the fake also does what Unsloth 2026.10 does around generation
    (unsloth/models/llama.py): `get_peft_model` turns gradient checkpointing on and replaces
    `generate` with a fast generate that calls `for_inference` (checkpointing off, eval mode)
    and calls `for_training` afterwards only if the model was training when `generate` was
    called; `for_training` turns checkpointing back on in the mode chosen at
    `get_peft_model`.
    """
    calls: dict[str, Any] = {"modes": []}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(
            model_name: str = "unsloth/Llama-3.2-1B-Instruct",
            max_seq_length: int = 2048,
            dtype: Any = None,
            load_in_4bit: bool = True,
            revision: str | None = None,
            **rest: Any,
        ) -> tuple[Any, Any]:
            assert not rest, f"unexpected from_pretrained kwargs {rest}"
            calls["from_pretrained"] = {
                "model_name": model_name,
                "max_seq_length": max_seq_length,
                "dtype": dtype,
                "load_in_4bit": load_in_4bit,
                "revision": revision,
            }
            calls["environ"] = dict(os.environ)
            calls["cwd"] = os.getcwd()
            if load_base is not None:
                return load_base(model_name)
            return object(), FakeTokenizer()

        @staticmethod
        def get_peft_model(
            model: Any,
            r: int = 16,
            target_modules: Any = None,
            lora_alpha: float = 16,
            lora_dropout: float = 0.0,
            bias: str = "none",
            use_gradient_checkpointing: Any = "unsloth",
            random_state: int = 3407,
            **rest: Any,
        ) -> Any:
            assert not rest, f"unexpected get_peft_model kwargs {rest}"
            kwargs = {
                "r": r,
                "target_modules": target_modules,
                "lora_alpha": lora_alpha,
                "lora_dropout": lora_dropout,
                "bias": bias,
                "use_gradient_checkpointing": use_gradient_checkpointing,
                "random_state": random_state,
            }
            calls["get_peft_model"] = {"model": model, **kwargs}
            if wrap is None:
                result = FakePeftModel(model, **kwargs)
            else:
                result = wrap(model)
                result.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
                result._unsloth_gradient_checkpointing = use_gradient_checkpointing
                result.generate = types.MethodType(fast_generate, result)
            calls["peft_model"] = result
            return result

        @staticmethod
        def for_inference(model: Any) -> Any:
            calls["modes"].append("inference")
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
            model.eval()
            return model

        @staticmethod
        def for_training(model: Any, use_gradient_checkpointing: Any = None) -> Any:
            calls["modes"].append("training")
            if use_gradient_checkpointing is None:
                use_gradient_checkpointing = getattr(model, "_unsloth_gradient_checkpointing", True)
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = bool(use_gradient_checkpointing)
            model.train()
            return model

    def fast_generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        restore_training_mode = self.training
        FastLanguageModel.for_inference(self)
        output = type(self).generate(self, *args, **kwargs)
        if restore_training_mode:
            FastLanguageModel.for_training(self)
        return output

    module = types.ModuleType("unsloth")
    module.FastLanguageModel = FastLanguageModel  # type: ignore[attr-defined]
    return module, calls


@pytest.fixture
def gpu_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.mem_get_info as on an idle GPU (there is none here)."""
    import torch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: (80, 80))


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$FTRAY_UNSLOTH_CACHE set to a tmp folder, $UNSLOTH_COMPILE_LOCATION unset (and
    restored after the test, since load() sets it in os.environ)."""
    cache = tmp_path_factory.mktemp("unsloth-cache")
    monkeypatch.setenv(FTRAY_CACHE_ENV, str(cache))
    monkeypatch.setenv(COMPILE_CACHE_ENV, "placeholder")
    monkeypatch.delenv(COMPILE_CACHE_ENV)
    return cache


@pytest.fixture
def fake_unsloth(
    monkeypatch: pytest.MonkeyPatch, gpu_free: None, cache_env: Path
) -> dict[str, Any]:
    module, calls = make_fake_unsloth()
    monkeypatch.setitem(sys.modules, "unsloth", module)
    return calls


def spec_with_overrides(*extra: str) -> Any:
    return load_spec(SPECS / "trigger_tiny.yaml", [*OVERRIDES, *extra])


def test_load_imports_unsloth_before_trl_transformers_peft(
    monkeypatch: pytest.MonkeyPatch, fake_unsloth: dict[str, Any]
) -> None:
    spec = spec_with_overrides()
    imported: list[str] = []
    real_import = builtins.__import__

    def recording_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # noqa: ANN001, ANN202
        if level == 0:
            imported.append(name.split(".")[0])
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    monkeypatch.setattr(builtins, "__import__", real_import)

    assert "unsloth" in imported
    first_unsloth = imported.index("unsloth")
    before = imported[:first_unsloth]
    assert not {"trl", "transformers", "peft"} & set(before), imported


def test_load_maps_spec_to_unsloth_arguments(fake_unsloth: dict[str, Any]) -> None:
    spec = spec_with_overrides()
    model, tokenizer = UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)

    assert fake_unsloth["from_pretrained"] == {
        "model_name": FAKE_BASE,
        "max_seq_length": 512,
        "dtype": None,
        "load_in_4bit": True,
        "revision": None,
    }
    peft_kwargs = dict(fake_unsloth["get_peft_model"])
    peft_kwargs.pop("model")
    assert peft_kwargs == {
        "r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "target_modules": list(spec.lora.target_modules),
        "bias": "none",
        "use_gradient_checkpointing": "unsloth",
        "random_state": 7,
    }
    assert isinstance(peft_kwargs["target_modules"], list)
    assert model is fake_unsloth["peft_model"]
    assert tokenizer.pad_token == "</s>"


def test_load_in_4bit_false_is_passed_through(fake_unsloth: dict[str, Any]) -> None:
    spec = spec_with_overrides("model.load_in_4bit=false")
    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    assert fake_unsloth["from_pretrained"]["load_in_4bit"] is False


def test_existing_pad_token_is_kept(
    monkeypatch: pytest.MonkeyPatch, fake_unsloth: dict[str, Any]
) -> None:
    monkeypatch.setattr(FakeTokenizer, "pad_token", "<pad>")
    spec = spec_with_overrides()
    _, tokenizer = UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    assert tokenizer.pad_token == "<pad>"


def test_compile_cache_is_absolute_and_outside_the_trial_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu_free: None
) -> None:
    # No $FTRAY_UNSLOTH_CACHE: the default per-node folder. The cwd is a "trial folder".
    monkeypatch.delenv(FTRAY_CACHE_ENV, raising=False)
    monkeypatch.setenv(COMPILE_CACHE_ENV, "placeholder")
    monkeypatch.delenv(COMPILE_CACHE_ENV)
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    monkeypatch.chdir(trial_dir)
    module, calls = make_fake_unsloth()
    monkeypatch.setitem(sys.modules, "unsloth", module)
    spec = spec_with_overrides()

    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)

    location = Path(calls["environ"][COMPILE_CACHE_ENV])
    assert location == Path("/tmp/ftray-unsloth-cache") / str(os.getuid())
    assert location.is_absolute()
    assert location.is_dir()
    assert not location.is_relative_to(calls["cwd"])
    assert not (trial_dir / "unsloth_compiled_cache").exists()


def test_compile_cache_follows_ftray_unsloth_cache(
    monkeypatch: pytest.MonkeyPatch, fake_unsloth: dict[str, Any], cache_env: Path
) -> None:
    spec = spec_with_overrides()
    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    assert fake_unsloth["environ"][COMPILE_CACHE_ENV] == str(cache_env)
    assert not cache_env.is_relative_to(fake_unsloth["cwd"])


def test_compile_cache_set_by_user_is_kept(
    monkeypatch: pytest.MonkeyPatch, fake_unsloth: dict[str, Any], tmp_path: Path
) -> None:
    mine = tmp_path / "my-unsloth-cache"
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(mine))
    spec = spec_with_overrides()
    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    assert fake_unsloth["environ"][COMPILE_CACHE_ENV] == str(mine)
    assert mine.is_dir()


def test_compile_cache_dir_rejects_relative_override() -> None:
    assert compile_cache_dir({FTRAY_CACHE_ENV: "/scratch/u"}) == Path("/scratch/u")
    assert compile_cache_dir({}) == Path("/tmp/ftray-unsloth-cache") / str(os.getuid())
    with pytest.raises(ValueError, match="absolute"):
        compile_cache_dir({FTRAY_CACHE_ENV: "relative/cache"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_free_gpu_memory_returns_true_once_free() -> None:
    readings = iter([(10, 100), (50, 100), (95, 100)])
    polls: list[tuple[int, int]] = []

    def mem_get_info() -> tuple[int, int]:
        polls.append(next(readings))
        return polls[-1]

    clock = FakeClock()
    assert wait_for_free_gpu_memory(
        mem_get_info=mem_get_info, sleep=clock.sleep, clock=clock, poll_s=2.0
    )
    assert len(polls) == 3
    assert clock.sleeps == [2.0, 2.0]


def test_wait_for_free_gpu_memory_times_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    polls: list[float] = []

    def busy() -> tuple[int, int]:
        polls.append(clock.now)
        return (1, 100)

    result = wait_for_free_gpu_memory(
        min_free_fraction=0.9,
        timeout_s=10,
        poll_s=3.0,
        mem_get_info=busy,
        sleep=clock.sleep,
        clock=clock,
    )
    assert result is False
    assert clock.now == pytest.approx(10.0)  # never waits past the timeout
    assert polls == [0.0, 3.0, 6.0, 9.0, 10.0]
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "loading anyway" in caplog.text


@pytest.mark.parametrize(
    ("cuda", "installed", "expected"),
    [(True, True, "unsloth"), (True, False, "peft"), (False, True, "peft"), (False, False, "peft")],
)
def test_auto_picks_unsloth_only_with_cuda_and_unsloth(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, installed: bool, expected: str
) -> None:
    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: cuda)
    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: installed)
    assert resolve_backend_name("auto") == expected
    assert resolve_backend_name("peft") == "peft"
    assert resolve_backend_name("unsloth") == "unsloth"


def test_select_unsloth_needs_cuda_and_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: True)
    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        select_backend("unsloth")

    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: True)
    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: False)
    with pytest.raises(BackendUnavailable, match="not installed"):
        select_backend("unsloth")

    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: True)
    assert isinstance(select_backend("unsloth"), UnslothBackend)
    assert isinstance(select_backend("auto"), UnslothBackend)


def test_select_unsloth_without_cuda_on_this_machine() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable):
        select_backend("unsloth")


def test_build_trainer_hands_the_unsloth_model_to_sft_trainer(
    monkeypatch: pytest.MonkeyPatch, gpu_free: None, cache_env: Path, tmp_path: Path
) -> None:
    """build_trainer -> select_backend('unsloth') -> UnslothBackend.load (fake unsloth, real
    tiny base + real peft LoRA) -> trl.SFTTrainer trains that very model object."""
    import peft
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ftray.training.trial
    from ftray.models.peft_backend import lora_config
    from ftray.models.tiny import build_tiny_model
    from ftray.tasks import load_task

    spec = spec_with_overrides("model.backend=unsloth", "model.max_seq_length=128")
    task = load_task(spec)
    base = str(build_tiny_model(task.corpus()))

    def load_base(model_name: str) -> tuple[Any, Any]:
        base_model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
        base_model.config.use_cache = False
        return base_model, AutoTokenizer.from_pretrained(model_name)

    def wrap(base_model: Any) -> Any:
        return peft.get_peft_model(base_model, lora_config(spec.lora))

    module, calls = make_fake_unsloth(load_base=load_base, wrap=wrap)
    monkeypatch.setitem(sys.modules, "unsloth", module)
    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: True)
    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: True)

    trainer = ftray.training.trial.build_trainer(spec, task, base, tmp_path / "trainer")

    assert isinstance(trainer, trl.SFTTrainer)
    assert calls["from_pretrained"]["model_name"] == base
    assert calls["get_peft_model"]["r"] == 32
    peft_model = calls["peft_model"]
    assert isinstance(peft_model, peft.PeftModel)
    assert trainer.model is peft_model
    lora_names = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora_names and all("lora_" in name for name in lora_names)


def _unsloth_trial_setup(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> tuple[Any, dict]:
    """The tiny spec on the `unsloth` backend with a fake unsloth over a real tiny base and
    a real peft LoRA, so `train_trial` runs end to end on the CPU."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftray.models.peft_backend import lora_config

    spec = spec_with_overrides("model.backend=unsloth", "model.max_seq_length=128", *overrides)

    def load_base(model_name: str) -> tuple[Any, Any]:
        base_model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
        base_model.config.use_cache = False
        return base_model, AutoTokenizer.from_pretrained(model_name)

    def wrap(base_model: Any) -> Any:
        return peft.get_peft_model(base_model, lora_config(spec.lora))

    module, calls = make_fake_unsloth(load_base=load_base, wrap=wrap)
    monkeypatch.setitem(sys.modules, "unsloth", module)
    monkeypatch.setattr(ftray.models.backend, "cuda_available", lambda: True)
    monkeypatch.setattr(ftray.models.backend, "unsloth_installed", lambda: True)
    return spec, calls


@pytest.mark.slow
def test_gradient_checkpointing_is_on_for_every_training_step_of_every_epoch(
    monkeypatch: pytest.MonkeyPatch, gpu_free: None, cache_env: Path, tmp_path: Path
) -> None:
    """Evaluation after each epoch generates; Unsloth's generate switches checkpointing off
    and only back on when the model was training. A training step with checkpointing off
    would need the memory of a full activation graph (OOM on a 7B model)."""
    import torch

    from ftray.tasks import load_task
    from ftray.training.trial import train_trial

    spec, calls = _unsloth_trial_setup(monkeypatch, "train.epochs=3")
    seen: list[bool] = []
    real_get_peft_model = sys.modules["unsloth"].FastLanguageModel.get_peft_model

    def get_peft_model_with_probe(model: Any, **kwargs: Any) -> Any:
        peft_model = real_get_peft_model(model, **kwargs)

        def probe(module: Any, args: Any, kwargs: Any) -> None:
            if module.training and torch.is_grad_enabled():
                seen.append(all(_checkpointing_flags(module)))

        peft_model.register_forward_pre_hook(probe, with_kwargs=True)
        return peft_model

    monkeypatch.setattr(
        sys.modules["unsloth"].FastLanguageModel,
        "get_peft_model",
        staticmethod(get_peft_model_with_probe),
    )
    report = train_trial(spec, tmp_path)

    # One forward per training step, every step of the 3 epochs: the task's rows (the trigger
    # spec trains 2 per training question: 128) in batches of 8, 16 steps an epoch, 48 seen.
    rows = len(load_task(spec).train_rows())
    steps_per_epoch = -(-rows // spec.train.batch_size)
    assert len(seen) >= 3 * steps_per_epoch, (len(seen), rows, steps_per_epoch)
    assert all(seen), f"training steps with checkpointing off: {seen.count(False)} of {len(seen)}"
    assert calls["modes"].count("inference") >= 3 and calls["modes"][-1] == "training"
    assert 0.0 <= report.metrics["trigger_score"] <= 1.0


def test_model_revision_is_passed_to_unsloth(fake_unsloth: dict[str, Any]) -> None:
    spec = spec_with_overrides("model.revision=v2.0")
    UnslothBackend().load(FAKE_BASE, spec.model, spec.lora, spec.train.seed)
    assert fake_unsloth["from_pretrained"]["revision"] == "v2.0"
