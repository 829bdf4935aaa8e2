"""Routing under failure, end to end: real ``reactor api`` and ``reactor worker`` processes, the real
Redis, mock upstreams.

What this file proves:

- a request whose first target fails before the first token (connection refused, 429, 5xx) is
  served by the next one, also when that one lives in another worker pool (the job is handed
  over), for an alias's targets and for a model's own routes alike; the client sees the model
  that served, and the request is metered once, with the number of attempts;
- an upstream refusal that would repeat (400) is not retried elsewhere;
- once output went out nothing is retried: the stream ends with ``incomplete_response`` and the
  partial answer is metered once as ``incomplete``;
- failures cool a route down for every worker process: while the cooldown key lives the route
  gets no traffic (neither as a first choice nor as a fallback), and after it one request probes it;
- a target whose pool has no live worker is skipped at once;
- ``round_robin`` is fair across two front doors sharing one Redis counter;
- ``fastest`` explores unmeasured routes and then prefers the measured fast one.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import httpx
import openai
import pytest

from .gateway_proc import LOCAL_KEY, RunningGateway, free_port
from .mocks.openai import MockUpstream

# One wait, whatever it waits for, never runs longer than this.
WAIT_S = 6.0


class ControlledUpstream(MockUpstream):
    """An OpenAI-compatible mock switched as a whole rather than per prompt: it fails every chat
    request with ``fail_status`` while that is set, answers ``delay_s`` late, and keeps its port
    across :meth:`stop` and :meth:`start` (a stopped upstream refuses connections)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(api_key=LOCAL_KEY, flavour="openai", port=free_port())
        self.fail_status: int | None = None
        self.delay_s = delay_s

    @property
    def running(self) -> bool:
        return self._server is not None

    async def _chat(self, request):
        if self.fail_status is not None:
            await self._record(request)
            return self._status_directive(self.fail_status)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        return await super()._chat(request)

    def chat_requests(self) -> list:
        return [r for r in self.received if r.path.endswith("/chat/completions")]


def provider_tables(upstreams: dict[str, ControlledUpstream]) -> str:
    return "".join(f"""
[gateway.providers.{name}]
kind = "openai"
base_url = "{mock.url}"
api_key_env = "LOCAL_LLM_KEY"
""" for name, mock in upstreams.items())


def chat_model(model_id: str, *routes: tuple[str, str]) -> str:
    listed = ", ".join(f'{{ provider = "{p}", model = "{m}" }}' for p, m in routes)
    return f"""
[models."{model_id}"]
owned_by = "mock"
capabilities = ["chat", "streaming"]
routes = [{listed}]
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
"""


MODELS = (chat_model("m-primary", ("primary", "p-model"))
          + chat_model("m-secondary", ("secondary", "s-model"))
          + chat_model("m-dual", ("primary", "p-dual"), ("secondary", "s-dual")))

OVERLAY = MODELS + chat_model("m-rr-a", ("local", "rr-a")) + chat_model("m-rr-b", ("local", "rr-b")) \
    + chat_model("m-slow", ("slow", "slow-model")) + chat_model("m-fast", ("fast", "fast-model")) + """
[aliases."team/ha"]
strategy = "first"
targets = ["m-primary", "m-secondary"]

[aliases."team/idle-first"]
strategy = "first"
targets = ["unserved-model", "m-secondary"]

[aliases."team/rr"]
strategy = "round_robin"
targets = ["m-rr-a", "m-rr-b"]

[aliases."team/fastest"]
strategy = "fastest"
targets = ["m-slow", "m-fast"]
"""

COOLING_OVERLAY = MODELS + """
[aliases."team/ha"]
strategy = "first"
targets = ["m-primary", "m-secondary"]

# The first target's provider refuses connections (port 9), so the primary comes up as a fallback.
[aliases."team/dead-first"]
strategy = "first"
targets = ["unserved-model", "m-primary", "m-secondary"]
"""


# -- helpers --------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_workers(gw: RunningGateway, counts: dict[str, int]) -> None:
    def ready() -> bool:
        try:
            workers = httpx.get(f"{gw.base_url}/health", timeout=1).json()["workers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return all(workers.get(name, 0) >= n for name, n in counts.items())

    assert wait_until(ready, 20.0), f"workers {counts} never showed up in health:\n{gw.logs()}"


def request_id_of(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")


def usage_by_request(gw: RunningGateway, request_ids: list[str], settle: float = 0.3) -> dict[str, list[dict]]:
    """Every usage event of ``request_ids``, once each has one; then ``settle`` seconds more, so
    that a second record of any of them would show."""
    wanted = set(request_ids)

    def grouped() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {rid: [] for rid in wanted}
        for event in gw.usage_events():
            props = event["properties"]
            if props["request_id"] in wanted:
                out[props["request_id"]].append(props)
        return out

    assert wait_until(lambda: all(grouped().values())), "some requests were never metered"
    if settle:
        time.sleep(settle)
    return grouped()


def ask(client: openai.OpenAI, model: str, text: str, stream: bool) -> tuple[str, str, str]:
    """One chat request; returns (request id, model named in the response, content)."""
    messages = [{"role": "user", "content": text}]
    if not stream:
        completion = client.chat.completions.create(model=model, messages=messages)
        return request_id_of(completion.id), completion.model, completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    assert chunks, "an empty stream"
    models = {c.model for c in chunks}
    assert len(models) == 1, f"one stream named several models: {models}"
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return request_id_of(chunks[0].id), models.pop(), text_out


def worker_log(gw: RunningGateway) -> str:
    return (gw.workdir / "worker.log").read_text(errors="replace")


def fallback_logged(gw: RunningGateway, request_id: str, to_model: str, to_provider: str) -> bool:
    needle = f"falling back to {to_model} on {to_provider}"
    return wait_until(lambda: any(f"request {request_id}:" in line and needle in line
                                  for line in worker_log(gw).splitlines()), timeout=2.0)


def usage_day_requests(gw: RunningGateway, props: dict, user: str, model_id: str) -> int:
    day = time.strftime("%Y-%m-%d", time.gmtime(props["timestamp"]))
    value = gw.redis.hget(f"{gw.prefix}usage:{day}:{user}:{model_id}", "requests")
    return int(value or 0)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, ControlledUpstream]]:
    mocks = {"primary": ControlledUpstream(), "secondary": ControlledUpstream(),
             "fast": ControlledUpstream(), "slow": ControlledUpstream(delay_s=0.15)}
    started: list[ControlledUpstream] = []
    try:
        for mock in mocks.values():
            started.append(mock.start())
        yield mocks
    finally:
        for mock in started:
            mock.stop()


@pytest.fixture(autouse=True)
def healthy_upstreams(upstreams) -> None:
    """Every test starts with every controlled upstream up, answering, and nothing recorded."""
    for mock in upstreams.values():
        if not mock.running:
            mock.start()
        mock.fail_status = None
        mock.reset()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, redis_url, openrouter_mock, local_mock, upstreams) -> Iterator[RunningGateway]:
    """One front door; a worker for OpenRouter, ``local``, ``primary``, ``fast`` and ``slow``, and
    a second worker process that alone serves ``secondary``. Cooldowns are out of reach here (a
    route would need 1000 failures), so each request's fallback is seen as it is."""
    gateway = RunningGateway(tmp_path_factory.mktemp("fallback"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url, "routing = { cooldown_failures = 1000 }",
                             providers=provider_tables(upstreams), overlay=OVERLAY,
                             worker_providers=("openrouter", "local", "primary", "fast", "slow"))
    try:
        gateway.start()
        gateway.extra_worker("secondary")
        wait_for_workers(gateway, {"secondary": 1})
        yield gateway
    finally:
        gateway.stop()


# -- fallback before the first token --------------------------------------------------------------


def test_alias_falls_back_to_another_pool_when_the_primary_is_down(gw, upstreams):
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    primary.stop()  # connection refused from now on
    user = f"user_ha_{uuid.uuid4().hex[:6]}"
    client = gw.client(user)

    served = [ask(client, "team/ha", f"fallback {i}", stream=i % 2 == 1) for i in range(20)]

    for request_id, model, content in served:
        assert model == "m-secondary"
        assert content.startswith("Hello from mock: fallback ")
    assert len(secondary.chat_requests()) == 20
    assert {r.body["model"] for r in secondary.chat_requests()} == {"s-model"}

    events = usage_by_request(gw, [rid for rid, _, _ in served])
    for request_id, props in events.items():
        assert len(props) == 1, f"{request_id} metered {len(props)} times"
        [p] = props
        assert (p["attempts"], p["alias"], p["provider"], p["model_id"], p["status"]) == (
            2, "team/ha", "secondary", "m-secondary", "ok")
        assert p["user_id"] == user and p["tokens_out"] > 0
    assert usage_day_requests(gw, p, user, "m-secondary") == 20
    assert usage_day_requests(gw, p, user, "m-primary") == 0

    for request_id, _, _ in served:
        assert fallback_logged(gw, request_id, "m-secondary", "secondary"), \
            f"no fallback logged for {request_id}:\n{worker_log(gw)[-3000:]}"


def test_model_falls_back_to_its_own_next_route(gw, upstreams):
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    primary.stop()
    user = f"user_dual_{uuid.uuid4().hex[:6]}"
    client = gw.client(user)

    served = [ask(client, "m-dual", f"own routes {i}", stream=i % 2 == 1) for i in range(6)]

    assert {model for _, model, _ in served} == {"m-dual"}
    assert [r.body["model"] for r in secondary.chat_requests()] == ["s-dual"] * 6
    events = usage_by_request(gw, [rid for rid, _, _ in served])
    for request_id, props in events.items():
        assert len(props) == 1
        [p] = props
        assert (p["attempts"], p["alias"], p["provider"], p["model_id"]) == (2, None, "secondary", "m-dual")
        assert fallback_logged(gw, request_id, "m-dual", "secondary")


def front_door_requests(gw: RunningGateway, model: str) -> Counter:
    """The front door's ``reactor_requests_total`` for ``model``, by provider label."""
    page = httpx.get(f"{gw.url}/metrics", timeout=5).text
    counts: Counter = Counter()
    for line in page.splitlines():
        if line.startswith("reactor_requests_total{") and f'model="{model}"' in line:
            provider = line.split('provider="', 1)[1].split('"', 1)[0]
            counts[provider] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_the_front_door_names_the_provider_that_served_after_a_fallback(gw, upstreams):
    # Both routes are one model: only the provider tells the primary's failure from the secondary's answer.
    upstreams["primary"].stop()
    client = gw.client(f"user_label_{uuid.uuid4().hex[:6]}")
    before = front_door_requests(gw, "m-dual")

    served = [ask(client, "m-dual", f"label {i}", stream=i % 2 == 1) for i in range(4)]

    assert {model for _, model, _ in served} == {"m-dual"}
    # Counted as each response ends, which may be a moment after the client has read it.
    assert wait_until(lambda: front_door_requests(gw, "m-dual")["secondary"] - before["secondary"] >= 4)
    after = front_door_requests(gw, "m-dual")
    assert after["secondary"] - before["secondary"] == 4, after
    assert after["primary"] == before["primary"], after
    for props in usage_by_request(gw, [rid for rid, _, _ in served], settle=0).values():
        assert [p["provider"] for p in props] == ["secondary"]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fallback_on_a_retryable_status(gw, upstreams, status):
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    primary.fail_status = status
    client = gw.client(f"user_status_{status}")

    served = [ask(client, "team/ha", f"status {status} #{i}", stream=i == 1) for i in range(2)]

    assert {model for _, model, _ in served} == {"m-secondary"}
    # The primary was asked (and refused) each time; the secondary answered each time.
    assert len(primary.chat_requests()) == 2 and len(secondary.chat_requests()) == 2
    events = usage_by_request(gw, [rid for rid, _, _ in served])
    for request_id, props in events.items():
        assert [(p["attempts"], p["provider"], p["status"]) for p in props] == [(2, "secondary", "ok")]
        assert fallback_logged(gw, request_id, "m-secondary", "secondary")


def test_a_refusal_that_would_repeat_is_not_retried(gw, upstreams):
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    primary.fail_status = 400
    client = gw.client("user_status_400")

    for stream in (False, True):
        with pytest.raises(openai.BadRequestError):
            ask(client, "team/ha", "bad request", stream=stream)

    assert len(primary.chat_requests()) == 2
    assert secondary.chat_requests() == []


# -- no retry after the first token ---------------------------------------------------------------


def test_no_fallback_once_output_went_out(gw, upstreams):
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    token = gw.token("user_midstream")
    body = {"model": "team/ha", "stream": True,
            "messages": [{"role": "user", "content": "#chunks=6 #midstream_error"}]}

    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]

    assert "[DONE]" not in data
    *chunks, last = [json.loads(d) for d in data]
    assert last["error"]["code"] == "incomplete_response", last
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert content == "tok0 tok1 "
    assert {c["model"] for c in chunks} == {"m-primary"}
    assert len(primary.chat_requests()) == 1 and primary.chat_requests()[0].chunks_sent == 2
    # The next candidate is never asked, not even once.
    assert secondary.chat_requests() == []

    [props] = usage_by_request(gw, [request_id])[request_id]
    assert (props["status"], props["provider"], props["model_id"], props["attempts"]) == (
        "incomplete", "primary", "m-primary", 1)
    assert props["tokens_out"] > 0
    assert f"request {request_id}:" not in worker_log(gw)


# -- availability, round robin, fastest -----------------------------------------------------------


def test_a_pool_without_a_live_worker_is_skipped_at_once(gw, upstreams):
    client = gw.client("user_idle")
    started = time.monotonic()
    request_id, model, _ = ask(client, "team/idle-first", "skip the idle pool", stream=False)
    elapsed = time.monotonic() - started

    assert model == "m-secondary"
    assert elapsed < 1.0, f"took {elapsed:.2f} s (queue_timeout is 3 s)"
    [props] = usage_by_request(gw, [request_id])[request_id]
    assert (props["attempts"], props["provider"], props["alias"]) == (1, "secondary", "team/idle-first")


def test_round_robin_is_fair_across_two_front_doors(gw, local_mock):
    other = openai.OpenAI(base_url=gw.extra_api(), api_key=gw.token("user_rr"), max_retries=0, timeout=20.0)
    clients = [gw.client("user_rr"), other]
    before = Counter(r.body.get("model") for r in list(local_mock.received) if r.body)

    served = [ask(clients[i % 2], "team/rr", f"turn {i}", stream=i % 4 >= 2) for i in range(20)]

    assert Counter(model for _, model, _ in served) == {"m-rr-a": 10, "m-rr-b": 10}
    # Alternating front doors still alternate targets: the counter is shared, not per process.
    assert [model for _, model, _ in served[:2]] in (["m-rr-a", "m-rr-b"], ["m-rr-b", "m-rr-a"])
    after = Counter(r.body.get("model") for r in list(local_mock.received) if r.body)
    assert after["rr-a"] - before["rr-a"] == 10 and after["rr-b"] - before["rr-b"] == 10


def test_fastest_explores_then_prefers_the_fast_route(gw, upstreams):
    client = gw.client("user_fastest")

    warm_up = Counter(ask(client, "team/fastest", f"warm {i}", stream=False)[1] for i in range(20))
    measured = Counter(ask(client, "team/fastest", f"run {i}", stream=False)[1] for i in range(30))

    # Neither route was measured at first: both were tried.
    assert warm_up["m-slow"] >= 1 and warm_up["m-fast"] >= 1, warm_up
    assert measured["m-fast"] >= 21, measured
    stats = gw.redis.hgetall(f"{gw.prefix}route:stats")
    fast_ms = float(stats[b"fast\tfast-model\tttft"])
    slow_ms = float(stats[b"slow\tslow-model\tttft"])
    assert fast_ms < slow_ms and slow_ms >= 150


# -- cooldowns shared by worker processes ---------------------------------------------------------


@pytest.fixture
def cooling_gw(tmp_path, redis_url, openrouter_mock, local_mock, upstreams) -> Iterator[RunningGateway]:
    """Two worker processes that both serve ``primary``, ``secondary`` and ``idle`` (whose upstream
    refuses connections); two failures in 30 s cool a route for 2 s."""
    upstream_tables = provider_tables({name: upstreams[name] for name in ("primary", "secondary")})
    gateway = RunningGateway(tmp_path / "cooling", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url,
                             "routing = { cooldown_failures = 2, cooldown_window = 30, cooldown_seconds = 2 }",
                             providers=upstream_tables, overlay=COOLING_OVERLAY,
                             worker_providers=("idle", "primary", "secondary"))
    try:
        gateway.start()
        gateway.extra_worker("idle", "primary", "secondary")
        wait_for_workers(gateway, {"primary": 2, "secondary": 2})
        yield gateway
    finally:
        for proc in (gateway.worker, *gateway.extras):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        gateway.stop()


def test_cooldown_is_shared_by_workers_and_expires(cooling_gw, upstreams):
    gw = cooling_gw
    primary, secondary = upstreams["primary"], upstreams["secondary"]
    first_worker, second_worker = gw.worker, gw.extras[0]
    cooldown_key = f"{gw.prefix}route:primary:p-model:cooldown"
    failures_key = f"{gw.prefix}route:primary:p-model:failures"
    probation_key = f"{gw.prefix}route:primary:p-model:probation"
    client = gw.client("user_cooling")
    served: list[str] = []

    def served_by(text: str, alias: str = "team/ha") -> dict:
        request_id, model, _ = ask(client, alias, text, stream=False)
        served.append(request_id)
        [props] = usage_by_request(gw, [request_id], settle=0)[request_id]
        assert props["model_id"] == model
        return props

    primary.fail_status = 503

    # One failure through the first worker (the second is frozen, so it cannot take the job).
    os.kill(second_worker.pid, signal.SIGSTOP)
    try:
        props = served_by("first failure")
    finally:
        os.kill(second_worker.pid, signal.SIGCONT)
    assert (props["provider"], props["attempts"]) == ("secondary", 2)
    assert gw.redis.get(failures_key) == b"1" and not gw.redis.exists(cooldown_key)

    # The second through the other worker: together they reach the threshold.
    os.kill(first_worker.pid, signal.SIGSTOP)
    try:
        second_sent = time.monotonic()
        props = served_by("second failure")
    finally:
        os.kill(first_worker.pid, signal.SIGCONT)
    assert (props["provider"], props["attempts"]) == ("secondary", 2)
    ttl_ms = gw.redis.pttl(cooldown_key)
    assert 0 < ttl_ms <= 2000, ttl_ms
    assert gw.redis.exists(probation_key)
    assert len(primary.chat_requests()) == 2

    # A fallback never lands on the cooling route: the dead first target fails, the secondary serves.
    props = served_by("skip the cooling route", alias="team/dead-first")
    assert (props["provider"], props["attempts"]) == ("secondary", 2)

    # Once the front door's one-second view of route health has lapsed, requests go straight to the
    # secondary while the cooldown lasts.
    time.sleep(max(0.0, second_sent + 1.1 - time.monotonic()))
    for i in range(3):
        props = served_by(f"while cooling {i}")
        assert (props["provider"], props["attempts"]) == ("secondary", 1)
    assert gw.redis.pttl(cooldown_key) > 0, "the cooldown ran out before the checks; the machine is too slow"
    assert len(primary.chat_requests()) == 2

    # The primary comes back; after the cooldown one request probes it, and its success ends probation.
    primary.fail_status = None
    assert wait_until(lambda: not gw.redis.exists(cooldown_key), timeout=3.0)
    assert gw.redis.exists(probation_key)
    time.sleep(1.1)
    props = served_by("probe")
    assert (props["provider"], props["attempts"]) == ("primary", 1)
    assert len(primary.chat_requests()) == 3 and primary.chat_requests()[-1].completed
    assert not gw.redis.exists(probation_key)
    assert len(secondary.chat_requests()) == 6
    assert all(len(props) == 1 for props in usage_by_request(gw, served).values())
