"""``reactor ai …``: the registry and a running gateway from the command line.

``models import`` reads reactor.toml like the server commands; every other command is a client
of a running gateway (``api/client.py``: ``REACTOR_URL``, ``REACTOR_TOKEN`` or the stored
sign-in) and reads no config, so it works the same against a laptop or a fleet. Their output is
for people on a terminal (tables, colour) and plain when piped; ``--json`` is for scripts. A
failure is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec

from shared.config import Settings

from .client import HINTS, TIMEOUT, ClientError, access_token, as_json, error_from, gateway_url


def cmd_models_import(args: argparse.Namespace, settings: Settings) -> int:
    """Write an overlay with OpenRouter's current prices and context windows."""
    from pathlib import Path

    from shared.model_import import ImportProblem, overlay_from_openrouter
    from shared.overlay import registry_for

    output = Path(args.output)
    if output.exists() and not args.force:
        print(f"reactor: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    openrouter = settings.providers.get("openrouter")
    base_url = args.url or (openrouter.base_url if openrouter else None) or "https://openrouter.ai/api/v1"
    headers = {"Authorization": f"Bearer {openrouter.api_key}"} if openrouter and openrouter.api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=settings.registry_timeout)
        response.raise_for_status()
        listing = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"reactor: cannot read OpenRouter's model list from {base_url}/models: {exc}", file=sys.stderr)
        return 2
    registry = asyncio.run(registry_for(settings))
    try:
        text = overlay_from_openrouter(listing, registry, include_new=args.all, source=f"{base_url}/models")
    except ImportProblem as exc:
        print(f"reactor: {exc}", file=sys.stderr)
        return 2
    output.write_text(text)
    print(f"wrote {output}: {text.splitlines()[1].lstrip('# ')}")
    print(f"use it with registry_overlay = \"{output}\" in reactor.toml (or copy the tables you want into yours)")
    return 0


# --- client commands: they talk to a running gateway over HTTP and never read reactor.toml ---------

# Exit statuses: a failed command or check, and Ctrl-C (128 + SIGINT, as shells report it).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
# A completion may take minutes to finish; connecting may not.
CHAT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
# How long `reactor ai doctor` waits for one provider's one-token answer.
PROBE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PROBE_PROMPT = "ping"
PROBE_MAX_TOKENS = 1
# Values of each vector `reactor ai embed` shows without --json.
PREVIEW_VALUES = 4
# Typed alone on a line, ends an interactive chat.
CHAT_EXIT = "/exit"
# Registry prices are USD per million tokens.
PER_MTOK = 1_000_000
# When the health check counts a token as about to expire.
TOKEN_WARNING_S = 60


class Out:
    """Where results go: rich tables and colour on a terminal, plain aligned text when piped.

    Plain output has no box drawing and never wraps, so ``grep`` and ``cut`` work on it; scripts
    that want structure pass ``--json``.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.tty = self.console.is_terminal

    def text(self, text: str, style: str | None = None) -> None:
        """Model output or a message, never read as markup."""
        if self.tty:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            print(text, flush=True)

    def write(self, text: str) -> None:
        """Part of a line, shown at once (streamed tokens)."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def json(self, value: Any) -> None:
        print(as_json(value), flush=True)

    def table(self, headers: list[str], rows: list[list[str]], title: str | None = None) -> None:
        if self.tty:
            from rich import box
            from rich.table import Table

            table = Table(*headers, title=title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        if title:
            print(title)
        widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
        for row in [headers, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        sys.stdout.flush()


def _client_command(handler: Callable[[argparse.Namespace, Out], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` so that a failure is one line on stderr and Ctrl-C a quiet exit 130."""

    def run(args: argparse.Namespace) -> int:
        out = Out()
        try:
            return handler(args, out)
        except ClientError as exc:
            sys.stdout.flush()  # what was answered before the failure comes first
            print(f"reactor: {exc.line()}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            if out.tty:
                print(flush=True)  # end the half-written line
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`… | head`): say nothing more, and let no flush at exit complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED

    run.__doc__ = handler.__doc__
    return run


class Gateway:
    """The gateway's ``/ai/v1`` API, with the user's token; every failure a :class:`ClientError`."""

    def __init__(self, token: str | None = None) -> None:
        self.url = gateway_url()
        self.base = f"{self.url}/ai/v1"
        self._token = token

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = access_token()
        return self._token

    def _headers(self, auth: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if auth else {}

    def _unreachable(self, exc: httpx.HTTPError) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(f"the gateway at {self.url} did not answer in time ({type(exc).__name__})")
        return ClientError(f"cannot reach the gateway at {self.url}: {exc} "
                           "(start one with `reactor serve`, or set REACTOR_URL)")

    def request(self, method: str, path: str, *, body: Any = None, auth: bool = True,
                timeout: httpx.Timeout = TIMEOUT, accept: tuple[int, ...] = ()) -> tuple[int, Any]:
        """``(status, decoded JSON)``; a status of 400 or more not in ``accept`` is raised."""
        try:
            response = httpx.request(method, self.base + path, json=body, headers=self._headers(auth), timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise error_from(response)
        try:
            return response.status_code, response.json()
        except ValueError:
            raise ClientError(f"the gateway answered {path} with something other than JSON "
                              f"(HTTP {response.status_code}); is REACTOR_URL a Reactor gateway?") from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)[1]

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, body=body, **kwargs)[1]

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The chunks of a streamed completion, as they arrive; an error event is raised."""
        try:
            with httpx.stream("POST", f"{self.base}/chat/completions", json={**body, "stream": True},
                              headers=self._headers(True), timeout=CHAT_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ClientError("the gateway sent a stream event that is not JSON") from None
                    error = chunk.get("error") if isinstance(chunk, dict) else None
                    if error:
                        raise ClientError(error.get("message") or "the stream ended with an error", error.get("code"))
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        raise ClientError("the stream ended before its [DONE] line")

    def model(self, name: str) -> dict[str, Any] | None:
        """The ``/ai/v1/models`` object of ``name``, or None when the gateway does not list it."""
        try:
            return self.get(f"/models/{name}")
        except ClientError as exc:
            if exc.status == 404:
                return None
            raise


def _messages(args: argparse.Namespace, prompt: str) -> list[dict[str, Any]]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, {"role": "user", "content": prompt}]


def _chat_body(args: argparse.Namespace, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "messages": messages}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    return body


def _answer_text(message: dict[str, Any]) -> str:
    """What a completion's message says: its text, or the tool calls it asks for."""
    calls = message.get("tool_calls") or []
    text = message.get("content") or ""
    described = [f"(tool call: {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')}))"
                 for c in calls]
    return "\n".join([text, *described] if text else described)


def cost_usd(model: dict[str, Any] | None, usage: dict[str, Any]) -> float | None:
    """What ``usage`` costs at the registry's list prices for ``model``; None without prices."""
    if not model or model.get("input_price_per_mtok") is None:
        return None
    tokens_in = usage.get("prompt_tokens") or 0
    tokens_out = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    cached_price = model.get("cached_input_price_per_mtok")
    if cached_price is None:
        cached_price, cached = 0.0, 0
    return ((tokens_in - cached) * model["input_price_per_mtok"] + cached * cached_price
            + tokens_out * (model.get("output_price_per_mtok") or 0.0)) / PER_MTOK


def _money(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    return "$" + f"{value:.8f}".rstrip("0").rstrip(".")


def _price(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


@_client_command
def cmd_models_list(args: argparse.Namespace, out: Out) -> int:
    """Every model the gateway serves, with its providers, prices, context and capabilities; then the aliases."""
    data = Gateway().get("/models").get("data") or []
    if args.json:
        out.json(data)
        return 0
    models = [m for m in data if not m.get("alias")]
    rows = [[m["id"], ", ".join(m.get("providers") or []) or "-", _price(m.get("input_price_per_mtok")),
             _price(m.get("output_price_per_mtok")),
             f"{m['context_window']:,}" if m.get("context_window") else "-", ", ".join(m.get("capabilities") or [])]
            for m in models]
    out.table(["MODEL", "PROVIDERS", "IN $/MTOK", "OUT $/MTOK", "CONTEXT", "CAPABILITIES"], rows)
    aliases = [m for m in data if m.get("alias")]
    if aliases:
        print(flush=True)
        _alias_table(out, aliases, title="Aliases")
    return 0


def _alias_table(out: Out, aliases: list[dict[str, Any]], title: str | None = None) -> None:
    out.table(["ALIAS", "STRATEGY", "TARGETS"],
              [[a["id"], a.get("strategy") or "-", ", ".join(a.get("targets") or [])] for a in aliases], title=title)


@_client_command
def cmd_aliases_list(args: argparse.Namespace, out: Out) -> int:
    """Every alias: its strategy and its target models."""
    aliases = [m for m in Gateway().get("/models").get("data") or [] if m.get("alias")]
    if args.json:
        out.json([{"alias": a["id"], "strategy": a.get("strategy"), "targets": a.get("targets") or []}
                  for a in aliases])
    elif aliases:
        _alias_table(out, aliases)
    else:
        out.text("No aliases: define them in the registry overlay (ai-models.toml).")
    return 0


@_client_command
def cmd_test(args: argparse.Namespace, out: Out) -> int:
    """One non-streamed completion, then its latency, tokens and cost."""
    gateway = Gateway()
    started = time.perf_counter()
    answer = gateway.post("/chat/completions", _chat_body(args, _messages(args, args.prompt)), timeout=CHAT_TIMEOUT)
    latency_ms = (time.perf_counter() - started) * 1000
    usage = answer.get("usage") or {}
    served = answer.get("model") or args.model
    cost = cost_usd(gateway.model(served), usage)
    choice = (answer.get("choices") or [{}])[0]
    if args.json:
        out.json({"model": served, "answer": _answer_text(choice.get("message") or {}),
                  "finish_reason": choice.get("finish_reason"), "latency_ms": round(latency_ms, 1),
                  "tokens_in": usage.get("prompt_tokens"), "tokens_out": usage.get("completion_tokens"),
                  "cost_usd": cost, "response": answer})
        return 0
    out.text(_answer_text(choice.get("message") or {}))
    out.text(f"— {served} · {latency_ms:.0f} ms · tokens in {usage.get('prompt_tokens', '?')}, "
             f"out {usage.get('completion_tokens', '?')} · cost {_money(cost)}"
             + (f" · finish {choice['finish_reason']}" if choice.get("finish_reason") not in (None, "stop") else ""),
             style="dim")
    return 0


def _reply(gateway: Gateway, args: argparse.Namespace, out: Out, messages: list[dict[str, Any]]) -> str:
    """One assistant turn, printed as it comes (``--stream``) or whole; returns its text."""
    body = _chat_body(args, messages)
    if not args.stream:
        answer = gateway.post("/chat/completions", body, timeout=CHAT_TIMEOUT)
        if args.json:
            print(json.dumps(answer), flush=True)
        message = ((answer.get("choices") or [{}])[0]).get("message") or {}
        if not args.json:
            out.text(_answer_text(message))
        return message.get("content") or ""
    parts: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    for chunk in gateway.stream_chat(body):
        if args.json:
            print(json.dumps(chunk), flush=True)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
                if not args.json:
                    out.write(delta["content"])
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
    if not args.json:
        for call in calls.values():
            out.write(f"{chr(10) if parts else ''}(tool call: {call['name']}({call['arguments']}))")
        out.write("\n")
    return "".join(parts)


@_client_command
def cmd_chat(args: argparse.Namespace, out: Out) -> int:
    """One prompt, or (without --prompt) a conversation read line by line from stdin."""
    gateway = Gateway()
    if args.prompt is not None:
        _reply(gateway, args, out, _messages(args, args.prompt))
        return 0
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = out.tty and sys.stdin.isatty()
    if interactive:
        out.text(f"Chatting with {args.model}; {CHAT_EXIT} or Ctrl-D ends.", style="dim")
    status = 0
    while True:
        try:
            line = out.console.input("[bold cyan]you[/]> ") if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line:
            break  # end of input
        prompt = line.strip()
        if prompt == CHAT_EXIT:
            break
        if not prompt:
            continue
        history.append({"role": "user", "content": prompt})
        try:
            history.append({"role": "assistant", "content": _reply(gateway, args, out, history)})
            status = 0
        except ClientError as exc:
            # The conversation goes on without the turn that failed.
            history.pop()
            print(f"reactor: {exc.line()}", file=sys.stderr, flush=True)
            status = EXIT_FAILED
    if interactive:
        print(flush=True)
    return status


@_client_command
def cmd_embed(args: argparse.Namespace, out: Out) -> int:
    """Embed each TEXT: its dimensions and first values (whole vectors with --json)."""
    body: dict[str, Any] = {"model": args.model, "input": args.texts}
    if args.dimensions is not None:
        body["dimensions"] = args.dimensions
    answer = Gateway().post("/embeddings", body, timeout=CHAT_TIMEOUT)
    if args.json:
        out.json(answer)
        return 0
    data = sorted(answer.get("data") or [], key=lambda item: item.get("index", 0))
    rows = []
    for item in data:
        vector = item.get("embedding") or []
        shown = ", ".join(f"{v:.5f}" for v in vector[:PREVIEW_VALUES]) + (", …" if len(vector) > PREVIEW_VALUES else "")
        rows.append([args.texts[item.get("index", 0)], str(len(vector)), f"[{shown}]"])
    out.table(["TEXT", "DIMENSIONS", "FIRST VALUES"], rows)
    sizes = sorted({len(item.get("embedding") or []) for item in data})
    usage = answer.get("usage") or {}
    out.text(f"— {answer.get('model') or args.model} · {'/'.join(map(str, sizes))} dimensions · "
             f"tokens {usage.get('prompt_tokens', '?')}", style="dim")
    return 0


# --- reactor ai usage ---------------------------------------------------------------------------------

# Groupings `reactor ai usage --by` offers (those of GET /ai/v1/usage).
USAGE_GROUPINGS = ("day", "model", "user", "provider")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


@_client_command
def cmd_usage(args: argparse.Namespace, out: Out) -> int:
    """Requests, tokens and cost from the usage counters: totals, then one row per day, model, user or provider."""
    params = {name: value for name, value in (("since", args.since), ("until", args.until), ("user", args.user),
                                              ("model", args.model), ("by", args.by)) if value}
    answer = Gateway().get("/usage" + (f"?{urlencode(params)}" if params else ""))
    if args.json:
        out.json(answer)
        return 0
    totals = answer.get("totals") or {}
    by = answer.get("by") or args.by or "day"
    scope = f"user {answer['user']}" if answer.get("user") else "every user"
    scope += f", model {answer['model']}" if answer.get("model") else ", every model"
    out.text(f"Usage {answer.get('since')} to {answer.get('until')} (UTC), {scope}")
    out.text(f"requests {_count(totals.get('requests'))} · tokens in {_count(totals.get('tokens_in'))}, "
             f"out {_count(totals.get('tokens_out'))} · cost {_money(totals.get('cost_usd'))}")
    groups = answer.get("groups") or []
    if not groups:
        out.text("No usage recorded in this range.", style="dim")
        return 0
    print(flush=True)
    out.table([by.upper(), "REQUESTS", "TOKENS IN", "TOKENS OUT", "COST"],
              [[str(g.get(by)), _count(g.get("requests")), _count(g.get("tokens_in")), _count(g.get("tokens_out")),
                _money(g.get("cost_usd"))] for g in groups])
    return 0


# --- reactor ai doctor --------------------------------------------------------------------------------


class Check(msgspec.Struct):
    """One line of the doctor's report; ``ok`` None is a check that could not run."""

    check: str
    ok: bool | None
    detail: str
    fix: str | None = None


class Doctor:
    """Runs the checks in order, printing each as it completes (unless the report is JSON)."""

    MARKS = {True: ("ok  ", "green"), False: ("FAIL", "bold red"), None: ("skip", "yellow")}

    def __init__(self, out: Out, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.checks: list[Check] = []

    def report(self, check: str, ok: bool | None, detail: str, fix: str | None = None) -> bool | None:
        self.checks.append(Check(check, ok, detail, fix))
        if not self.as_json:
            mark, style = self.MARKS[ok]
            line = f"{check}: {detail}" + (f" — fix: {fix}" if fix and ok is not True else "")
            if self.out.tty:
                from rich.text import Text

                self.out.console.print(Text.assemble((mark, style), "  ", line))
            else:
                print(f"{mark}  {line}", flush=True)
        return ok

    @property
    def healthy(self) -> bool:
        return all(c.ok is not False for c in self.checks)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (the gateway verifies).

    :raises ValueError: ``token`` is not a JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


def probe_models(models: list[dict[str, Any]], providers: list[str]) -> dict[str, str]:
    """A chat model per provider to send the doctor's one-token request to: one only that provider
    serves when there is one (so no fallback can hide its failure), else one it serves first."""
    chat = [m for m in models if not m.get("alias") and "chat" in (m.get("capabilities") or [])]
    chosen: dict[str, str] = {}
    for provider in providers:
        only = [m["id"] for m in chat if (m.get("providers") or []) == [provider]]
        first = [m["id"] for m in chat if (m.get("providers") or [None])[0] == provider]
        if only or first:
            chosen[provider] = (only or first)[0]
    return chosen


def _duration(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(0, int(seconds // 60))} min"


@_client_command
def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    """Check the gateway, the token, Redis, the registry, and each provider's workers, credentials and answers."""
    doctor = Doctor(out, args.json)
    gateway = Gateway()
    try:
        status, health = gateway.request("GET", "/health", auth=False, accept=(503,))
    except ClientError as exc:
        doctor.report("gateway reachable", False, exc.message, "start it with `reactor serve`, or set REACTOR_URL")
        return _doctor_done(doctor, out, args.json)
    doctor.report("gateway reachable", True, f"{gateway.url} (status {health.get('status')}, "
                                             f"version {health.get('version')})")

    models = _check_token(doctor, gateway)
    doctor.report("redis reachable", bool(health.get("redis")),
                  "the gateway reaches its Redis" if health.get("redis") else "the gateway cannot use its Redis",
                  "check that Redis runs and that the gateway's REDIS_URL points at it")
    registry = health.get("registry") or {}
    if registry.get("last_error"):
        doctor.report("registry valid", False, registry["last_error"],
                      "correct the overlay; until then the gateway serves the last registry that loaded")
    else:
        doctor.report("registry valid", True, f"version {registry.get('version', '?')} from {registry.get('source', '?')}")

    workers: dict[str, int] = health.get("workers") or {}
    missing: dict[str, str] = health.get("missing_credentials") or {}
    for provider, count in workers.items():
        if count:
            doctor.report(f"workers for {provider}", True, f"{count} live")
        else:
            doctor.report(f"workers for {provider}", False, "no live worker serves this provider",
                          f"start one (`reactor worker --provider {provider}`) and read its log")
        if provider not in missing:
            doctor.report(f"credentials for {provider}", True, "present")
        elif count:
            # A worker refuses to start without credentials: the live ones have them.
            doctor.report(f"credentials for {provider}", True, "held by the workers (not by this front door)")
        else:
            doctor.report(f"credentials for {provider}", False, "none configured",
                          f"{missing[provider]} where the gateway runs, or set enabled = false in "
                          f"[gateway.providers.{provider}]")

    if models is None:
        for provider in workers:
            doctor.report(f"provider {provider} answers", None, "needs a token accepted by the gateway")
        return _doctor_done(doctor, out, args.json)
    chosen = probe_models(models, list(workers))
    for provider in workers:
        model = chosen.get(provider)
        if model is None:
            doctor.report(f"provider {provider} answers", None, "no chat model routes to it")
            continue
        if not workers[provider]:
            doctor.report(f"provider {provider} answers", None, "no live worker to ask")
            continue
        started = time.perf_counter()
        try:
            gateway.post("/chat/completions", {"model": model, "max_tokens": PROBE_MAX_TOKENS,
                                               "messages": [{"role": "user", "content": PROBE_PROMPT}]},
                         timeout=PROBE_TIMEOUT)
        except ClientError as exc:
            doctor.report(f"provider {provider} answers", False, f"{model}: {exc.line()}",
                          f"check {provider}'s credentials, base URL and status; "
                          f"`reactor ai test {model} --prompt {PROBE_PROMPT}` shows the whole answer")
            continue
        doctor.report(f"provider {provider} answers", True,
                      f"{model} in {(time.perf_counter() - started) * 1000:.0f} ms")
    return _doctor_done(doctor, out, args.json)


def _check_token(doctor: Doctor, gateway: Gateway) -> list[dict[str, Any]] | None:
    """Whether there is a token, unexpired, that the gateway accepts: the model listing it was
    accepted for, or None."""
    try:
        token = gateway.token
    except ClientError as exc:
        doctor.report("token", False, exc.message, HINTS["unauthorized"])
        return None
    try:
        exp = token_expiry(token)
    except (ValueError, UnicodeDecodeError):
        doctor.report("token", False, "REACTOR_TOKEN (or the stored token) is not a JWT", HINTS["unauthorized"])
        return None
    left = None if exp is None else exp - time.time()
    if left is not None and left <= 0:
        doctor.report("token", False, f"expired {_duration(-left)} ago", HINTS["unauthorized"])
        return None
    try:
        listing = gateway.get("/models", timeout=PROBE_TIMEOUT)
    except ClientError as exc:
        doctor.report("token", False, f"the gateway refuses it: {exc.message}", HINTS["unauthorized"])
        return None
    expiry = "no expiry" if left is None else f"expires in {_duration(left)}"
    if left is not None and left < TOKEN_WARNING_S:
        expiry += " (renew it soon)"
    doctor.report("token", True, f"accepted, {expiry}")
    return listing.get("data") or []


def _doctor_done(doctor: Doctor, out: Out, as_json: bool) -> int:
    if as_json:
        out.json({"ok": doctor.healthy, "checks": [msgspec.to_builtins(c) for c in doctor.checks]})
    return 0 if doctor.healthy else EXIT_FAILED


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    ai = sub.add_parser("ai", help="models, aliases, chat and embeddings through a running gateway",
                        description="Talk to the gateway at $REACTOR_URL (default http://127.0.0.1:8004) with "
                                    "$REACTOR_TOKEN or the token `reactor auth login` stored.")
    ai_sub = ai.add_subparsers(dest="ai_command", required=True)

    def client(parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(handler=handler, client=True)

    def chat_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="a model id or alias (`reactor ai models list`)")
        parser.add_argument("--system", help="a system message to start with")
        parser.add_argument("--max-tokens", type=int, help="the most tokens the answer may have")

    models = ai_sub.add_parser("models", help="models and prices")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="every model the gateway serves: providers, prices, context")
    client(listing, cmd_models_list)
    importer = models_sub.add_parser("import", help="write an overlay with a provider's current prices")
    common(importer)
    importer.add_argument("source", choices=["openrouter"], help="where to read the model list")
    importer.add_argument("--output", default="ai-models.openrouter.toml",
                          help="the overlay file to write (default: ai-models.openrouter.toml)")
    importer.add_argument("--all", action="store_true",
                          help="also add every model the registry does not have, under its OpenRouter id")
    importer.add_argument("--url", help="the model list's base URL (default: the openrouter provider's base_url)")
    importer.add_argument("--force", action="store_true", help="replace the output file if it exists")
    importer.set_defaults(handler=cmd_models_import)

    aliases = ai_sub.add_parser("aliases", help="routing aliases")
    aliases_sub = aliases.add_subparsers(dest="aliases_command", required=True)
    client(aliases_sub.add_parser("list", help="every alias: strategy and targets"), cmd_aliases_list)

    test = ai_sub.add_parser("test", help="one completion, with its latency, tokens and cost")
    chat_options(test)
    test.add_argument("--prompt", required=True, help="what to ask")
    client(test, cmd_test)

    chat = ai_sub.add_parser("chat", help="ask once with --prompt, or chat line by line (stdin) keeping the history")
    chat_options(chat)
    chat.add_argument("--prompt", help=f"ask this once; without it, read turns from stdin until EOF or {CHAT_EXIT}")
    chat.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    client(chat, cmd_chat)

    embed = ai_sub.add_parser("embed", help="embeddings: dimensions and first values of each text")
    embed.add_argument("model", help="an embeddings model (`reactor ai models list`)")
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="a text to embed (several make one request)")
    embed.add_argument("--dimensions", type=int, help="shorten the vectors to this many dimensions")
    client(embed, cmd_embed)

    doctor = ai_sub.add_parser("doctor", help="check the gateway, token, Redis, registry and every provider")
    client(doctor, cmd_doctor)

    usage = ai_sub.add_parser("usage", help="requests, tokens and cost per day, model, user or provider",
                              description="Read GET /ai/v1/usage: your own usage, or anyone's with an admin token "
                                          "(`reactor auth token USER --admin`).")
    usage.add_argument("--user", help="whose usage (another user's needs an admin token; default: yours, "
                                      "or everyone's with an admin token)")
    usage.add_argument("--model", help="only this model id")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="the first UTC day (default: 29 days before --until)")
    usage.add_argument("--until", metavar="YYYY-MM-DD", help="the last UTC day, included (default: today)")
    usage.add_argument("--by", choices=USAGE_GROUPINGS, default="day", help="one row per day (default), model, "
                                                                            "user or provider")
    client(usage, cmd_usage)
