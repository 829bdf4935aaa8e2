"""Runs a real gateway for integration tests: ``reactor api`` and ``reactor worker`` as child
processes against the real Redis, with provider tables pointing at the mock upstreams.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import redis

from api.auth import LocalKey

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-mock-upstream"
LOCAL_KEY = "sk-local-secret-key-0123"
START_TIMEOUT = 30.0

OVERLAY = """
# The page's snippet, verbatim
[aliases.reasoning/cheapest]
strategy = "cheapest"
targets = ["gpt-4o-mini", "claude-3-haiku"]

[aliases.reasoning/best]
strategy = "first"
targets = ["gpt-4", "claude-3-5-sonnet"]

[models."mock-local"]
owned_by = "mock"
capabilities = ["chat", "tools", "streaming"]
routes = [{ provider = "local", model = "mock/local-model" }]
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
cached_input_price_per_mtok = 0.5

[models."mock-embed"]
owned_by = "mock"
capabilities = ["embeddings"]
routes = [{ provider = "local", model = "mock/embed" }]

[models."unserved-model"]
owned_by = "mock"
capabilities = ["chat", "streaming"]
routes = [{ provider = "idle", model = "idle/model" }]
"""


@contextlib.contextmanager
def mock_upstream_process() -> Iterator[str]:
    """The OpenAI-flavoured mock (``tests/mocks/openai.py``) in a process of its own, for loads the
    test process's own threads would distort; yields its base URL, key :data:`LOCAL_KEY`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.mocks.openai", "--port", str(port), "--api-key", LOCAL_KEY],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {LOCAL_KEY}"}, timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the mock upstream did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningGateway:
    """A gateway under test.

    :param workdir: holds reactor.toml, the overlay, the data dir and the logs.
    :param redis_url: the real Redis.
    :param prefix: key prefix unique to this gateway.
    :param openrouter_url: base URL of the OpenRouter-flavoured mock.
    :param local_url: base URL of the OpenAI-flavoured mock behind the generic provider ``local``.
    :param extra: extra ``[gateway]`` lines.
    :param providers: extra provider tables (TOML), e.g. ``[gateway.providers.bedrock]`` for a mock.
    :param overlay: extra registry overlay TOML.
    :param env: extra environment variables (provider credentials).
    :param worker_providers: the provider queues the worker serves (all must have a live worker
        before :meth:`start` returns).
    :param api_args: extra command-line arguments of ``reactor api`` (e.g. ``--log-format json``).
    :param worker_args: extra command-line arguments of the first ``reactor worker``
        (e.g. ``--metrics-port``).
    """

    def __init__(self, workdir: Path, redis_url: str, prefix: str, openrouter_url: str, local_url: str,
                 extra: str = "", *, providers: str = "", overlay: str = "", env: dict[str, str] | None = None,
                 worker_providers: tuple[str, ...] = ("openrouter", "local"), api_args: tuple[str, ...] = (),
                 worker_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/ai/v1"
        self.data_dir = workdir / "data"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "ai-models.toml").write_text(OVERLAY + overlay)
        self.worker_providers = worker_providers
        self.api_args = api_args
        self.worker_args = worker_args
        self.config = workdir / "reactor.toml"
        self.config.write_text(f"""
[gateway]
registry_overlay = "./ai-models.toml"
data_dir = "./data"
key_prefix = "{prefix}"
queue_timeout = 3
heartbeat_interval = 0.5
read_timeout = 4
max_body_bytes = 200000
{"" if "drain_seconds" in extra else "drain_seconds = 0  # tests stop gateways often; test_drain.py sets its own"}
{extra}

[gateway.providers.openrouter]
enabled = true
base_url = "{openrouter_url}"

[gateway.providers.local]
kind = "openai"
base_url = "{local_url}"
api_key_env = "LOCAL_LLM_KEY"

[gateway.providers.idle]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

{providers}
""")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "OPENROUTER_"))}
        self.env.update(REDIS_URL=redis_url, OPENROUTER_API_KEY=UPSTREAM_KEY, LOCAL_LLM_KEY=LOCAL_KEY,
                        REACTOR_AI_BIND=f"127.0.0.1:{self.port}", PYTHONPATH=str(REPO))
        # Provider credentials come only from `env`: none of the machine's may leak in.
        for name in [k for k in self.env if k.startswith(("AWS_", "AZURE_"))]:
            del self.env[name]
        self.env.update(env or {})
        self.api: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.extras: list[subprocess.Popen] = []
        self.redis = redis.Redis.from_url(redis_url)

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{args[0]}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "api.cli", *args, "--config", str(self.config)],
                                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start(self) -> "RunningGateway":
        self.api = self._spawn("api", *self.api_args)
        self.start_worker()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.base_url}/health", timeout=1).json()
                if all(health["workers"].get(name) for name in self.worker_providers):
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            for proc in (self.api, self.worker):
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway process exited at start:\n{self.logs()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not become healthy in {START_TIMEOUT}s:\n{self.logs()}")

    def extra_api(self) -> str:
        """Start one more front door on the same Redis (another replica); returns its API base URL.

        Stopped with the gateway.
        """
        port = free_port()
        proc = self._spawn("api", "--bind", f"127.0.0.1:{port}")
        self.extras.append(proc)
        base_url = f"http://127.0.0.1:{port}/ai/v1"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code in (200, 503):
                    return base_url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"extra api exited at start:\n{self.logs()}")
            time.sleep(0.1)
        raise RuntimeError(f"extra api did not start in {START_TIMEOUT}s:\n{self.logs()}")

    def extra_worker(self, *providers: str) -> subprocess.Popen:
        """Start one more worker process serving ``providers``; stopped with the gateway."""
        proc = self._spawn("worker", *(arg for name in providers for arg in ("--provider", name)))
        self.extras.append(proc)
        return proc

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", *(arg for name in self.worker_providers for arg in ("--provider", name)),
                                  *self.worker_args)

    def kill_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.workdir.glob("*.log"))

    def stop(self) -> None:
        for proc in (self.api, self.worker, *self.extras):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.api, self.worker, *self.extras):
            if proc:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        for key in self.redis.scan_iter(match=f"{self.prefix}*", count=1000):
            self.redis.delete(key)
        self.redis.close()

    def token(self, user: str = "user_test", ttl: int = 3600, **claims) -> str:
        return LocalKey.load_or_create(self.data_dir).mint(user, ttl, extra=claims)

    def client(self, user: str = "user_test", claims: dict | None = None, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=kwargs.pop("base_url", self.base_url), api_key=self.token(user, **(claims or {})),
                             max_retries=0,
                             timeout=kwargs.pop("timeout", 20.0), **kwargs)

    def usage_events(self) -> list[dict]:
        import json
        entries = self.redis.xrange(f"{self.prefix}events:ai.usage")
        return [json.loads(fields[b"data"]) for _, fields in entries]
