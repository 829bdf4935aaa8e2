"""The JavaScript client (``sdk/js``, ``@reactor/client``): its Node tests, run against a live gateway.

``npm test`` builds the package and runs ``node --test``: the SSE parser and the session logic on
their own, then every call against the gateway at ``REACTOR_URL`` with ``REACTOR_TOKEN``, the
official ``openai`` package pointed at it, and the product page's snippets as printed. When the
gateway serves the Identity API (``POST /auth/v1/token`` answers something other than 404), a
user is made for the page's ``signInWithPassword`` snippet and passed as ``REACTOR_TEST_EMAIL`` /
``REACTOR_TEST_PASSWORD``; without it that snippet's test is skipped, saying why.

``tests/run.sh`` installs the Node packages (``npm ci``) and builds; run alone, this test installs
them when ``node_modules`` is missing. Skipped when ``node`` is not installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from .gateway_proc import REPO

SDK = REPO / "sdk" / "js"
INSTALL_TIMEOUT = 300
TEST_TIMEOUT = 180
USER = "user_js_client"

NODE = shutil.which("node")
NPM = shutil.which("npm")


def _node_major() -> int:
    if NODE is None:
        return 0
    try:
        version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(version.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


pytestmark = pytest.mark.skipif(
    NPM is None or _node_major() < 18,
    reason="node 18+ (with npm) not found on PATH: the JavaScript client in sdk/js is not tested",
)


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``args`` in sdk/js; on timeout its whole process group (npm and the node it started) is killed."""
    proc = subprocess.Popen(args, cwd=SDK, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{' '.join(args)}` in sdk/js took over {timeout:.0f} s:\n{out[-6000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _ensure_packages() -> None:
    if (SDK / "node_modules" / ".package-lock.json").exists():
        return
    done = _run([NPM, "ci", "--no-audit", "--no-fund"], INSTALL_TIMEOUT)
    if done.returncode != 0:
        pytest.fail(f"npm ci in sdk/js failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def _identity_user(gateway) -> dict[str, str]:
    """A user to sign in as, when the gateway serves the Identity API; ``{}`` when it does not."""
    probe = httpx.post(f"{gateway.url}/auth/v1/token", params={"grant_type": "password"}, json={}, timeout=10)
    if probe.status_code == 404:
        return {}
    email = f"js-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    made = subprocess.run(
        [sys.executable, "-m", "api.cli", "auth", "users", "add", email, "--password", password,
         "--config", str(gateway.config)],
        cwd=gateway.workdir, env=gateway.env, capture_output=True, text=True, timeout=60,
    )
    if made.returncode != 0:
        pytest.fail(f"`reactor auth users add` failed ({made.returncode}):\n{made.stdout}\n{made.stderr}")
    return {"REACTOR_TEST_EMAIL": email, "REACTOR_TEST_PASSWORD": password}


def test_js_client(gateway):
    _ensure_packages()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env.update(REACTOR_URL=gateway.url, REACTOR_TOKEN=gateway.token(USER), NO_COLOR="1")
    env.update(_identity_user(gateway))
    done = _run([NPM, "test"], TEST_TIMEOUT, env)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"npm test in sdk/js failed ({done.returncode}):\n{output[-12000:]}\n{gateway.logs()[-4000:]}")
    # Node's report (with the reason of any skipped test) shows with -s.
    print(output)
