#!/usr/bin/env bash
# Submit an ftray sweep to a running Ray cluster as a Ray job.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh SPEC [extra ftray args...]
#
# SPEC is a spec path inside this repository, e.g. search_spaces/trigger_llama_gpu.yaml;
# extra arguments go to `ftray sweep` unchanged (--set k=v, --resume). The repository is
# uploaded as the job's working directory with the settings in cluster/runtime_env.yaml.
#
# Environment:
#   RAY_ADDRESS          the cluster's dashboard address (required)
#   RAY_AUTH_MODE        defaults to token; the token is read from ~/.ray/auth_token or
#                        RAY_AUTH_TOKEN (see `ray get-auth-token`)
#   MLFLOW_TRACKING_URI  when set, handed to the job so the driver records there
#   FTRAY_NO_WAIT        1: return once the job is submitted instead of following its logs
set -euo pipefail

usage="usage: cluster/submit.sh SPEC [extra ftray args...]"

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "$usage" >&2
    exit 2
fi

if [[ -z "${RAY_ADDRESS:-}" ]]; then
    echo "error: RAY_ADDRESS is not set; point it at the cluster's dashboard," \
        "e.g. RAY_ADDRESS=http://127.0.0.1:8265 after 'ray dashboard cluster/ray-cluster.yaml'" >&2
    exit 2
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

SPEC="$1"
shift

# Work from the repository root: it is what gets uploaded, and SPEC is relative to it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -f "$SPEC" ]]; then
    echo "error: $SPEC: spec file not found (give its path from the repository root)" >&2
    exit 2
fi

if ! command -v ray >/dev/null 2>&1; then
    echo "error: the 'ray' command is not on PATH; install ray[default] >= 2.52" >&2
    exit 2
fi

# The driver runs on the head node, where this shell's environment does not reach. A
# tracking URI set here travels in the job's env_vars: a copy of runtime_env.yaml with one
# more line under env_vars, its last section. Anyone holding the cluster token can read a
# job's runtime env, so keep passwords out of the URI.
runtime_env=cluster/runtime_env.yaml
if [[ -n "${MLFLOW_TRACKING_URI:-}" ]]; then
    runtime_env="$(mktemp "${TMPDIR:-/tmp}/ftray-runtime-env.XXXXXX")"
    trap 'rm -f "$runtime_env"' EXIT
    cp cluster/runtime_env.yaml "$runtime_env"
    quote="'"
    printf "  MLFLOW_TRACKING_URI: '%s'\n" "${MLFLOW_TRACKING_URI//$quote/$quote$quote}" \
        >>"$runtime_env"
else
    echo "note: MLFLOW_TRACKING_URI is not set here; the driver uses the head node's," \
        "else the spec's tracking.uri, else mlflow.db beside the spec: inside the job's" \
        "files on the head, which Ray deletes" >&2
fi

# An array, so that an empty one adds no argument; the ${a[@]+...} form keeps `set -u`
# quiet about an empty array on bash 3.2 (macOS) too.
wait_flag=()
if [[ "${FTRAY_NO_WAIT:-}" == 1 ]]; then
    wait_flag=(--no-wait)
fi

ray job submit --address "$RAY_ADDRESS" --working-dir . \
    --runtime-env "$runtime_env" ${wait_flag[@]+"${wait_flag[@]}"} \
    -- ftray sweep "$SPEC" "$@"
