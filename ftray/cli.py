"""The `ftray` command line: validate and train (sweeps build on these)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftray.errors import InputError

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT = 0, 1, 2


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


def cmd_validate(args: argparse.Namespace) -> int:
    """Check spec, data and search space; start nothing."""
    from ftray.space import check_search
    from ftray.spec import load_spec
    from ftray.tasks import load_task

    spec = load_spec(args.spec, args.overrides)
    task = load_task(spec)
    check_search(spec, task)
    dims = len(spec.search.space) if spec.search else 0
    print(
        f"ok: {args.spec}: task {spec.task.kind}, {len(task.train_rows())} training rows, "
        f"{len(task.eval_cases())} held-out prompts, model {spec.model.base}, "
        f"{dims} search dimension(s)"
    )
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """One trial in-process with the spec's fixed values; last stdout line is the metrics JSON."""
    from ftray.spec import load_spec
    from ftray.tasks import load_task

    spec = load_spec(args.spec, args.overrides)
    task = load_task(spec)
    out = args.out or Path("runs") / spec.name / "train"

    from ftray.train import log, train_trial

    report = train_trial(spec, out, task=task)
    log(f"adapter, metrics.json and samples.jsonl written to {out}")
    print(json.dumps({"epoch": report.epoch, **report.metrics}))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ftray", description="Hyperparameter sweeps of QLoRA fine-tuning on Ray."
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input (one `error:` line each), 1 on failure."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from ftray.backends import BackendUnavailable

        if isinstance(exc, BackendUnavailable):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        raise


if __name__ == "__main__":
    sys.exit(main())
