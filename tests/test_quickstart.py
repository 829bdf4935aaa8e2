"""The product page's quickstart, as a new user types it, on a fresh ``reactor serve``.

One private-Redis ``reactor serve`` whose OpenRouter points at the mock (the only thing a real
user would not have), a user added with ``reactor auth users add``, then every command of the
page in order, signed in with a password: login, models, test, chat --stream, aliases, an alias
chat, embed and doctor. Each must work exactly as printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .gateway_proc import REPO, UPSTREAM_KEY, free_port

COMMAND_TIMEOUT = 60
START_TIMEOUT = 40
EMAIL, PASSWORD = "user@example.com", "correct horse battery"
PAGE_OVERLAY = """
[aliases.reasoning/cheapest]
strategy = "cheapest"
targets = ["gpt-4o-mini", "claude-3-haiku"]

[aliases.reasoning/best]
strategy = "first"
targets = ["gpt-4", "claude-3-5-sonnet"]
"""


@pytest.fixture
def served(tmp_path: Path, openrouter_mock):
    port = free_port()
    (tmp_path / "ai-models.toml").write_text(PAGE_OVERLAY)
    (tmp_path / "reactor.toml").write_text(f"""
[gateway]
registry_overlay = "./ai-models.toml"
data_dir = "./data"

[gateway.providers.openrouter]
enabled = true
base_url = "{openrouter_mock.url}"
""")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REACTOR_", "REDIS_URL", "OPENROUTER_", "AWS_", "AZURE_"))}
    env.update(PYTHONPATH=str(REPO), REACTOR_AI_BIND=f"127.0.0.1:{port}", OPENROUTER_API_KEY=UPSTREAM_KEY,
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ai/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("reactor serve did not become healthy")
        yield url, env, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_pages_quickstart_as_printed(served) -> None:
    url, env, cwd = served

    def reactor(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=cwd, env={**env, "REACTOR_URL": url},
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert result.returncode == 0, f"reactor {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        return result

    reactor("auth", "users", "add", EMAIL, "--password", PASSWORD)
    login = reactor("auth", "login", EMAIL, "--password", PASSWORD)
    assert EMAIL in login.stdout
    credentials = Path(env["XDG_CONFIG_HOME"]) / "reactor" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600

    models = reactor("ai", "models", "list")
    assert "gpt-4o-mini" in models.stdout and "reasoning/cheapest" in models.stdout

    test = reactor("ai", "test", "gpt-4o-mini", "--prompt", "Explain Reactor.cloud in one sentence")
    assert "Hello from mock: Explain Reactor.cloud in one sentence" in test.stdout
    assert "tokens in" in test.stdout and "cost $" in test.stdout

    chat = reactor("ai", "chat", "claude-3-5-sonnet", "--prompt", "Write a haiku about backends", "--stream")
    assert "Hello from mock: Write a haiku about backends" in chat.stdout

    aliases = reactor("ai", "aliases", "list")
    assert "reasoning/cheapest" in aliases.stdout and "cheapest" in aliases.stdout
    alias_chat = reactor("ai", "chat", "reasoning/cheapest", "--prompt", "Summarize this API design")
    assert "Hello from mock: Summarize this API design" in alias_chat.stdout

    embed = reactor("ai", "embed", "text-embedding-3-small", "Hello world")
    assert "Hello world" in embed.stdout and "dimensions" in embed.stdout

    doctor = reactor("ai", "doctor")
    assert "FAIL" not in doctor.stdout

    whoami = reactor("auth", "whoami", "--json")
    assert json.loads(whoami.stdout)["email"] == EMAIL
    reactor("auth", "logout")
    assert not credentials.exists()
