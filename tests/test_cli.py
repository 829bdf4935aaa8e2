"""The ``reactor`` command: one-box serve with its private Redis, tokens, start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import openai
import pytest

from api.auth import LocalKey

from .gateway_proc import UPSTREAM_KEY, free_port


def reactor(*args: str, cwd: Path, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "REDIS_URL", "OPENROUTER_"))}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_auth_token_mints_a_token_for_the_local_key(tmp_path):
    result = reactor("auth", "token", "user_42", "--ttl", "600", cwd=tmp_path,
                     env={"REACTOR_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    key = LocalKey.load_or_create(tmp_path / "data")
    claims = jwt.decode(token, key.private.public_key(), algorithms=["EdDSA"])
    assert claims["sub"] == "user_42" and claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize("config, words", [
    ("[gateway]\nqueue_timeout = 'soon'\n", "gateway.queue_timeout"),
    ("[gateway]\nbogus = 1\n", "gateway.bogus"),
    ("[gateway\n", "not valid TOML"),
    ("[gateway.providers.foundry]\nenabled = true\n", "gateway.providers.foundry.endpoint"),
    ("[gateway.providers.mine]\nkind = 'openai'\n", "gateway.providers.mine.base_url"),
    ("[gateway]\nregistry_overlay = './missing.toml'\n", "missing.toml"),
    ("[gateway]\nregistry_overlay = './bad.toml'\n", 'aliases."x".strategy'),
    ("[gateway]\nregistry_url = 'http://127.0.0.1:9/models.toml'\nregistry_timeout = 1\n", "127.0.0.1:9"),
])
def test_bad_config_fails_start_up_naming_file_and_key(tmp_path, config, words):
    (tmp_path / "reactor.toml").write_text(config)
    (tmp_path / "bad.toml").write_text('[aliases.x]\nstrategy = "fancy"\ntargets = ["gpt-4o-mini"]\n')
    result = reactor("worker", cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0", "OPENROUTER_API_KEY": "k"})
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr


def test_optional_registry_url_may_fail(tmp_path):
    (tmp_path / "reactor.toml").write_text(
        "[gateway]\nregistry_url = 'http://127.0.0.1:9/models.toml'\nregistry_timeout = 1\nregistry_optional = true\n")
    # Gets past the registry to the Redis connection, which is what fails here.
    result = reactor("worker", cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0", "OPENROUTER_API_KEY": "k"})
    assert "continuing with the built-in registry" in result.stderr
    assert result.returncode == 2 and "cannot use Redis" in result.stderr and "Traceback" not in result.stderr


def test_missing_provider_key_fails_start_up(tmp_path):
    result = reactor("worker", cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert "OPENROUTER_API_KEY" in result.stderr


def test_serve_runs_everything_with_a_private_redis(tmp_path, openrouter_mock):
    port = free_port()
    (tmp_path / "reactor.toml").write_text(f"""
[ai]
data_dir = "./data"
[gateway.providers.openrouter]
base_url = "{openrouter_mock.url}"
""")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "REDIS_URL", "OPENROUTER_"))}
    env = {**base, "OPENROUTER_API_KEY": UPSTREAM_KEY, "REACTOR_AI_BIND": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--workers", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:

        deadline = time.monotonic() + 30
        url = f"http://127.0.0.1:{port}/ai/v1"
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/health", timeout=1)
                if health.status_code == 200 and health.json()["workers"]["openrouter"] == 2:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("reactor serve did not become healthy")
        token = reactor("auth", "token", "user_serve", cwd=tmp_path).stdout.strip()
        client = openai.OpenAI(base_url=url, api_key=token, max_retries=0, timeout=10)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one box"}])
        assert answer.choices[0].message.content == "Hello from mock: one box"
        socket_path = tmp_path / "data" / "redis" / "redis.sock"
        assert socket_path.exists()
    finally:
        proc.terminate()  # only the serve process: it must stop its worker and Redis itself
        try:
            output, _ = proc.communicate(timeout=20)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "Started a private Redis at unix://" in output
    assert f"listening on http://127.0.0.1:{port}/ai/v1" in output
    assert "reactor auth token" in output
    assert not socket_path.exists() or _dead(socket_path)


def _dead(socket_path: Path) -> bool:
    import redis
    try:
        redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
    except redis.ConnectionError:
        return True
    return False
