"""Metrics, request ids and structured logs, end to end: real ``reactor api --log-format json`` and
``reactor worker --metrics-port … --log-format json`` processes, the real Redis, the mock upstreams.

What this file proves:

- after chat, stream, embeddings and failing requests, the front door's ``/metrics`` parses as
  Prometheus text and counts each request once under its surface, model, provider, status and
  code; streams (only they) get a time to first token; queue waits are measured; the in-flight
  gauge holds an open stream; the fleet gauges are read from Redis at scrape time;
- the worker's metrics port shows every job started and finished (the worker claims jobs through
  its fast path, so this is the job hooks firing there), tokens equal to the upstream's usage, cost,
  attempts, fallbacks and upstream errors;
- ``X-Request-Id``: a client's safe id is echoed and reaches the worker's log lines for its job,
  beside the gateway's own id; a missing or unsafe one is replaced by the gateway's id, which the
  completion id carries; error responses carry it too;
- ``--log-format json`` writes one JSON object per line on both sides, with one line per request
  at the front door holding the request's id, user, model, alias, provider, surface, status and
  code, stream, time to first token and latency;
- ``REACTOR_METRICS=0`` leaves ``/metrics`` out.

Plus the pieces alone: the id rule, the label cap, the two log formats.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.observe import client_request_id
from shared.logs import JsonFormatter, TextFormatter, log_context
from shared.metrics import BoundedLabel

from .gateway_proc import REPO, RunningGateway, free_port

# One wait, whatever it waits for, never runs longer than this.
WAIT_S = 6.0
CLIENT_ID = "client-7f3.run:42"
HEX_ID = re.compile(r"[0-9a-f]{32}")

# A model whose two routes live on the two providers one worker serves: a failure on the first
# falls back to the second inside the worker.
FLAKY_OVERLAY = """
[models."flaky-model"]
owned_by = "mock"
capabilities = ["chat", "streaming"]
routes = [{ provider = "local", model = "mock/flaky" }, { provider = "openrouter", model = "mock/flaky" }]
input_price_per_mtok = 1.0
output_price_per_mtok = 1.0
"""


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for n, got, v in samples(text) if n == name and all(got.get(k) == w for k, w in labels.items()))


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S}s: {what}")
        time.sleep(0.05)


def json_lines(path) -> list[dict]:
    """Every JSON object logged to ``path``; any other line must be one of the CLI's banners."""
    records = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            assert line.startswith(("Reactor Gateway", "Single-box auth")), f"a log line that is not JSON: {line!r}"
    return records


@pytest.fixture(scope="module")
def observed(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    port = free_port()
    gw = RunningGateway(tmp_path_factory.mktemp("observed"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                        openrouter_mock.url, local_mock.url, overlay=FLAKY_OVERLAY,
                        api_args=("--log-format", "json"),
                        # Debug shows the worker's line per job; its warnings name the job anyway.
                        worker_args=("--metrics-port", str(port), "--log-format", "json", "--log-level", "debug"))
    gw.metrics_url = f"{gw.url}/metrics"
    gw.worker_metrics_url = f"http://127.0.0.1:{port}/metrics"
    gw.start()
    yield gw
    gw.stop()


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_front_door_metrics_count_requests(observed):
    before = scrape(observed.metrics_url)
    client = observed.client("user_metrics")
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    chunks = list(client.chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "#chunks=3"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    client.embeddings.create(model="mock-embed", input=["a", "b"])
    with pytest.raises(Exception):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(Exception):  # the upstream refuses: 400 through the worker
        client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "#status=400"}])
    after = scrape(observed.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"status": "200", "code": ""}
    assert delta("reactor_requests_total", surface="chat", model="gpt-4o-mini", provider="openrouter", **ok) == 2
    assert delta("reactor_requests_total", surface="chat", model="mock-local", provider="local", **ok) == 1
    assert delta("reactor_requests_total", surface="embeddings", model="mock-embed", provider="local", **ok) == 1
    assert delta("reactor_requests_total", surface="chat", model="", provider="", status="404",
                 code="model_not_found") == 1
    assert delta("reactor_requests_total", surface="chat", model="mock-local", provider="local", status="400") == 1
    # Never a client's string as a label value: the unknown model name appears nowhere.
    assert "no-such-model" not in after

    # Latency for every request of a model; time to first token only for the stream.
    assert delta("reactor_request_duration_seconds_count", surface="chat", model="gpt-4o-mini") == 2
    assert delta("reactor_time_to_first_token_seconds_count", surface="chat", model="mock-local",
                 provider="local") == 1
    assert delta("reactor_time_to_first_token_seconds_count", model="gpt-4o-mini") == 0
    assert delta("reactor_queue_wait_seconds_count", provider="openrouter") == 2
    assert delta("reactor_queue_wait_seconds_count", provider="local") == 3  # stream, embeddings, the 400
    assert delta("reactor_queue_wait_seconds_bucket", provider="local", le="+Inf") == 3
    assert value(after, "reactor_requests_in_flight", surface="chat") == 0

    # The fleet, read from Redis when scraped.
    assert value(after, "reactor_fleet_read_ok") == 1
    assert value(after, "reactor_live_workers", provider="openrouter") == 1
    assert value(after, "reactor_live_workers", provider="idle") == 0
    assert value(after, "reactor_pool_slots", provider="local") > 0
    assert value(after, "reactor_queue_depth", provider="local") == 0
    # /metrics itself is neither counted nor logged.
    assert "/metrics" not in after


def test_in_flight_gauge_holds_an_open_stream(observed):
    client = observed.client()
    stream = client.chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "#chunks=4 #delay=300"}], stream=True)
    first = next(iter(stream))
    assert first.choices
    assert value(scrape(observed.metrics_url), "reactor_requests_in_flight", surface="chat") == 1
    list(stream)
    eventually(lambda: value(scrape(observed.metrics_url), "reactor_requests_in_flight", surface="chat") == 0,
               "the finished stream leaves the in-flight gauge")


def test_worker_metrics_count_every_job_tokens_and_cost(observed):
    before = scrape(observed.worker_metrics_url)
    client = observed.client("user_worker_metrics")
    usage_in = usage_out = 0
    for prompt in ("one two three", "four five"):
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        usage_in += completion.usage.prompt_tokens
        usage_out += completion.usage.completion_tokens
    stream = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#chunks=5"}], stream=True,
        stream_options={"include_usage": True}))
    usage_in += stream[-1].usage.prompt_tokens
    usage_out += stream[-1].usage.completion_tokens
    route = {"provider": "openrouter", "model": "gpt-4o-mini"}

    def delta(text: str, name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    # Every job of the fast path (the worker's own batch claim) went through the hooks.
    eventually(lambda: delta(scrape(observed.worker_metrics_url), "reactor_worker_jobs_finished_total",
                             status="ok", **route) == 3, "three finished jobs")
    after = scrape(observed.worker_metrics_url)
    assert delta(after, "reactor_worker_jobs_started_total", **route) == 3
    assert value(after, "reactor_worker_jobs_running") == 0
    assert delta(after, "reactor_worker_attempts_total", result="ok", **route) == 3
    assert delta(after, "reactor_worker_tokens_total", type="input", **route) == usage_in
    assert delta(after, "reactor_worker_tokens_total", type="output", **route) == usage_out
    # gpt-4o-mini's registry prices: $0.15 in, $0.60 out per million tokens.
    assert delta(after, "reactor_worker_cost_usd_total", **route) == pytest.approx(
        (usage_in * 0.15 + usage_out * 0.60) / 1e6, rel=1e-6)
    assert delta(after, "reactor_worker_time_to_first_token_seconds_count", **route) == 3


def test_fallback_and_upstream_errors_in_worker_metrics_and_logs(observed):
    before = scrape(observed.worker_metrics_url)
    response = httpx.post(f"{observed.base_url}/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {observed.token('user_flaky')}", "X-Request-Id": CLIENT_ID},
                          json={"model": "flaky-model", "messages": [{"role": "user", "content": "#status=503"}]})
    assert response.status_code >= 500
    assert response.headers["x-request-id"] == CLIENT_ID

    def fallback_counted() -> bool:
        after = scrape(observed.worker_metrics_url)
        return (value(after, "reactor_worker_jobs_finished_total", model="flaky-model", status="error")
                - value(before, "reactor_worker_jobs_finished_total", model="flaky-model", status="error")) == 1

    eventually(fallback_counted, "the failed job finished")
    after = scrape(observed.worker_metrics_url)
    local = {"provider": "local", "model": "flaky-model"}
    assert value(after, "reactor_worker_fallbacks_total", **local) - value(before, "reactor_worker_fallbacks_total",
                                                                           **local) == 1
    assert value(after, "reactor_worker_attempts_total", result="error", model="flaky-model") - value(
        before, "reactor_worker_attempts_total", result="error", model="flaky-model") == 2
    errors = [(labels, v) for n, labels, v in samples(after)
              if n == "reactor_worker_upstream_errors_total" and labels["provider"] == "local"]
    assert errors and all(labels["code"] and labels["status"].isdigit() for labels, _ in errors)

    # The worker's warning about the fallback names the client's id beside the gateway's.
    def warned() -> list[dict]:
        return [r for r in json_lines(observed.workdir / "worker.log")
                if r.get("client_request_id") == CLIENT_ID and r["level"] == "WARNING"]

    eventually(lambda: bool(warned()), "the worker's fallback warning")
    warning = warned()[0]
    assert "falling back" in warning["message"] and HEX_ID.fullmatch(warning["request_id"])
    assert warning["logger"] == "reactor.worker"


def test_request_id_round_trip(observed):
    token = observed.token("user_ids")

    def chat(request_id: str | None, model: str = "mock-local") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        return httpx.post(f"{observed.base_url}/chat/completions", headers=headers, timeout=10,
                          json={"model": model, "messages": [{"role": "user", "content": "ids"}]})

    # None sent: the gateway's id, the one the completion id carries.
    plain = chat(None)
    assert plain.status_code == 200
    assert HEX_ID.fullmatch(plain.headers["x-request-id"])
    assert plain.json()["id"] == f"chatcmpl-{plain.headers['x-request-id']}"

    # A safe id is echoed; the job keeps an id of its own (clients reuse theirs: a retry sends it again).
    mine = chat(CLIENT_ID)
    assert mine.headers["x-request-id"] == CLIENT_ID
    internal = mine.json()["id"].removeprefix("chatcmpl-")
    assert HEX_ID.fullmatch(internal)
    again = chat(CLIENT_ID)
    assert again.headers["x-request-id"] == CLIENT_ID and again.json()["id"] != mine.json()["id"]

    # Unsafe ids are replaced by the gateway's.
    for bad in ("has spaces", "x" * 129, "semi;colon", "quote\"d", ""):
        response = chat(bad)
        assert response.status_code == 200
        assert response.headers["x-request-id"] != bad
        assert response.json()["id"] == f"chatcmpl-{response.headers['x-request-id']}"

    # Failures carry it too: before a job exists (404) and from the worker (upstream 400).
    assert chat(CLIENT_ID, model="no-such-model").headers["x-request-id"] == CLIENT_ID
    missing = chat(None, model="no-such-model")
    assert missing.status_code == 404 and HEX_ID.fullmatch(missing.headers["x-request-id"])
    refused = httpx.post(f"{observed.base_url}/chat/completions", timeout=10,
                         headers={"Authorization": f"Bearer {token}", "X-Request-Id": CLIENT_ID},
                         json={"model": "mock-local", "messages": [{"role": "user", "content": "#status=400"}]})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == CLIENT_ID
    assert httpx.get(f"{observed.base_url}/health", timeout=5).headers["x-request-id"]

    # The front door's line and the worker's line for the job name both ids.
    def lines(name: str) -> list[dict]:
        return [r for r in json_lines(observed.workdir / f"{name}.log") if r.get("request_id") == internal]

    eventually(lambda: any(r["message"] == "job ended" for r in lines("worker")), "the worker's line for the job")
    job_line = next(r for r in lines("worker") if r["message"] == "job ended")
    assert job_line["client_request_id"] == CLIENT_ID and job_line["status"] == "ok"
    assert job_line["tokens_in"] > 0 and job_line["provider"] == "local"
    eventually(lambda: bool(lines("api")), "the front door's line for the request")
    assert lines("api")[0]["client_request_id"] == CLIENT_ID


def test_json_request_lines(observed):
    client = observed.client("user_json")
    client.chat.completions.create(model="reasoning/cheapest", messages=[{"role": "user", "content": "alias"}])
    list(client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "#chunks=2"}],
                                        stream=True))
    client.embeddings.create(model="mock-embed", input="json")
    with pytest.raises(Exception):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])

    def mine() -> list[dict]:
        return [r for r in json_lines(observed.workdir / "api.log")
                if r["logger"] == "reactor.requests" and r.get("user") == "user_json"]

    eventually(lambda: len(mine()) == 4, "four request lines")
    alias, stream, embed, missing = mine()
    fields = {"time", "level", "logger", "message", "request_id", "client_request_id", "method", "path", "surface",
              "user", "model", "alias", "provider", "stream", "status", "code", "queue_wait_ms", "ttft_ms",
              "latency_ms"}
    for line in (alias, stream, embed, missing):
        assert fields <= set(line), fields - set(line)
        assert line["level"] == "INFO" and line["message"] == "request"
        assert line["latency_ms"] > 0 and HEX_ID.fullmatch(line["request_id"])
    assert alias["alias"] == "reasoning/cheapest" and alias["model"] == "gpt-4o-mini"
    assert alias["provider"] == "openrouter" and alias["surface"] == "chat" and alias["status"] == 200
    assert alias["stream"] is False and alias["ttft_ms"] is None and alias["queue_wait_ms"] > 0
    assert stream["stream"] is True and 0 < stream["ttft_ms"] <= stream["latency_ms"]
    assert stream["model"] == "mock-local" and stream["code"] is None
    assert embed["surface"] == "embeddings" and embed["provider"] == "local"
    assert missing["status"] == 404 and missing["code"] == "model_not_found" and missing["model"] is None

    # Other records are JSON too: uvicorn's start-up, say.
    records = json_lines(observed.workdir / "api.log")
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert any(r["logger"] == "reactor.worker" for r in json_lines(observed.workdir / "worker.log"))


def test_metrics_can_be_switched_off(tmp_path, redis_url, openrouter_mock, local_mock):
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, env={"REACTOR_METRICS": "0"})
    gw.start()
    try:
        assert httpx.get(f"{gw.url}/metrics", timeout=5).status_code == 404
        # Requests still get their id.
        assert gw.client().chat.completions.with_raw_response.create(
            model="mock-local", messages=[{"role": "user", "content": "hi"}]).headers["x-request-id"]
    finally:
        gw.stop()


# -- the pieces alone ---------------------------------------------------------------------------


# Two processes observe a request each into one PROMETHEUS_MULTIPROC_DIR; the page adds them up.
MULTIPROCESS_SCRIPT = """
import asyncio, os, sys
from shared.metrics import GatewayMetrics

def observe():
    metrics = GatewayMetrics(multiprocess_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics.request_started("chat")
    metrics.request_ended("chat", "gpt-4o-mini", "openrouter", 200, None, 0.05, queue_wait_s=0.002,
                          queue_provider="openrouter")
    return metrics

pid = os.fork()
if pid == 0:
    observe()
    os._exit(0)
os.waitpid(pid, 0)
metrics = observe()
metrics.request_started("chat")  # one still open, in this process
sys.stdout.write(asyncio.run(metrics.render())[0].decode())
"""


def test_multiprocess_dir_adds_processes_up(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    page = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert value(page, "reactor_requests_total", model="gpt-4o-mini", status="200") == 2
    assert value(page, "reactor_request_duration_seconds_count", model="gpt-4o-mini") == 2
    assert value(page, "reactor_queue_wait_seconds_count", provider="openrouter") == 2
    assert value(page, "reactor_requests_in_flight", surface="chat") == 1


def test_client_request_id_rule():
    assert client_request_id("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    assert client_request_id("x" * 128) == "x" * 128
    for bad in (None, "", "x" * 129, "a b", "a\nb", "é", "a/b", "{x}"):
        assert client_request_id(bad) is None


def test_bounded_label_caps_codes():
    codes = BoundedLabel(limit=3)
    assert [codes(c) for c in ("a", "b", "a", "c", "d", "b")] == ["a", "b", "a", "c", "other", "b"]
    assert codes(None) == "" and codes("Not A Code!") == "other"


class _Job:
    request_id = "0123abcd"
    client_request_id = "client-1"


def _format(formatter: logging.Formatter, message: str, *args, **fields) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning(message, *args, extra={"fields": fields} if fields else None)
    return stream.getvalue()


def test_log_formats_name_the_request_being_served():
    token = log_context.set(_Job())
    try:
        line = json.loads(_format(JsonFormatter(), "attempt %s failed", 2, code="provider_error"))
        text = _format(TextFormatter(), "attempt failed", path="/a b\nINFO forged")
    finally:
        log_context.reset(token)
    assert line["message"] == "attempt 2 failed" and line["level"] == "WARNING"
    assert line["request_id"] == "0123abcd" and line["client_request_id"] == "client-1"
    assert line["code"] == "provider_error" and line["time"].endswith("Z")
    # Text: one line whatever a value holds.
    assert text.count("\n") == 1 and 'path="/a b\\nINFO forged"' in text
    assert "request_id=0123abcd client_request_id=client-1" in text
    # Outside a request nothing is added.
    assert "request_id" not in json.loads(_format(JsonFormatter(), "idle"))


def test_log_context_is_per_task():
    seen = {}

    def serve(name: str) -> None:
        job = type("J", (), {"request_id": name, "client_request_id": None})()
        token = log_context.set(job)
        try:
            time.sleep(0.01)
            seen[name] = json.loads(_format(JsonFormatter(), "x"))["request_id"]
        finally:
            log_context.reset(token)

    threads = [threading.Thread(target=serve, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {f"r{i}": f"r{i}" for i in range(4)}
