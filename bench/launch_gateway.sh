#!/usr/bin/env bash
# Starts `reactor serve` in front of a mock upstream; the GATEWAY_CMD of ../shared/bench/peer_bench.py.
#
#   bench/launch_gateway.sh MOCK_URL PORT
#
# Writes reactor.toml into $REACTOR_BENCH_RUN_DIR (default: a new temp dir) and execs the
# gateway, so stopping this process group stops the API and its worker.
#   REACTOR_BENCH_RUN_DIR     holds reactor.toml and data/ (the JWT key: mint tokens with the same dir)
#   REACTOR_BENCH_KEY_PREFIX  Redis key prefix (default bench-<pid>:); delete its keys afterwards
#   REDIS_URL                 default redis://127.0.0.1:6379/0 (unset, `reactor serve` would start its own)
#   OPENROUTER_API_KEY        default sk-mock-upstream
#   REACTOR                   the reactor executable (default: the repo's .venv)
set -euo pipefail
usage="usage: launch_gateway.sh MOCK_URL PORT"
mock_url=${1:?$usage}
port=${2:?$usage}
here="$(cd "$(dirname "$0")" && pwd)"
run_dir=${REACTOR_BENCH_RUN_DIR:-$(mktemp -d /tmp/reactor-bench-XXXXXX)}
mkdir -p "$run_dir"
cat > "$run_dir/reactor.toml" <<EOF
[gateway]
data_dir = "$run_dir/data"
key_prefix = "${REACTOR_BENCH_KEY_PREFIX:-bench-$$:}"
[gateway.providers.openrouter]
base_url = "$mock_url"
EOF
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export OPENROUTER_API_KEY="${OPENROUTER_API_KEY:-sk-mock-upstream}"
export REACTOR_AI_BIND="127.0.0.1:$port"
# Anything that would make the gateway read another config, key or identity service.
unset REACTOR_CONFIG REACTOR_DATA_DIR REACTOR_AI_AUTH_URL
exec "${REACTOR:-$here/../.venv/bin/reactor}" serve --config "$run_dir/reactor.toml"
