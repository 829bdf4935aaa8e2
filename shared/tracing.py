"""OpenTelemetry traces of inference requests, when they are asked for.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and the ``otel`` extra installed): then the
CLI builds a :class:`Tracing` that exports over OTLP/HTTP, and hands it to the front door
(``create_app(tracing=…)``) and the worker (``WorkerProcess(tracing=…)`` → ``JobRunner``). Off, no
call site holds one, nothing of OpenTelemetry is imported and a request pays one ``is None`` test.

One trace per request, across the processes:

- the front door's span (kind SERVER), opened when a surface admits the request
  (``api/inference.py``), ended with the response's last byte (``api/observe.py``); a client's
  own W3C ``traceparent`` header makes it a child of the client's trace;
- its context travels in the job (``Job.traceparent``, W3C trace context), so a worker's span for
  the job (kind CONSUMER) is its child, on every worker a fallback hands the job to;
- under the job span, one span per upstream attempt (kind CLIENT), so a fallback shows as a failed
  attempt followed by the one that served.

Spans are started and ended once per request, job and attempt; nothing happens per chunk. The
attributes follow OpenTelemetry's GenAI semantic conventions (``gen_ai.*``), plus the gateway's
own under ``reactor.*``. The conventions renamed ``gen_ai.system`` to ``gen_ai.provider.name``;
both are set, to the same value, for backends of either age.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .usage import Tokens
    from .wire import Job, Target

logger = logging.getLogger("reactor.tracing")

# The standard variable that switches tracing on (the OTLP/HTTP base URL; /v1/traces is appended).
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
# The traces-only variant of it, which the exporter reads too.
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
INSTRUMENTATION_NAME = "reactor-gateway"

# Provider kind (workers/providers KINDS) → the GenAI conventions' provider name. Kinds the
# conventions do not list keep their own name, as they advise.
GEN_AI_PROVIDER_NAMES = {
    "openai": "openai",
    "openrouter": "openrouter",
    "bedrock": "aws.bedrock",
    "foundry": "azure.ai.inference",
    "demo": "reactor.demo",
}
# Job kind → gen_ai.operation.name.
OPERATIONS = {"chat": "chat", "embeddings": "embeddings"}


def enabled() -> bool:
    """Whether the environment asks for traces."""
    return bool(os.environ.get(OTLP_ENDPOINT_ENV) or os.environ.get(OTLP_TRACES_ENDPOINT_ENV))


def provider_names(providers: Mapping[str, Any]) -> dict[str, str]:
    """The gateway's provider tables by name → their ``gen_ai.provider.name``."""
    return {name: GEN_AI_PROVIDER_NAMES.get(table.kind, table.kind) for name, table in providers.items()}


class Tracing:
    """Starts and ends the spans of requests, jobs and upstream attempts.

    :param tracer_provider: an OpenTelemetry ``TracerProvider`` (the SDK's; tests give one with an
        in-memory exporter).
    :param providers: the gateway's provider names → ``gen_ai.provider.name`` (:func:`provider_names`).
    :param close: called by :meth:`close` (the exporting provider's ``shutdown``, which flushes).
    """

    def __init__(self, tracer_provider: Any, providers: Mapping[str, str],
                 close: Callable[[], Any] | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._providers = dict(providers)
        self._close = close

    @classmethod
    def from_environment(cls, service_name: str, providers: Mapping[str, str]) -> Tracing | None:
        """An OTLP/HTTP-exporting :class:`Tracing` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else None.

        The exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers,
        timeout) and the batch processor ``OTEL_BSP_*``; ``OTEL_SERVICE_NAME`` overrides
        ``service_name``.
        """
        if not enabled():
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            logger.warning("%s is set but OpenTelemetry is not installed (pip install 'reactor-gateway[otel]'): "
                           "no traces", OTLP_ENDPOINT_ENV)
            return None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, providers, close=provider.shutdown)

    def close(self) -> None:
        """Export what is still buffered and stop (at the process's end)."""
        if self._close is not None:
            try:
                self._close()
            except Exception:
                logger.exception("closing the trace exporter failed")

    # -- the front door ----------------------------------------------------------------------------

    def request_started(self, surface: str, request_id: str, user_id: str, client_traceparent: str | None) -> Any:
        """The span of one inference request, until :meth:`request_ended`; a child of the client's
        trace when it sent a ``traceparent``."""
        parent = self._propagator.extract({"traceparent": client_traceparent}) if client_traceparent else None
        return self._tracer.start_span(surface, context=parent, kind=self._trace.SpanKind.SERVER, attributes={
            "reactor.request_id": request_id, "reactor.surface": surface, "user.id": user_id})

    def request_admitted(self, span: Any, job: Job, requested_model: str) -> str | None:
        """Name the request's span after what it asks, and return the ``traceparent`` its job carries."""
        operation = OPERATIONS.get(job.kind, job.kind)
        span.update_name(f"{operation} {requested_model}")
        span.set_attributes({"gen_ai.operation.name": operation, "gen_ai.request.model": requested_model})
        if job.alias is not None:
            span.set_attribute("reactor.alias", job.alias)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def request_ended(self, span: Any, status: int, code: str | None, model_id: str, provider: str) -> None:
        """End the request's span with the response's status, its error code, and what served."""
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if model_id:
            attributes["gen_ai.response.model"] = model_id
        if provider:
            attributes.update(self._provider_attributes(provider))
        if code is not None:
            attributes["error.type"] = code
        span.set_attributes(attributes)
        # A server's 4xx is the client's doing; a 5xx, or a stream that failed after its 200, is ours.
        if status >= 500 or (code is not None and status < 400):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
        span.end()

    # -- the worker --------------------------------------------------------------------------------

    def job_started(self, job: Job) -> Any:
        """The span of one job on this worker: a child of the front door's request span."""
        parent = self._propagator.extract({"traceparent": job.traceparent}) if job.traceparent else None
        operation = OPERATIONS.get(job.kind, job.kind)
        attributes: dict[str, Any] = {
            "reactor.request_id": job.request_id, "reactor.surface": job.surface, "user.id": job.user_id,
            "gen_ai.operation.name": operation, "reactor.attempt": job.attempt,
            "gen_ai.request.model": job.alias or job.targets[job.attempt].model_id}
        if job.alias is not None:
            attributes["reactor.alias"] = job.alias
        return self._tracer.start_span(f"job {operation}", context=parent, kind=self._trace.SpanKind.CONSUMER,
                                       attributes=attributes)

    def attempt_started(self, job_span: Any, job: Job, target: Target) -> Any:
        """The span of one upstream call of a job (a child of the job's span)."""
        operation = OPERATIONS.get(job.kind, job.kind)
        return self._tracer.start_span(
            f"{operation} {target.upstream_model}", context=self._trace.set_span_in_context(job_span),
            kind=self._trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.request.model": target.upstream_model,
                        "reactor.model_id": target.model_id, **self._provider_attributes(target.provider)})

    def attempt_ended(self, span: Any, error_code: str | None, tokens: Tokens | None) -> None:
        if tokens is not None:
            span.set_attributes({"gen_ai.usage.input_tokens": tokens.tokens_in,
                                 "gen_ai.usage.output_tokens": tokens.tokens_out})
        if error_code is not None:
            span.set_attribute("error.type", error_code)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error_code))
        span.end()

    def job_ended(self, span: Any, target: Target, status: str, tried: int, error_code: str | None,
                  tokens_in: int | None, tokens_out: int | None, cost_usd: float | None) -> None:
        """End a job's span with how it ended: the usage status, the target tried last, what it used."""
        attributes: dict[str, Any] = {
            "gen_ai.response.model": target.model_id, "reactor.status": status, "reactor.attempts": tried, **self._provider_attributes(target.provider)}
        if tokens_in is not None and tokens_out is not None:
            attributes["gen_ai.usage.input_tokens"] = tokens_in
            attributes["gen_ai.usage.output_tokens"] = tokens_out
        if cost_usd is not None:
            attributes["reactor.cost_usd"] = cost_usd
        if error_code is not None:
            attributes["error.type"] = error_code
        span.set_attributes(attributes)
        if status in ("error", "incomplete"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error_code))
        span.end()

    def _provider_attributes(self, provider: str) -> dict[str, str]:
        name = self._providers.get(provider, provider)
        return {"reactor.provider": provider, "gen_ai.provider.name": name, "gen_ai.system": name}
