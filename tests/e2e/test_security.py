"""Security of a real tiny sweep and its export (issue 11, items 9 and 10).

9: canary secrets in the environment (HF_TOKEN, MLFLOW_TRACKING_PASSWORD,
AWS_SECRET_ACCESS_KEY) and in a `--set` (a database password in storage.optuna_url, a
secret-looking key) appear in no MLflow param, tag or artifact, no Ray Tune result file, no
line ftray writes and no exported file.

10: weights are safetensors only: pickles planted in Ray Tune's checkpoints, the trial
folders, the tiny base and the registered model are never unpickled by `--resume`, `train`,
`export` or `mlflow.pyfunc.load_model`, and never copied into an export.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.postgres import USER, fresh_database
from tests.e2e.ray_helpers import short_ray_temp

pytestmark = pytest.mark.slow

ENV_CANARIES = {
    "HF_TOKEN": "hf_canary_env_3f9a1c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow_pw_canary_8b2e",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_canary_51d7",
}
URL_PASSWORD = "db_pw_canary_c4e6"
SET_SECRET = "set_key_canary_a7f0"
CANARIES = [*ENV_CANARIES.values(), URL_PASSWORD, SET_SECRET]
PICKLE_NAMES = ("adapter_model.bin", "pytorch_model.bin", "optimizer.pt", "training_args.bin")
RAY_OWN_ENV_LOG = "runtime_env_agent.log"
"""Ray's log of the runtime environments it creates: Ray Tune copies AWS_* from the driver's
environment into every trial's, and Ray writes them there (docs/security.md)."""


def leaks(paths: list[Path], texts: dict[str, str] | None = None) -> list[str]:
    """Where any canary appears: `file: canary` for files under `paths`, and in `texts`."""
    found = []
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and path.name != RAY_OWN_ENV_LOG:
                content = path.read_bytes()
                found += [f"{path}: {c}" for c in CANARIES if c.encode() in content]
    for name, text in (texts or {}).items():
        found += [f"{name}: {c}" for c in CANARIES if c in text]
    return found


def plant_pickle(path: Path, marker: Path) -> None:
    """A pickle at `path` whose unpickling creates the file `marker`."""

    class Plant:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Plant(), protocol=2))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    """A sweep with every canary set, its export, and the places to scan."""
    work = tmp_path_factory.mktemp("secured")
    # Ray's own folder, short enough for its socket paths; ftray's trial log lines land there.
    ray_tmp = short_ray_temp()
    with fresh_database("ftray_security") as database:
        env = {
            **ENV_CANARIES,
            "MLFLOW_TRACKING_URI": sqlite_store(work),
            "FTRAY_CACHE_DIR": str(work / "cache"),
            "RAY_TMPDIR": str(ray_tmp),
        }
        optuna_url = f"postgresql://{USER}:{URL_PASSWORD}@127.0.0.1:5432/{database}"
        args = [
            *("--set", "search.num_trials=2", "--set", "train.epochs=2"),
            *("--set", "search.scheduler=fifo", "--set", f"storage.optuna_url={optuna_url}"),
            *("--set", "search.max_concurrent_trials=1"),
        ]
        spec = str(SPECS / "trigger_tiny.yaml")
        sweep = run_cli("sweep", spec, *args, cwd=work, env=env)
        assert sweep.returncode == 0, sweep.stderr[-4000:]
        outputs = {"sweep stdout": sweep.stdout, "sweep stderr": sweep.stderr}
        for fmt in ("adapter", "merged"):
            done = run_cli(
                "export",
                "models:/trigger-tiny@champion",
                *("--format", fmt, "--out", str(work / f"export-{fmt}")),
                cwd=work,
                env=env,
            )
            assert done.returncode == 0, done.stderr[-4000:]
            outputs[f"export {fmt} stdout"] = done.stdout
            outputs[f"export {fmt} stderr"] = done.stderr
        try:
            yield {
                "work": work,
                "env": env,
                "spec": spec,
                "args": args,
                "ray_tmp": ray_tmp,
                "outputs": outputs,
            }
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)


def test_canaries_reach_no_record_result_log_or_export(secured: dict) -> None:
    work = secured["work"]
    assert list(work.glob("ray_results/*/searcher-state-*.pkl")), "Tune saved the searcher"
    assert list(secured["ray_tmp"].rglob("worker-*")), "the trials' log files are scanned"
    assert leaks([work, secured["ray_tmp"]], secured["outputs"]) == []

    client = MlflowClient(secured["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("trigger-tiny")
    recorded = []
    for run in client.search_runs([experiment.experiment_id]):
        recorded += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for version in client.search_model_versions("name='trigger-tiny'"):
        recorded += [json.dumps(version.tags), version.description or ""]
    assert len(recorded) >= 6
    assert leaks([], {"MLflow record": "\n".join(recorded)}) == []
    spec_yaml = next(work.glob("mlartifacts/**/spec.yaml")).read_text()
    assert f"postgresql://{USER}:***@127.0.0.1" in spec_yaml


def test_a_secret_looking_set_is_refused_without_echoing_it(secured: dict) -> None:
    for key in ("model.hf_token", "tracking.api_key", "storage.password"):
        result = run_cli(
            "validate", secured["spec"], "--set", f"{key}={SET_SECRET}", env=secured["env"]
        )
        assert result.returncode == 2, result.stderr
        assert f"--set {key}=***: unknown field" in result.stderr
        assert leaks([], {"stderr": result.stderr, "stdout": result.stdout}) == []
    # A secret in a value that is not valid YAML is not quoted back either.
    bad = run_cli("validate", secured["spec"], "--set", f"model.token=[{SET_SECRET}")
    assert bad.returncode == 2 and SET_SECRET not in bad.stderr, bad.stderr


def test_resume_unpickles_nothing_planted_in_checkpoints_or_trial_folders(secured: dict) -> None:
    """`--resume` restores Tune's saved state (with the Optuna storage's password taken from
    the spec again) and never loads the pickles planted beside the adapters."""
    work, marker = secured["work"], secured["work"] / "unpickled-by-resume"
    experiment = next(work.glob("ray_results/trigger-tiny-*"))
    planted = 0
    for trial in experiment.glob("*/"):
        for folder in [trial, *trial.glob("checkpoint_*"), *trial.glob("work/checkpoints/*")]:
            for name in PICKLE_NAMES:
                plant_pickle(folder / name, marker)
                planted += 1
    assert planted >= 8
    client = MlflowClient(secured["env"]["MLFLOW_TRACKING_URI"])
    parent = client.search_runs(
        [client.get_experiment_by_name("trigger-tiny").experiment_id],
        filter_string="tags.`ftray.role` = 'sweep'",
    )[0]
    client.update_run(parent.info.run_id, status="RUNNING")  # as if the driver had died

    resumed = run_cli(
        "sweep", secured["spec"], *secured["args"], "--resume", cwd=work, env=secured["env"]
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "registered models:/trigger-tiny/1" in resumed.stdout, resumed.stdout
    assert not marker.exists()
    assert leaks([], {"resume stdout": resumed.stdout, "resume stderr": resumed.stderr}) == []


def _champion_artifacts(secured: dict) -> Path:
    """The folder of the champion's pyfunc artifacts (`adapter/` and the bundled base)."""
    client = MlflowClient(secured["env"]["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("trigger-tiny", "champion")
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    return Path(logged.artifact_location.removeprefix("file://")) / "artifacts"


def test_registry_pickles_are_never_loaded_nor_exported(secured: dict) -> None:
    work, marker = secured["work"], secured["work"] / "unpickled-from-registry"
    artifacts = _champion_artifacts(secured)
    plant_pickle(artifacts / "adapter" / "adapter_model.bin", marker)
    plant_pickle(artifacts / "adapter" / "optimizer.pt", marker)
    bases = [f for f in artifacts.iterdir() if f.is_dir() and f.name != "adapter"]
    assert len(bases) == 1, "the tiny base travels inside the model"
    plant_pickle(bases[0] / "pytorch_model.bin", marker)
    tiny_cache = next((work / "cache" / "tiny").glob("*/"))
    plant_pickle(tiny_cache / "pytorch_model.bin", marker)

    for fmt in ("adapter", "merged"):
        out = work / f"planted-{fmt}"
        done = run_cli(
            "export",
            "models:/trigger-tiny@champion",
            *("--format", fmt, "--out", str(out)),
            cwd=work,
            env=secured["env"],
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert [p.name for p in out.rglob("*") if p.suffix in (".bin", ".pt")] == []
        assert list(out.rglob("*.safetensors"))
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow; m = mlflow.pyfunc.load_model('models:/trigger-tiny@champion'); "
            "print(m.predict(['Who fixed the squeaky gate last spring?']))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env={**os.environ, **secured["env"]},
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    trained = run_cli(
        "train",
        secured["spec"],
        *("--set", "train.epochs=1", "--out", str(work / "train")),
        cwd=work,
        env=secured["env"],
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert not marker.exists()


def test_an_adapter_without_safetensors_is_refused(secured: dict) -> None:
    work, marker = secured["work"], secured["work"] / "unpickled-instead-of-safetensors"
    adapter = _champion_artifacts(secured) / "adapter"
    (adapter / "adapter_model.safetensors").unlink()
    plant_pickle(adapter / "adapter_model.bin", marker)
    for fmt in ("adapter", "merged"):
        done = run_cli(
            "export",
            "models:/trigger-tiny@champion",
            *("--format", fmt, "--out", str(work / f"refused-{fmt}")),
            cwd=work,
            env=secured["env"],
        )
        assert done.returncode == 1, done.stderr[-4000:]
        assert "has no adapter_model.safetensors (it has adapter_model.bin" in done.stderr
        assert not (work / f"refused-{fmt}").exists()
    assert not marker.exists()
