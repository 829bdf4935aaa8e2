"""``reactor ai …`` as a user runs it: subprocesses against a real gateway, output piped (so plain),
and ``reactor serve --demo`` answering the product page's commands with no provider key."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .gateway_proc import REPO, RunningGateway, free_port

# Upper bound for one CLI command; the gateway answers the mocks in milliseconds.
COMMAND_TIMEOUT = 30
SERVE_START_TIMEOUT = 30
IDLE_TABLE = '[gateway.providers.idle]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
BOX_DRAWING = set("─━│┃┏┓┗┛╭╮╰╯")


def without_idle(gw: RunningGateway) -> RunningGateway:
    """The test gateway's ``idle`` provider never has a worker; switched off, the gateway is healthy."""
    text = gw.config.read_text()
    assert IDLE_TABLE in text
    gw.config.write_text(text.replace(IDLE_TABLE, IDLE_TABLE + "enabled = false\n"))
    return gw


def client_env(url: str, token: str | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "OPENROUTER_", "REDIS_URL"))}
    # No stored sign-in of this machine may take part.
    env.update(PYTHONPATH=str(REPO), REACTOR_URL=url, XDG_CONFIG_HOME=str(home / "config"))
    if token:
        env["REACTOR_TOKEN"] = token
    return env


def reactor(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT, cwd=REPO)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reactor: "), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gw = without_idle(RunningGateway(tmp_path_factory.mktemp("cli-ai"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                                     openrouter_mock.url, local_mock.url))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def env(healthy, tmp_path) -> dict[str, str]:
    return client_env(healthy.url, healthy.token("user_cli"), tmp_path)


def test_models_list_is_plain_text_when_piped(env):
    result = reactor(env, "ai", "models", "list")
    assert result.returncode == 0, result.stderr
    assert not BOX_DRAWING & set(result.stdout) and "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["MODEL", "PROVIDERS"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert rows["mock-local"].split()[1:4] == ["local", "1", "2"]
    assert "openrouter" in rows["gpt-4o-mini"] and "128,000" in rows["gpt-4o-mini"]
    assert "ALIAS" in result.stdout and "reasoning/cheapest" in rows


def test_models_list_json(env):
    result = reactor(env, "ai", "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["id"]: m for m in json.loads(result.stdout)}
    assert models["mock-local"]["providers"] == ["local"]
    assert models["mock-local"]["input_price_per_mtok"] == 1.0 and "chat" in models["mock-local"]["capabilities"]
    assert models["reasoning/cheapest"]["alias"] is True


def test_aliases_list_shows_strategy_and_targets(env):
    result = reactor(env, "ai", "aliases", "list")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("reasoning/cheapest"))
    assert line.split(None, 2) == ["reasoning/cheapest", "cheapest", "gpt-4o-mini, claude-3-haiku"]
    listed = json.loads(reactor(env, "ai", "aliases", "list", "--json").stdout)
    assert {"alias": "reasoning/best", "strategy": "first", "targets": ["gpt-4", "claude-3-5-sonnet"]} in listed


def test_test_prints_the_answer_latency_tokens_and_cost(env):
    result = reactor(env, "ai", "test", "mock-local", "--prompt", "ping")
    assert result.returncode == 0, result.stderr
    answer, stats = result.stdout.strip().splitlines()
    assert answer == "Hello from mock: ping"
    # The mock counts 1 word + 3 per message in, 4 words out; mock-local costs $1 and $2 per million.
    assert "mock-local" in stats and " ms" in stats and "tokens in 4, out 4" in stats and "cost $0.000012" in stats
    data = json.loads(reactor(env, "ai", "test", "mock-local", "--prompt", "ping", "--json").stdout)
    assert data["answer"] == "Hello from mock: ping" and data["tokens_out"] == 4
    assert data["cost_usd"] == pytest.approx(12e-6) and data["latency_ms"] > 0


def test_chat_stream_prints_the_streamed_text(env):
    result = reactor(env, "ai", "chat", "mock-local", "--prompt", "#chunks=5", "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tok0 tok1 tok2 tok3 tok4 \n"
    chunks = [json.loads(line) for line in
              reactor(env, "ai", "chat", "mock-local", "--prompt", "#chunks=3", "--stream", "--json").stdout.splitlines()]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "tok0 tok1 tok2 "


def test_interactive_chat_keeps_the_history(env, local_mock):
    result = reactor(env, "ai", "chat", "mock-local", "--system", "be brief", stdin="first turn\nsecond turn\n/exit\nnever sent\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello from mock: first turn", "Hello from mock: second turn"]
    assert local_mock.wait_for(lambda rs: any(_sent(r, "second turn") for r in rs))
    second = next(r for r in reversed(local_mock.received) if _sent(r, "second turn"))
    assert [(m["role"], m["content"]) for m in second.body["messages"]] == [
        ("system", "be brief"), ("user", "first turn"), ("assistant", "Hello from mock: first turn"),
        ("user", "second turn")]
    assert not any(_sent(r, "never sent") for r in local_mock.received)


def _sent(record, text: str) -> bool:
    messages = (record.body or {}).get("messages") or []
    return bool(messages) and messages[-1].get("content") == text


def test_embed_prints_dimensions_and_first_values(env):
    result = reactor(env, "ai", "embed", "mock-embed", "Hello world", "Bye")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TEXT", "DIMENSIONS", "FIRST", "VALUES"]
    assert lines[1].startswith("Hello world") and " 8 " in lines[1] and lines[1].endswith(", …]")
    assert "8 dimensions" in lines[-1]
    data = json.loads(reactor(env, "ai", "embed", "mock-embed", "Hello world", "--json").stdout)
    assert len(data["data"][0]["embedding"]) == 8


def test_unknown_model_is_one_line_with_the_hint(env):
    result = reactor(env, "ai", "test", "no-such-model", "--prompt", "hi")
    assert_one_line_error(result, "model_not_found", "`reactor ai models list`")
    assert result.stdout == ""


def test_no_token_and_no_gateway_are_one_line_errors(healthy, tmp_path):
    assert_one_line_error(reactor(client_env(healthy.url, None, tmp_path), "ai", "models", "list"),
                          "unauthorized", "reactor auth login")
    dead = client_env(f"http://127.0.0.1:{free_port()}", "token", tmp_path)
    assert_one_line_error(reactor(dead, "ai", "chat", "gpt-4o-mini", "--prompt", "hi", "--stream"),
                          "cannot reach the gateway", "reactor serve")


def test_ctrl_c_ends_a_stream_with_130(env):
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "ai", "chat", "mock-local", "--stream",
                             "--prompt", "#chunks=400 #delay=25"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while b"tok2" not in seen and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert b"tok2" in seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and b"Traceback" not in err


def test_doctor_passes_on_a_healthy_gateway(env):
    result = reactor(env, "ai", "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines), result.stdout
    for check in ("gateway reachable", "token", "redis reachable", "registry valid", "workers for openrouter",
                  "credentials for local", "provider openrouter answers", "provider local answers"):
        assert any(line.split(None, 1)[1].startswith(check + ":") for line in lines), check
    report = json.loads(reactor(env, "ai", "doctor", "--json").stdout)
    assert report["ok"] is True and {c["check"] for c in report["checks"]} >= {"token", "provider local answers"}


def test_doctor_fails_naming_the_provider_whose_upstream_is_down(tmp_path, redis_url, openrouter_mock):
    down = f"http://127.0.0.1:{free_port()}/v1"
    gw = without_idle(RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                                     openrouter_mock.url, down))
    gw.start()
    try:
        result = reactor(client_env(gw.url, gw.token("user_doctor"), tmp_path), "ai", "doctor")
    finally:
        gw.stop()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1, result.stdout
    assert "provider local answers" in failed[0] and "mock-local" in failed[0] and "fix:" in failed[0]
    assert any(line.startswith("ok") and "provider openrouter answers" in line for line in result.stdout.splitlines())


def test_doctor_without_a_gateway_fails_at_once(tmp_path):
    result = reactor(client_env(f"http://127.0.0.1:{free_port()}", "token", tmp_path), "ai", "doctor")
    assert result.returncode != 0
    assert result.stdout.startswith("FAIL  gateway reachable") and "reactor serve" in result.stdout


# --- reactor serve --demo: the product page's commands with no provider key ----------------------


@pytest.fixture
def demo_gateway(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REACTOR_", "REDIS_URL", "OPENROUTER_", "AWS_", "AZURE_", "LOCAL_LLM_"))}
    env.update(PYTHONPATH=str(REPO), REACTOR_AI_BIND=f"127.0.0.1:{port}", REACTOR_DATA_DIR=str(data))
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--demo"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/ai/v1/health", timeout=1)
                if health.status_code == 200 and health.json()["workers"] == {"demo": 1}:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("reactor serve --demo did not become healthy")
        yield url, env
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_serve_demo_answers_the_pages_commands_without_keys(demo_gateway, tmp_path):
    url, server_env = demo_gateway
    token = subprocess.run([sys.executable, "-m", "api.cli", "auth", "token", "user_demo"], env=server_env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert token.returncode == 0, token.stderr
    env = client_env(url, token.stdout.strip(), tmp_path)

    models = reactor(env, "ai", "models", "list")
    assert models.returncode == 0, models.stderr
    rows = {line.split()[0]: line.split() for line in models.stdout.splitlines() if line.strip()}
    assert rows["gpt-4o-mini"][1] == "demo" and rows["claude-3-5-sonnet"][1] == "demo"

    test = reactor(env, "ai", "test", "gpt-4o-mini", "--prompt", "Explain Reactor.cloud in one sentence")
    assert test.returncode == 0, test.stderr
    answer, stats = test.stdout.strip().splitlines()
    assert "Reactor.cloud" in answer
    assert "gpt-4o-mini" in stats and "tokens in 5" in stats and "cost $0.0000" in stats

    chat = reactor(env, "ai", "chat", "claude-3-5-sonnet", "--prompt", "Write a haiku about backends", "--stream")
    assert chat.returncode == 0, chat.stderr
    assert len(chat.stdout.strip().splitlines()) == 3 and "backends" in chat.stdout.lower()

    embed = reactor(env, "ai", "embed", "text-embedding-3-small", "Hello world")
    assert embed.returncode == 0, embed.stderr
    assert embed.stdout.splitlines()[1].startswith("Hello world") and "1536 dimensions" in embed.stdout

    aliases = reactor(env, "ai", "aliases", "list")
    assert "reasoning/cheapest" in aliases.stdout
    alias_chat = reactor(env, "ai", "chat", "reasoning/cheapest", "--prompt", "Summarize this API design")
    assert alias_chat.returncode == 0 and "API design" in alias_chat.stdout

    doctor = reactor(env, "ai", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "provider demo answers" in doctor.stdout
