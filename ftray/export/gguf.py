"""GGUF export with llama.cpp's own converter.

No wheel ships llama.cpp's `convert_hf_to_gguf.py`, but the llama-cpp-python sdist carries the
whole llama.cpp tree under `vendor/llama.cpp/`. On first use we download that sdist (pinned to
`LLAMA_CPP_PYTHON_VERSION`; download only, nothing is built) and keep the llama.cpp sources,
minus tests, docs, media and vocab models, in a cache:

    $FTRAY_CACHE_DIR/llama.cpp/<version>/    (else ~/.cache/ftray/llama.cpp/<version>/)
        convert_hf_to_gguf.py, conversion/, gguf-py/   the converter and the gguf it matches
        CMakeLists.txt, ggml/, src/, tools/, ...       enough to build llama-quantize

`$FTRAY_LLAMA_CPP_DIR` (a llama.cpp checkout) replaces the cache.

The converter writes f32, f16, bf16 and q8_0 by itself. Other types (q4_k_m, ...) need
llama.cpp's compiled `llama-quantize`: `$FTRAY_LLAMA_QUANTIZE`, else one on PATH, else one built
in `<converter dir>/build/bin/`. We never compile anything ourselves; the error says how to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ftray.errors import InputError
from ftray.export.errors import ExportFailed
from ftray.log import get_logger

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CONVERTER = "convert_hf_to_gguf.py"

QUANTS_WITHOUT_COMPILER = ("f32", "f16", "bf16", "q8_0")
QUANTS_WITH_QUANTIZER = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q2_k_s",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
)

# Top-level entries of vendor/llama.cpp that neither the converter nor a build needs
# (the vocab models alone are 75 MB, the docs 38 MB).
_NOT_CACHED = frozenset(
    {".git", ".github", ".devops", ".gemini", ".pi", "docs", "models", "media", "benches", "tests"}
)
_SDIST_TREE = "vendor/llama.cpp/"
_TAIL_LINES = 20


def converter_dir() -> Path:
    """The llama.cpp tree whose converter we run: `$FTRAY_LLAMA_CPP_DIR`, else the cache.

    The cache is filled from the llama-cpp-python sdist on first use. Raises `ExportFailed`
    when `$FTRAY_LLAMA_CPP_DIR` has no converter or the sdist cannot be fetched.
    """
    override = os.environ.get("FTRAY_LLAMA_CPP_DIR")
    if override:
        path = Path(override).expanduser()
        if not (path / CONVERTER).is_file():
            raise ExportFailed(
                f"FTRAY_LLAMA_CPP_DIR={override} has no {CONVERTER}: point it at a llama.cpp "
                f"checkout, or unset it to let ftray fetch llama.cpp's converter into "
                f"{cache_dir()}"
            )
        return path
    target = cache_dir()
    if _complete(target):
        return target
    return _fetch(target)


def cache_dir() -> Path:
    """Where the llama.cpp tree of the pinned llama-cpp-python version is cached."""
    from ftray.models.tiny import ftray_cache  # $FTRAY_CACHE_DIR, else ~/.cache/ftray

    return ftray_cache() / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION


def convert(model_dir: Path, out_file: Path, quant: str, name: str | None = None) -> Path:
    """Write the Hugging Face model in `model_dir` as a GGUF file of type `quant`, its
    `general.name` `name` (else the converter's guess from the folder's name); return it.

    Raises `InputError` for an unknown `quant` or a folder without `config.json`;
    `ExportFailed` when the converter or `llama-quantize` fails or cannot be found.
    """
    kind = check_quant(quant)
    model_dir, out_file = Path(model_dir), Path(out_file)
    if not (model_dir / "config.json").is_file():
        raise InputError.at(model_dir, None, "not a Hugging Face model folder (no config.json)")
    tree = converter_dir()
    quantizer = None if kind in QUANTS_WITHOUT_COMPILER else _find_quantizer(tree)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name in the same folder, so a failure leaves no partial file.
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out_file.parent))
    try:
        partial = work / out_file.name
        if quantizer is None:
            _run_converter(tree, model_dir, partial, kind, name)
        else:
            f16 = work / "model-f16.gguf"
            _run_converter(tree, model_dir, f16, "f16", name)
            get_logger().info(f"quantizing to {kind} with {quantizer}")
            _run([str(quantizer), str(f16), str(partial), kind.upper()], "llama-quantize")
        os.replace(partial, out_file)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_file


def check_quant(quant: str) -> str:
    """The GGUF type name in lower case; `InputError` (exit 2) for a type we cannot write."""
    kind = quant.strip().lower()
    if kind in QUANTS_WITHOUT_COMPILER or kind in QUANTS_WITH_QUANTIZER:
        return kind
    raise InputError.at(
        "--quant",
        None,
        f"unknown GGUF type {quant!r}; valid: {', '.join(QUANTS_WITHOUT_COMPILER)} (written by "
        f"the converter), {', '.join(QUANTS_WITH_QUANTIZER)} (need llama-quantize)",
    )


def _run_converter(
    tree: Path, model_dir: Path, out_file: Path, outtype: str, name: str | None
) -> None:
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    # The converter's own gguf-py first: a pip-installed gguf may not match this converter.
    paths = [str(tree / "gguf-py"), str(tree)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    get_logger().info(
        f"converting the merged model to GGUF ({outtype}) with llama.cpp's {CONVERTER}"
    )
    command = [
        sys.executable,
        str(tree / CONVERTER),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
        *(["--model-name", name] if name else []),
    ]
    _run(command, CONVERTER, env=env)


def _run(command: list[str], name: str, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ExportFailed(f"could not run {name} ({command[0]}): {exc}") from None
    for line in result.stderr.splitlines():
        get_logger().debug(f"{name}: {line}")
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-_TAIL_LINES:])
        hint = ""
        if "No module named" in tail:
            hint = (
                "\n(the converter needs torch, transformers, numpy, sentencepiece, pyyaml, tqdm "
                "and requests in this Python environment)"
            )
        raise ExportFailed(f"{name} failed (exit code {result.returncode}):\n{tail}{hint}")


def _find_quantizer(tree: Path) -> Path:
    configured = os.environ.get("FTRAY_LLAMA_QUANTIZE")
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ExportFailed(f"FTRAY_LLAMA_QUANTIZE={configured} is not an executable file")
    found = shutil.which("llama-quantize")
    if found:
        return Path(found)
    built = tree / "build" / "bin" / "llama-quantize"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    build = tree / "build"
    raise ExportFailed(
        "this GGUF type needs llama.cpp's llama-quantize, which was not found "
        "(FTRAY_LLAMA_QUANTIZE is unset and there is no llama-quantize on PATH or in "
        f"{build / 'bin'}). Build it from the cached llama.cpp tree (needs cmake and a C++ "
        f"compiler; a few minutes):\n"
        f"  cmake -S {tree} -B {build} -DLLAMA_CURL=OFF -DGGML_NATIVE=ON "
        f"-DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release\n"
        f"  cmake --build {build} --target llama-quantize -j\n"
        f"then run again (or set FTRAY_LLAMA_QUANTIZE={build / 'bin' / 'llama-quantize'}); "
        f"or export with --quant one of {', '.join(QUANTS_WITHOUT_COMPILER)}, which need no "
        "compiler"
    )


def _complete(tree: Path) -> bool:
    return (tree / CONVERTER).is_file() and (tree / "gguf-py" / "gguf").is_dir()


def _fetch(target: Path) -> Path:
    version = LLAMA_CPP_PYTHON_VERSION
    log = get_logger()
    log.info(
        f"fetching llama.cpp's converter (llama-cpp-python {version} sdist) from the package index"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".fetching-{version}-", dir=target.parent))
    try:
        sdist = _download_sdist(work / "download")
        staging = work / "llama.cpp"
        log.info(f"unpacking llama.cpp from {sdist.name} into {target}")
        _extract_tree(sdist, staging)
        if not _complete(staging):
            raise ExportFailed(
                f"{sdist.name} has no {_SDIST_TREE}{CONVERTER} and gguf-py/: " + _how_to_fix(target)
            )
        try:
            staging.rename(target)
        except OSError:
            # Another process filled the cache first; its copy is the same.
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _download_sdist(folder: Path) -> Path:
    version = LLAMA_CPP_PYTHON_VERSION
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "-d",
        str(folder),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise ExportFailed(f"could not run pip: {exc}. " + _how_to_fix(cache_dir())) from None
    sdists = sorted(folder.glob("llama_cpp_python-*.tar.gz")) if folder.is_dir() else []
    if result.returncode != 0 or not sdists:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-_TAIL_LINES:])
        raise ExportFailed(
            f"downloading the llama-cpp-python {version} sdist failed "
            f"(pip exit code {result.returncode}):\n{tail}\n" + _how_to_fix(cache_dir())
        )
    return sdists[0]


def _extract_tree(sdist: Path, staging: Path) -> None:
    """Unpack `<top>/vendor/llama.cpp/` of the sdist into `staging`, minus `_NOT_CACHED`."""
    staging.mkdir(parents=True)
    root = staging.resolve()
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            top, _, rest = member.name.partition("/")
            if not rest.startswith(_SDIST_TREE):
                continue
            relative = rest[len(_SDIST_TREE) :]
            if not relative or relative.split("/", 1)[0] in _NOT_CACHED:
                continue
            dest = (staging / relative).resolve()
            if root not in dest.parents:  # an absolute or `..` path: not ours to write
                continue
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, open(dest, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(dest, 0o755 if member.mode & 0o111 else 0o644)
            # Links and devices are skipped: the tree has none that the converter needs.


def _how_to_fix(target: Path) -> str:
    version = LLAMA_CPP_PYTHON_VERSION
    return (
        "To fix: set FTRAY_LLAMA_CPP_DIR to a llama.cpp checkout "
        "(git clone https://github.com/ggml-org/llama.cpp), or on a machine with network run "
        f"`pip download llama-cpp-python=={version} --no-deps --no-binary :all:`, unpack the "
        f"sdist and set FTRAY_LLAMA_CPP_DIR to its vendor/llama.cpp folder (ftray would cache "
        f"it at {target})"
    )
