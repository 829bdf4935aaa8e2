#!/usr/bin/env bash
# Runs the gateway benchmark with the repo's venv; arguments go to gateway_bench.py.
#   bench/run.sh                          # mock vs gateway: ns1, ns32, s1, s32, 10 s each
#   bench/run.sh --peer --litellm prod:1  # the shared side-by-side with LiteLLM
#   bench/run.sh --queue [args]           # queue_latency.py instead
#   bench/run.sh --clients [args]         # upstream_clients.py: the upstream HTTP client candidates
#   bench/run.sh --matrix [args]          # matrix.py: every target through every scenario (--litellm adds LiteLLM)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${REACTOR_PYTHON:-$here/../.venv/bin/python}"
if [ "${1:-}" = "--queue" ]; then
  shift
  exec "$py" "$here/queue_latency.py" "$@"
fi
if [ "${1:-}" = "--clients" ]; then
  shift
  exec "$py" "$here/upstream_clients.py" "$@"
fi
if [ "${1:-}" = "--matrix" ]; then
  shift
  exec "$py" "$here/matrix.py" "$@"
fi
exec "$py" "$here/gateway_bench.py" "$@"
