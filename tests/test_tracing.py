"""OpenTelemetry traces (shared/tracing.py).

What this file proves:

- in process, with the SDK's in-memory exporter: the front door's app and a worker process built
  with a tracer each give one trace per request: the front door's SERVER span, the worker's job
  span as its child (through the job's ``traceparent``), and one CLIENT span per upstream attempt
  under the job span (a fallback shows as a failed attempt, then the one that served), with the
  GenAI attributes (operation, models, provider name, tokens) and the gateway's own (request id,
  user, provider, status, error code); a client's ``traceparent`` makes the request its child;
  a refused request still gets its span, with its status and code;
- without a tracer the job carries no trace context, and importing the processes' modules
  imports nothing of OpenTelemetry;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` on real ``reactor api`` and ``reactor worker`` processes makes
  both export OTLP/HTTP to a collector, in one trace.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.auth import LocalKey
from shared.tracing import Tracing, provider_names

from .gateway_proc import LOCAL_KEY, REPO, RunningGateway, free_port

# One wait, whatever it waits for, never runs longer than this.
WAIT_S = 10.0

MODELS = """
[models."m-traced"]
owned_by = "mock"
capabilities = ["chat", "streaming"]
routes = [{ provider = "dead", model = "dead-model" }, { provider = "local", model = "mock/local-model" }]
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0

[models."m-embed"]
owned_by = "mock"
capabilities = ["embeddings"]
routes = [{ provider = "local", model = "mock/embed" }]
"""


def write_config(workdir: Path, redis_url: str, prefix: str, local_url: str) -> Path:
    (workdir / "ai-models.toml").write_text(MODELS)
    config = workdir / "reactor.toml"
    config.write_text(f"""
[gateway]
registry_overlay = "./ai-models.toml"
data_dir = "./data"
key_prefix = "{prefix}"
redis_url = "{redis_url}"
queue_timeout = 3
heartbeat_interval = 0.5
read_timeout = 4
routing = {{ cooldown_failures = 1000 }}

[gateway.providers.openrouter]
enabled = false

[gateway.providers.local]
kind = "openai"
base_url = "{local_url}"
api_key_env = "LOCAL_LLM_KEY"

# Refuses connections: every request's first attempt fails here and falls back to `local`.
[gateway.providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "LOCAL_LLM_KEY"
""")
    return config


def memory_tracing(settings) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, provider_names(settings.providers), close=provider.shutdown), exporter


@pytest.fixture
def in_process(tmp_path, redis_url, local_mock):
    """Runs ``scenario(client, token)`` against the app and a worker process built in this event
    loop, each with its own in-memory tracer; returns (the front door's spans, the worker's)."""
    from arq.connections import RedisSettings, create_pool
    from redis.asyncio import Redis

    from api.app import create_app
    from shared.config import load_settings
    from shared.keys import Keys
    from shared.overlay import RegistrySource
    from shared.queue import job_deserializer, job_serializer
    from workers.worker import WorkerProcess

    prefix = f"ttest-{uuid.uuid4().hex[:8]}:"
    config = write_config(tmp_path, redis_url, prefix, local_mock.url)
    settings = load_settings(config, env={"LOCAL_LLM_KEY": LOCAL_KEY})
    api_tracing, api_spans = memory_tracing(settings)
    worker_tracing, worker_spans = memory_tracing(settings)

    def run(scenario):
        async def main():
            async with asyncio.timeout(30):
                registry = RegistrySource(settings)
                await registry.load()
                pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=job_serializer,
                                         job_deserializer=job_deserializer)
                process = WorkerProcess(settings, registry, ["local", "dead"], tracing=worker_tracing)
                worker = asyncio.create_task(process.run(pool))
                app = create_app(settings, tracing=api_tracing)
                try:
                    keys = Keys(prefix)
                    while not (await pool.zcard(keys.workers("local")) and await pool.zcard(keys.workers("dead"))):
                        await asyncio.sleep(0.05)
                    token = LocalKey.load_or_create(settings.data_dir).mint("user_traced")
                    async with app.router.lifespan_context(app):
                        transport = httpx.ASGITransport(app=app)
                        async with httpx.AsyncClient(transport=transport, base_url="http://gw/ai/v1",
                                                     timeout=10) as client:
                            await scenario(client, {"Authorization": f"Bearer {token}"})
                finally:
                    process.stop()
                    await asyncio.wait_for(worker, 10)
                    cleanup = Redis.from_url(redis_url)
                    async for key in cleanup.scan_iter(match=f"{prefix}*"):
                        await cleanup.delete(key)
                    await cleanup.aclose()
                    await pool.aclose()

        asyncio.run(main())
        return api_spans.get_finished_spans(), worker_spans.get_finished_spans()

    return run


def test_one_trace_from_the_front_door_through_the_job_to_each_attempt(in_process):
    async def scenario(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
        reply = await client.post("/chat/completions", headers=auth, json={
            "model": "m-traced", "messages": [{"role": "user", "content": "trace me"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "m-traced"

    front, worker = in_process(scenario)

    [request] = front
    assert request.kind is SpanKind.SERVER and request.name == "chat m-traced"
    a = request.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m-traced"
    assert a["gen_ai.response.model"] == "m-traced"
    # The provider that served, not the model's first route (which failed).
    assert (a["reactor.provider"], a["gen_ai.provider.name"], a["gen_ai.system"]) == ("local", "openai", "openai")
    assert a["user.id"] == "user_traced" and a["http.response.status_code"] == 200
    assert a["reactor.surface"] == "chat" and len(a["reactor.request_id"]) == 32
    assert "error.type" not in a and request.status.status_code is StatusCode.UNSET

    [job] = [s for s in worker if s.kind is SpanKind.CONSUMER]
    assert job.context.trace_id == request.context.trace_id
    assert job.parent is not None and job.parent.span_id == request.context.span_id
    j = job.attributes
    assert j["reactor.request_id"] == a["reactor.request_id"] and j["user.id"] == "user_traced"
    assert (j["gen_ai.request.model"], j["gen_ai.response.model"], j["reactor.provider"]) == (
        "m-traced", "m-traced", "local")
    assert (j["reactor.status"], j["reactor.attempts"]) == ("ok", 2)
    assert j["gen_ai.usage.input_tokens"] > 0 and j["gen_ai.usage.output_tokens"] > 0
    assert j["reactor.cost_usd"] > 0

    attempts = sorted((s for s in worker if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time)
    assert [s.name for s in attempts] == ["chat dead-model", "chat mock/local-model"]
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == job.context.span_id
        assert span.context.trace_id == request.context.trace_id
    failed, served = attempts
    assert failed.attributes["reactor.provider"] == "dead" and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"]
    assert served.attributes["reactor.provider"] == "local" and "error.type" not in served.attributes
    assert served.attributes["gen_ai.usage.output_tokens"] == j["gen_ai.usage.output_tokens"]


def test_embeddings_a_client_trace_and_a_refusal(in_process):
    client_trace, client_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"

    async def scenario(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
        reply = await client.post("/embeddings", json={"model": "m-embed", "input": "vector"},
                                  headers={**auth, "traceparent": f"00-{client_trace}-{client_span}-01"})
        assert reply.status_code == 200, reply.text
        missing = await client.post("/chat/completions", headers=auth, json={
            "model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404

    front, worker = in_process(scenario)

    embed = next(s for s in front if s.name == "embeddings m-embed")
    assert embed.attributes["gen_ai.operation.name"] == "embeddings"
    assert format(embed.context.trace_id, "032x") == client_trace
    assert embed.parent is not None and format(embed.parent.span_id, "016x") == client_span
    [job] = [s for s in worker if s.kind is SpanKind.CONSUMER]
    assert job.parent.span_id == embed.context.span_id
    assert job.attributes["gen_ai.operation.name"] == "embeddings"
    assert job.attributes["gen_ai.usage.input_tokens"] > 0

    refused = next(s for s in front if s is not embed)
    assert refused.attributes["http.response.status_code"] == 404
    assert refused.attributes["error.type"] == "model_not_found"
    assert refused.status.status_code is StatusCode.UNSET  # a client's mistake is not the server's error


def test_without_tracing_nothing_of_opentelemetry_is_loaded() -> None:
    from shared.wire import Job

    assert Job(request_id="r", kind="chat", reply_channel="c", user_id="u", targets=[], alias=None,
               body=b"{}").traceparent is None
    check = ("import sys, api.app, api.cli, api.completions, workers.worker, workers.jobs; "
             "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]; "
             "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- real processes, a real OTLP/HTTP collector ----------------------------------------------------


class Collector:
    """A tiny OTLP/HTTP endpoint: records the body of every POST to /v1/traces."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/v1/traces":
                    bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> dict[str, list]:
        """Every span received so far, by the service name of the process that sent it."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out: dict[str, list] = {}
        for body in list(self.bodies):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope_spans in resource_spans.scope_spans:
                    out.setdefault(service, []).extend(scope_spans.spans)
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


def test_real_processes_export_one_trace_over_otlp_http(tmp_path, redis_url, openrouter_mock, local_mock,
                                                        collector):
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                             "OTEL_BSP_SCHEDULE_DELAY": "100"})
    gw.start()
    try:
        completion = gw.client("user_otlp").chat.completions.create(
            model="mock-local", messages=[{"role": "user", "content": "over the wire"}])
        request_id = completion.id.removeprefix("chatcmpl-")

        def exported() -> bool:
            spans = collector.spans()
            return bool(spans.get("reactor-api")) and any(s.kind == s.SPAN_KIND_CLIENT
                                                          for s in spans.get("reactor-worker", []))

        deadline = time.monotonic() + WAIT_S
        while not exported() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exported(), f"spans received: {collector.spans()}\n{gw.logs()}"
    finally:
        gw.stop()

    spans = collector.spans()

    def attrs(span) -> dict:
        return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}

    [request] = [s for s in spans["reactor-api"] if attrs(s).get("reactor.request_id") == request_id]
    assert request.kind == request.SPAN_KIND_SERVER and request.name == "chat mock-local"
    assert attrs(request)["reactor.provider"] == "local"
    [job] = [s for s in spans["reactor-worker"] if s.kind == s.SPAN_KIND_CONSUMER]
    assert job.trace_id == request.trace_id and job.parent_span_id == request.span_id
    [attempt] = [s for s in spans["reactor-worker"] if s.kind == s.SPAN_KIND_CLIENT]
    assert attempt.parent_span_id == job.span_id
    assert attrs(attempt)["gen_ai.provider.name"] == "openai"
