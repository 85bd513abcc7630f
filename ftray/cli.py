"""The `ftray` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftray import __version__
from ftray.errors import InputError
from ftray.log import QUIET, VERBOSE, configure, get_logger, quiet_library_logs
from ftray.redaction import mask_override, mask_url_passwords

if TYPE_CHECKING:
    from ftray.config.spec import Spec
    from ftray.sweep.runner import SweepResult
    from ftray.sweep.steps import StepSweep

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add_spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec YAML (see search_spaces/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field by dotted path, e.g. --set lora.r=16 (repeatable)",
    )


def _add_tracking_uri_arg(parser: argparse.ArgumentParser, spec_fallback: str = "") -> None:
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help=f"MLflow tracking URI (default $MLFLOW_TRACKING_URI, {spec_fallback}"
        "else mlflow.db beside the spec or in the current folder); a store that is not "
        "there is an error, never created",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Check spec, data, search space and the answers max_seq_length cuts; start nothing."""
    from ftray.config import load_spec
    from ftray.sweep.resources import local_resource_problems
    from ftray.sweep.space import checked_inputs, search_warnings, shortest_seq_length
    from ftray.training.offline_lengths import check_answer_lengths_offline

    spec = load_spec(args.spec, args.overrides)
    task = checked_inputs(spec)
    log = get_logger()
    if not spec.model.simulated:  # simulated trials tokenise nothing
        check_answer_lengths_offline(
            args.spec, args.overrides, spec, task, shortest_seq_length(spec)
        )
    for warning in search_warnings(spec):
        log.warning(str(warning))
    for problem in local_resource_problems(spec):
        # A spec for a cluster is fine to check here; only a local sweep refuses it.
        log.warning(f"{problem} (ftray sweep without RAY_ADDRESS refuses this)")
    dims = len(spec.search.space) if spec.search else 0
    print(
        f"ok: {args.spec}: task {spec.task.kind}, {len(task.train_rows())} training rows, "
        f"{len(task.eval_cases())} held-out prompts, model {spec.model.base}, "
        f"{dims} search dimension(s)"
    )
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """One trial in-process with the spec's fixed values; last stdout line is the metrics JSON."""
    from ftray.config import load_spec
    from ftray.models.sources import check_base_model
    from ftray.tasks import load_task

    spec = load_spec(args.spec, args.overrides)
    task = load_task(spec)
    if spec.model.simulated:
        from ftray.sweep.space import check_simulation

        check_simulation(spec)
    else:
        check_base_model(spec)
    out = args.out or Path("runs") / spec.name / "train"

    from ftray.training.trial import train_trial

    report = train_trial(spec, out, task=task)
    get_logger().info(f"adapter, metrics.json and samples.jsonl written to {out}")
    print(json.dumps({"epoch": report.epoch, **report.metrics}))
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """The sweep; ends with the leaderboard, the champion's URI and how to open MLflow."""
    from ftray.config import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.each_step or args.step:
        from ftray.sweep.steps import prepare_each_step

        # Bad input exits 2 here, before Ray or MLflow is imported.
        return _sweep_each_step(args, spec, prepare_each_step(spec, args.step))

    from ftray.sweep.space import checked_base, prepare_sweep

    task = prepare_sweep(spec)  # bad input exits 2 here, before Ray or MLflow is imported
    prepared = None
    if not args.resume:  # a resume first checks the spec against the recorded one
        from ftray.sweep.ray_session import start_ray_early
        from ftray.tracking.opening import reach_store
        from ftray.tracking.store import tracking_uri

        prepared = checked_base(spec, task, spec.name)  # the data's check, before Ray starts
        reach_store(tracking_uri(spec))  # a store that cannot be used, before Ray starts
        # Ray starts (seconds) while the driver imports MLflow and opens the tracking store.
        start_ray_early()
    from mlflow import MlflowClient

    from ftray.sweep.lease import SweepRunning
    from ftray.sweep.pending import PendingTimeout
    from ftray.sweep.resume import NothingToResume, UnfinishedSweep
    from ftray.sweep.runner import SweepInterrupted, run_sweep
    from ftray.tracking.leaderboard import render_leaderboard
    from ftray.tracking.store import tracking_uri

    try:
        result = run_sweep(
            spec,
            task,
            resume=args.resume,
            force=args.force,
            new=args.new,
            release_ray=True,
            prepared=prepared,
        )
    except NothingToResume:
        print(f"the last sweep of '{spec.name}' already finished; nothing to resume")
        print(render_leaderboard(MlflowClient(tracking_uri(spec)), spec))
        return EXIT_OK
    except UnfinishedSweep as exc:
        return _unfinished(args, spec, exc.parent)
    except SweepRunning as exc:
        print(f"error: {args.spec}: {exc.describe()}", file=sys.stderr)
        return EXIT_INPUT
    except SweepInterrupted as exc:
        print(
            f"error: sweep interrupted; Ray Tune saved its state at {exc}. "
            f"Resume with: {resume_command(args)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except PendingTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    board = render_leaderboard(MlflowClient(result.tracking_uri), spec)
    print(board or "no trials recorded")
    _print_registration(result)
    print(f"open MLflow: mlflow ui --backend-store-uri {mask_url_passwords(result.tracking_uri)}")
    if result.all_failed:
        _print_failures(result)
        return EXIT_RUNTIME
    return EXIT_OK


def _print_registration(result: SweepResult) -> None:
    """What a sweep registered (or why nothing), and where Ray Tune kept its results."""
    if result.registration is not None:
        reg = result.registration
        moved = "now champion"
        if not reg.champion_moved:
            moved = f"champion stays version {reg.champion_version}"
            moved += f": {reg.reason}" if reg.reason else ""
        print(f"registered {reg.model_uri} ({moved})")
        print(f"champion: models:/{reg.name}@champion")
    elif result.unregistered_reason:
        print(result.unregistered_reason)
    print(f"Ray Tune results: {result.experiment_path}")


def _print_failures(result: SweepResult, step: str = "") -> None:
    """`error:` lines for a sweep whose every trial failed: one per distinct cause."""
    where = f"step {step}: " if step else ""
    causes = Counter(o.error or "no error recorded" for o in result.outcomes)
    print(
        f"error: {where}all {len(result.outcomes)} trials failed; nothing registered; their "
        f"logs are in {result.experiment_path}",
        file=sys.stderr,
    )
    for cause, count in causes.most_common():
        print(
            f"error: {where}trial failure: {cause} ({count} trial{'s' * (count > 1)})",
            file=sys.stderr,
        )


def _sweep_each_step(args: argparse.Namespace, spec: Spec, sweeps: list[StepSweep]) -> int:
    """One sweep per step; a leaderboard and the registered version of each step."""
    from mlflow import MlflowClient

    from ftray.sweep.each_step import run_each_step
    from ftray.sweep.lease import SweepRunning
    from ftray.sweep.pending import PendingTimeout
    from ftray.sweep.resume import NothingToResume, UnfinishedSweep
    from ftray.sweep.runner import SweepInterrupted
    from ftray.tracking.leaderboard import render_leaderboard, render_sweep
    from ftray.tracking.store import step_sweep_run, tracking_uri

    again = ["--each-step", *(part for step in args.step for part in ("--step", step))]
    try:
        outcome = run_each_step(spec, sweeps, resume=args.resume, force=args.force, new=args.new)
    except UnfinishedSweep as exc:
        return _unfinished(args, spec, exc.parent)
    except SweepRunning as exc:
        print(f"error: {args.spec}: {exc.describe()}", file=sys.stderr)
        return EXIT_INPUT
    except NothingToResume:
        print(f"the last each-step run of '{spec.name}' already finished; nothing to resume")
        print(render_leaderboard(MlflowClient(tracking_uri(spec)), spec))
        return EXIT_OK
    except SweepInterrupted as exc:
        print(
            f"error: sweep interrupted; Ray Tune saved its state at {exc}. "
            f"Resume with: {resume_command(args, *again)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except PendingTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    client = MlflowClient(outcome.tracking_uri)
    for step, result in outcome.results.items():
        step_run = step_sweep_run(client, outcome.run_id, step)
        print(render_sweep(client, spec, step_run) if step_run else f"step {step}: no sweep")
        if result is not None:
            _print_registration(result)
        print()
    uri = mask_url_passwords(outcome.tracking_uri)
    print(f"open MLflow: mlflow ui --backend-store-uri {uri}")
    for step in outcome.failed_steps:
        result = outcome.results[step]
        assert result is not None
        _print_failures(result, step)
    return EXIT_RUNTIME if outcome.failed_steps else EXIT_OK


def _unfinished(args: argparse.Namespace, spec: Spec, parent: Any) -> int:
    """Exit 2: a new sweep (or each-step run) was asked for while the spec's last one is
    unfinished; the line says how to continue it, as what it was (one sweep, or one sweep per
    step of the steps it recorded)."""
    from ftray.tracking.tags import EACH_STEP_ROLE, ROLE, STEPS

    steps: list[str] = []
    if parent.data.tags.get(ROLE) == EACH_STEP_ROLE:
        recorded = json.loads(parent.data.tags.get(STEPS, "[]"))
        if not recorded or recorded == list(spec.task.step_names()):
            steps = ["--each-step"]
        else:
            steps = [part for step in recorded for part in ("--step", step)]
    how = resume_command(args, *steps)
    print(
        f"error: {args.spec}: the last sweep of '{spec.name}' ({parent.info.run_name}) "
        f"did not finish ({parent.info.status}); continue it with: {how}, or start a "
        "new sweep with --new",
        file=sys.stderr,
    )
    return EXIT_INPUT


def resume_command(args: argparse.Namespace, *extra: str) -> str:
    """The `ftray sweep ... --resume` command line that continues this sweep (same --set,
    then `extra`)."""
    sets = [part for override in args.overrides for part in ("--set", mask_override(override))]
    return shlex.join(["ftray", "sweep", str(args.spec), *sets, *extra, "--resume"])


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Trials of the spec's last sweep, best first."""
    from ftray.config import load_spec

    spec = load_spec(args.spec, args.overrides)
    if spec.search is None:
        raise InputError.at(args.spec, None, "the spec has no search: section, so it has no sweeps")
    from ftray.tracking.leaderboard import render_leaderboard, search_drift
    from ftray.tracking.opening import open_store
    from ftray.tracking.store import existing_store, latest_sweep_run

    quiet_library_logs()
    store = existing_store(args.tracking_uri, spec)
    uri = store.uri
    client = open_store(uri)
    board = render_leaderboard(client, spec)
    if board is None:
        print(
            f"error: no sweep of '{spec.name}' recorded at {mask_url_passwords(uri)} "
            f"({store.how_found()}); run ftray sweep first",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    from ftray.sweep.lease import live_lease

    latest = latest_sweep_run(client, spec)
    drift = search_drift(latest, spec)
    if drift:
        get_logger().warning(drift)
    print(board)
    lease = live_lease(latest)
    if lease is not None:
        print(
            f"running: its driver ({lease.holder()}) sent a heartbeat {lease.age():.0f} s ago; "
            "these are its trials so far"
        )
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """Expected GPU-hours (CPU-hours), cost and wall time of the spec's sweep, and what the
    estimate came from."""
    from ftray.config import load_spec

    spec = load_spec(args.spec, args.overrides)
    if spec.search is None:
        raise InputError.at(args.spec, None, "the spec has no search: section, so no sweep to plan")
    from ftray.sweep.plan import make_plan, render_plan
    from ftray.tracking.opening import open_store
    from ftray.tracking.store import find_store

    quiet_library_logs()
    store = find_store(args.tracking_uri, spec)
    if not store.exists():
        from ftray.sweep.space import prepare_sweep

        prepare_sweep(spec)  # the probe trains: bad input exits 2 first
    client = open_store(store.uri) if store.exists() else None
    plan, checked = make_plan(spec, client, args.gpus)
    print(render_plan(spec, plan, checked))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    """Point an alias (default champion) at a registered version."""
    from ftray.config import load_spec

    spec = load_spec(args.spec) if args.spec is not None else None
    from mlflow.exceptions import MlflowException

    from ftray.tracking.opening import open_store
    from ftray.tracking.registry import promote
    from ftray.tracking.store import existing_store

    quiet_library_logs()
    uri = existing_store(args.tracking_uri, spec).uri
    client = open_store(uri)
    try:
        promote(client, args.name, args.version, args.alias)
    except MlflowException as exc:
        print(f"error: {args.name} version {args.version} at {uri}: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """A registered adapter as adapter, merged safetensors, GGUF or an Ollama folder."""
    from ftray.export.run import ExportRequest, check_request

    request = ExportRequest(
        model_uri=args.model_uri,
        format=args.format,
        out=args.out,
        quant=args.quant,
        dtype=args.dtype,
        push_to_hub=args.push_to_hub,
        force=args.force,
        max_drop=args.max_drop,
    )
    check_request(request)  # bad arguments exit 2 before MLflow or torch is imported

    from ftray.export.run import export_model
    from ftray.tracking.opening import open_store
    from ftray.tracking.store import existing_store

    quiet_library_logs()  # no "creating tables" lines
    document = export_model(request, open_store(existing_store(args.tracking_uri).uri))
    summary = {
        "out": str(args.out),
        "format": document["format"],
        "quantization": document["quantization"],
        "registered_model": document["registered_model"],
        "registered_version": document["registered_version"],
        "files": sorted(document["files"]) + ["manifest.json"],
    }
    if "pushed_to" in document:
        summary["pushed_to"] = document["pushed_to"]
    print(json.dumps(summary))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ftray", description="Hyperparameter sweeps of QLoRA fine-tuning on Ray."
    )
    parser.add_argument("--version", action="version", version=f"ftray {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="progress off: only warnings and errors on stderr",
    )
    talk.add_argument("-v", "--verbose", action="store_true", help="debug lines on stderr too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check spec + data + search space; start nothing")
    _add_spec_args(validate)
    validate.set_defaults(func=cmd_validate)

    train = sub.add_parser("train", help="one trial in-process with the spec's fixed values")
    _add_spec_args(train)
    train.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/<name>/train)"
    )
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser(
        "sweep", help="run the sweep on Ray Tune; prints a leaderboard at the end"
    )
    _add_spec_args(sweep)
    again = sweep.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the spec's last unfinished sweep (Tune state, Optuna study, MLflow "
        "parent run) with the spec it ran with; finished trials are not re-run",
    )
    again.add_argument(
        "--new",
        action="store_true",
        help="start a new sweep even though the spec's last sweep did not finish",
    )
    sweep.add_argument(
        "--each-step",
        action="store_true",
        help="a pipeline task: one sweep per step, each trial training and scoring only its "
        "step; each step's winner is registered as <registered_model>-<step>",
    )
    sweep.add_argument(
        "--step",
        action="append",
        default=[],
        metavar="NAME",
        help="with or without --each-step: sweep only this step (repeatable)",
    )
    sweep.add_argument(
        "--force",
        action="store_true",
        help="move the champion alias to this sweep's best adapter even if it does not beat the champion",
    )
    sweep.set_defaults(func=cmd_sweep)

    board = sub.add_parser("leaderboard", help="trials of the spec's last sweep, best first")
    _add_spec_args(board)
    _add_tracking_uri_arg(board, "else the spec's tracking.uri, ")
    board.set_defaults(func=cmd_leaderboard)

    plan = sub.add_parser(
        "plan", help="expected GPU-hours, cost and wall time of the spec's sweep, before it runs"
    )
    _add_spec_args(plan)
    _add_tracking_uri_arg(plan, "else the spec's tracking.uri, ")
    plan.add_argument(
        "--gpus",
        type=float,
        default=None,
        help="GPUs the sweep will have (fewer trials at once when they cannot hold "
        "max_concurrent_trials of them)",
    )
    plan.set_defaults(func=cmd_plan)

    promote = sub.add_parser("promote", help="move a registry alias to a version by hand")
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="version number")
    promote.add_argument("--alias", default="champion", help="alias to move (default champion)")
    promote.add_argument(
        "--spec", type=Path, default=None, help="a sweep spec whose tracking.uri names the store"
    )
    _add_tracking_uri_arg(promote, "else --spec's tracking.uri, ")
    promote.set_defaults(func=cmd_promote)

    export = sub.add_parser(
        "export",
        help="write a registered adapter as adapter, merged safetensors, GGUF or Ollama",
        description="Export a registered adapter. MODEL_URI: models:/NAME@ALIAS, "
        "models:/NAME/VERSION or runs:/RUN_ID/adapter. Writes manifest.json beside it.",
    )
    export.add_argument("model_uri", metavar="MODEL_URI", help="e.g. models:/trigger-tiny@champion")
    export.add_argument(
        "--format",
        required=True,
        choices=["adapter", "merged", "gguf", "ollama"],
        help="adapter: PEFT adapter + tokenizer; merged: safetensors with the adapter merged; "
        "gguf: llama.cpp file; ollama: GGUF + Modelfile",
    )
    export.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    export.add_argument(
        "--quant",
        default=None,
        help="GGUF type: f16 (default), bf16, q8_0, f32 without a compiler; q4_k_m, q5_k_m, "
        "q6_k, ... with llama.cpp's llama-quantize",
    )
    export.add_argument(
        "--dtype",
        default="auto",
        help="precision the base is loaded and merged in: auto (the base's own), float32, "
        "bfloat16, float16; never 4-bit",
    )
    export.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="also upload the folder to this Hugging Face Hub repo (token from HF_TOKEN)",
    )
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument(
        "--max-drop",
        type=float,
        default=0.05,
        help="exit 1 when a behaviour metric of the exported model, re-measured on the "
        "held-out prompts, falls more than this below the adapter's (default 0.05)",
    )
    _add_tracking_uri_arg(export)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input (one `error:` line each), 1 on failure."""
    args = build_parser().parse_args(argv)
    configure(QUIET if args.quiet else VERBOSE if args.verbose else 0)
    try:
        return args.func(args)
    except InputError as exc:
        for problem in exc.shown:
            print(f"error: {problem}", file=sys.stderr)
        if exc.more:
            print(exc.more, file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from ftray.export.errors import ExportFailed
        from ftray.models.backend import BackendUnavailable
        from ftray.models.peft_backend import BaseModelMissing, NotSafetensors
        from ftray.sweep.ray_session import ClusterUnreachable
        from ftray.tracking.opening import StoreUnavailable
        from ftray.training.report import NonFiniteLoss

        failures = (BackendUnavailable, ExportFailed, BaseModelMissing, NotSafetensors)
        if isinstance(exc, (*failures, NonFiniteLoss, ClusterUnreachable, StoreUnavailable)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        raise


def entry() -> None:
    """The `ftray` command (and `python -m ftray`): `main`, then an exit that skips the
    interpreter's teardown of the modules a sweep imported (MLflow, Ray Tune, Optuna,
    SQLAlchemy...: 1.6 s after a sweep's last line, 0.4 s after MLflow alone).

    The exit comes from an atexit handler registered before any library registers its
    own, so it runs after all of them (Ray's shutdown, MLflow's, each `weakref.finalize`
    such as a TemporaryDirectory's cleanup), and after the interpreter has joined every
    non-daemon thread; it flushes logging and the standard streams and ends the process
    with `main`'s exit code. When `main` raises instead, the interpreter exits as usual."""
    import atexit

    code: list[int] = []
    atexit.register(_exit_without_teardown, code)
    code.append(main())
    sys.exit(code[0])


def _exit_without_teardown(code: list[int]) -> None:
    if not code:
        return
    import contextlib
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more to keep.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code[0])


if __name__ == "__main__":
    entry()
