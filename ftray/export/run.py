"""`ftray export`: one registered adapter to one format in one folder, with `manifest.json`.

The export is written into a staging folder beside `--out` and renamed into place when
complete, so a failed export never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftray import __version__
from ftray.config.files import sha256_of_file as sha256_of
from ftray.errors import InputError
from ftray.log import get_logger

FORMATS = ("adapter", "merged", "gguf", "ollama")
MANIFEST = "manifest.json"
DEFAULT_QUANT = "f16"


@dataclass(frozen=True)
class ExportRequest:
    """What the user asked `ftray export` for."""

    model_uri: str
    format: str
    out: Path
    quant: str | None = None
    dtype: str = "auto"
    push_to_hub: str | None = None
    force: bool = False
    max_drop: float = 0.05
    """How far a behaviour metric of the export may fall below the adapter's (exit 1 beyond)."""

    @property
    def quantization(self) -> str | None:
        """The GGUF quantisation (gguf and ollama only)."""
        if self.format in ("gguf", "ollama"):
            return (self.quant or DEFAULT_QUANT).strip().lower()
        return None


def check_request(request: ExportRequest) -> None:
    """Bad input found before anything is loaded: exit 2 with one `error:` line."""
    from ftray.export.formats import DTYPES
    from ftray.export.source import parse_model_uri

    parse_model_uri(request.model_uri)
    if request.format not in FORMATS:
        raise InputError.at("--format", None, f"'{request.format}' is not one of {FORMATS}")
    if request.quant is not None:
        if request.format not in ("gguf", "ollama"):
            raise InputError.at(
                "--quant",
                None,
                f"only gguf and ollama exports are quantised; {request.format} keeps the "
                "adapter's and base's own precision (drop --quant)",
            )
        from ftray.export.gguf import check_quant

        check_quant(request.quant)
    if not 0 <= request.max_drop <= 1:
        raise InputError.at("--max-drop", None, f"{request.max_drop:g} is not between 0 and 1")
    if request.dtype not in DTYPES:
        raise InputError.at("--dtype", None, f"'{request.dtype}' is not one of {DTYPES}")
    out = request.out
    if out.exists() and not out.is_dir():
        raise InputError.at(out, None, "--out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not request.force:
        raise InputError.at(
            out, None, "--out is not empty; pick an empty folder or pass --force to replace it"
        )


def manifest(request: ExportRequest, source: Any, folder: Path, details: dict[str, Any]) -> dict:
    """Where the export came from and what it holds (`manifest.json`)."""
    lineage = source.lineage
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    objective_value = lineage.get("objective_value")
    return {
        "ftray_version": __version__,
        "format": request.format,
        "quantization": request.quantization,
        **details,
        "model_uri": request.model_uri,
        "registered_model": source.registered_name,
        "registered_version": source.registered_version,
        "run_id": source.run_id,
        "base_model": lineage.get("base_model"),
        "base_revision": lineage.get("base_revision"),
        "dataset_sha256": lineage.get("dataset_sha256"),
        "heldout_fingerprint": lineage.get("heldout_fingerprint"),
        "spec_sha256": lineage.get("spec_sha256"),
        "objective": {
            "metric": lineage.get("objective"),
            "mode": lineage.get("mode"),
            "value": float(objective_value) if objective_value is not None else None,
        },
        "trial_id": lineage.get("trial_id"),
        "sweep_run_id": lineage.get("sweep_run_id"),
        "metrics": source.metrics,
        "files": {str(p.relative_to(folder)): sha256_of(p) for p in files},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _model_name(source: Any) -> str:
    """What the export is called: the registered name and version, else the run."""
    name = source.registered_name or f"run-{source.run_id[:12]}"
    if source.registered_version:
        name += f"-v{source.registered_version}"
    return name


def _gguf_name(source: Any, quant: str) -> str:
    return f"{_model_name(source)}-{quant}.gguf"


def _write(request: ExportRequest, source: Any, staging: Path, work: Path) -> dict[str, Any]:
    """Write the requested format into `staging`; returns format details for the manifest."""
    from ftray.export import formats
    from ftray.training.trial import quiet_libraries

    quiet_libraries()
    log = get_logger()
    if request.format == "adapter":
        formats.write_adapter(source, staging)
        return {"dtype": None}
    if request.format == "merged":
        log.info(f"merging the adapter into {source.lineage['base_model']}")
        return formats.write_merged(source, staging, request.dtype)

    from ftray.export.gguf import convert

    quant = request.quantization or DEFAULT_QUANT
    name = _gguf_name(source, quant)
    modelfile_text = None
    if request.format == "ollama":
        from ftray.export.ollama import modelfile
        from ftray.models.peft_backend import load_tokenizer

        # Derived before merging, so a template Ollama cannot express is refused at once;
        # the merged folder carries this same tokenizer and chat template.
        tokenizer = load_tokenizer(str(source.adapter_dir))
        modelfile_text = modelfile(tokenizer, name, where=request.model_uri)
    log.info(f"merging the adapter into {source.lineage['base_model']}")
    details = formats.write_merged(source, work / "merged", request.dtype)
    convert(work / "merged", staging / name, quant, name=_model_name(source))
    details["gguf"] = name
    if modelfile_text is not None:
        (staging / "Modelfile").write_text(modelfile_text)
    return details


def _recheck(
    request: ExportRequest, client: Any, source: Any, staging: Path, work: Path
) -> Any | None:
    """The behaviour suite on the merged model the export wrote (or converted from); None
    for an adapter export, whose files are the registered ones."""
    from ftray.export.recheck import heldout_task, not_checked, recheck_merged

    if request.format == "adapter":
        return None
    merged = staging if request.format == "merged" else work / "merged"
    task, why = heldout_task(client, source)
    if task is None:
        return not_checked(why or "no held-out prompts", request.max_drop)
    get_logger().info(f"re-checking the export on {len(task.eval_cases())} held-out prompts")
    return recheck_merged(merged, task, source, request.max_drop)


def _record_recheck(client: Any, source: Any, request: ExportRequest, recheck: Any) -> None:
    """Tag the registered version with the export's metrics; ExportFailed (the files kept)
    when one fell more than --max-drop below the adapter's."""
    from ftray.export.errors import ExportFailed

    if source.registered_name and source.registered_version:
        for name, pair in recheck.metrics.items():
            client.set_model_version_tag(
                source.registered_name,
                source.registered_version,
                f"ftray.export.{request.format}.{name}",
                f"{pair['export']:.6g}",
            )
    shown = ", ".join(
        f"{k} {v['export']:.3g} (adapter {v['adapter']:.3g})" for k, v in recheck.metrics.items()
    )
    if shown:
        get_logger().info(f"export re-checked: {shown}")
    fell = recheck.fell
    if fell:
        raise ExportFailed(
            f"{request.model_uri} as {request.format}: {'; '.join(fell)}, more than "
            f"--max-drop {request.max_drop:g} below the adapter's on {recheck.held_out} held-out "
            f"prompts; the files are kept in {request.out} (manifest.json has every metric)"
        )


def _readable(folder: Path) -> None:
    """Folder and files with the usual permissions (a temporary folder is owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export_model(request: ExportRequest, client: Any) -> dict[str, Any]:
    """Export `request.model_uri` from the store behind `client`; returns the manifest."""
    from ftray.export.source import fetch_source

    check_request(request)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    log = get_logger()
    out = request.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ftray-export-") as tmp:
        work = Path(tmp)
        source = fetch_source(client, request.model_uri, work / "source")
        what = request.format + (f" {request.quantization}" if request.quantization else "")
        log.info(
            f"exporting {request.model_uri}"
            + (f" (version {source.registered_version})" if source.registered_version else "")
            + f", base {source.lineage['base_model']}, as {what} to {request.out}"
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            details = _write(request, source, staging, work)
            recheck = _recheck(request, client, source, staging, work)
            document = manifest(request, source, staging, details)
            if recheck is not None:
                document["recheck"] = recheck.manifest()
            (staging / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")
            _readable(staging)
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info(f"wrote {len(document['files']) + 1} files to {request.out}")
    if recheck is not None:
        _record_recheck(client, source, request, recheck)
    if request.push_to_hub:
        from ftray.export.hub import push_to_hub

        url = push_to_hub(
            out,
            request.push_to_hub,
            commit_message=f"ftray export of {request.model_uri} ({what})",
        )
        document["pushed_to"] = url
    return document
