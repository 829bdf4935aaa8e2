"""Security through a running gateway: hostile tokens, credentials in URLs, secrets that must never
leave the processes, where upstream requests may go, and the size of what an upstream may send.

Every test here drives real ``reactor api`` / ``reactor worker`` processes (``RunningGateway``).
The upstream most of them talk to is :class:`EchoUpstream`, which answers what a prompt asks
(``#echo=401``, ``#echo=hang``, ``#echo=big``) and echoes every header it was sent into its error
bodies, whole and shortened, as careless upstreams do.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.config import ConfigError, load_settings

from .gateway_proc import LOCAL_KEY, REPO, RunningGateway, free_port
from .mocks.azure import MockAzure
from .mocks.bedrock import MockBedrock
from .test_auth import JWKSServer, forge, fresh_claims, hs256, rsa_jwk

HTTP_TIMEOUT = 20.0
ISSUER = "https://id.security.test"
AUDIENCE = "reactor-security"
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
# What `jwks_gateway`'s workers take from an upstream; EchoUpstream's big answers are four times that.
UPSTREAM_LIMIT = 100_000


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of ``response`` (Anthropic's for the Messages API), checked to have ``status``."""
    assert response.status_code == status, response.text
    body = response.json()
    if response.request.url.path.endswith("/messages"):
        # Anthropic's Messages API answers in Anthropic's error shape.
        assert body["type"] == "error" and {"type", "message"} <= set(body["error"])
        return {**body["error"], "code": {401: "unauthorized", 503: "service_unavailable"}.get(status)}
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- an upstream that echoes what it is sent ------------------------------------------------------------


class EchoUpstream:
    """An OpenAI-, Azure- and Bedrock-ish upstream for hostile cases.

    A request's body picks the answer with ``#echo=WHAT`` (or its path, with ``/echo-WHAT``):

    - a status code (``401``, ``403``, ``429``, ``500``...): that error, whose message (in
      OpenAI's ``error.message`` and Bedrock's ``message``) lists every header received, each
      whole and shortened to its first ten and last four characters.
    - ``err200``: the same error inside a 200 body.
    - ``hang``: say nothing until the gateway gives up.
    - ``big``: a valid completion of :attr:`big_bytes` bytes, with a Content-Length.
    - ``bigchunked``: the same without one (chunked), so only counting can stop it.
    - ``bigline``: a stream whose second event is one line of :attr:`big_bytes` bytes.

    Anything else gets a small valid completion (or embeddings, or an SSE stream). Every request is
    recorded (method, path, headers, body).
    """

    def __init__(self, big_bytes: int = 400_000) -> None:
        self.requests: list[dict[str, Any]] = []
        self.big_bytes = big_bytes
        self.hang_seconds = 8.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._answer(b"")

            def do_POST(self) -> None:  # noqa: N802
                self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _answer(self, raw: bytes) -> None:
                owner.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": raw})
                text = raw.decode("utf-8", "replace")
                match = re.search(r"#echo=(\w+)", text) or re.search(r"/echo-(\w+)", self.path)
                what = match.group(1) if match else ""
                if what.isdigit():
                    self._json(int(what), owner.error_body(dict(self.headers)))
                elif what == "err200":
                    self._json(200, owner.error_body(dict(self.headers)))
                elif what == "hang":
                    time.sleep(owner.hang_seconds)
                    self._json(200, completion("late"))
                elif what == "big":
                    self._json(200, completion("x" * owner.big_bytes))
                elif what == "bigchunked":
                    self._chunked(json.dumps(completion("x" * owner.big_bytes)).encode())
                elif what == "bigline":
                    self._stream("x" * owner.big_bytes)
                elif self.path.endswith("/embeddings"):
                    self._json(200, {"object": "list", "model": "echo", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                                     "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})
                elif '"stream":true' in text.replace(" ", ""):
                    self._stream()
                else:
                    self._json(200, completion("ok"))

            def _json(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunked(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(body), 65536):
                    part = body[start:start + 65536]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")

            def _stream(self, *texts: str) -> None:
                events = []
                for text in ("ok", *texts):
                    chunk = {**completion(""), "object": "chat.completion.chunk"}
                    chunk["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
                    events.append(f"data: {json.dumps(chunk)}\n\n")
                body = ("".join(events) + "data: [DONE]\n\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @staticmethod
    def error_body(headers: dict[str, str]) -> dict[str, Any]:
        # Credentials first, so that a caller keeping only the start of the message still gets them.
        ordered = sorted(headers.items(), key=lambda item: not re.search("auth|key|token", item[0], re.IGNORECASE))
        echoed = "; ".join(f"{name}: {value} (that is {value[:10]}...{value[-4:]})" for name, value in ordered)
        message = f"Request refused. You sent {echoed}"
        return {"error": {"message": message, "type": "invalid_request_error", "code": "echo"}, "message": message}

    def __enter__(self) -> "EchoUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A gateway that gave up on a hanging answer hangs up: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def completion(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-echo", "object": "chat.completion", "created": int(time.time()), "model": "echo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


def prefix() -> str:
    return f"rtest-{uuid.uuid4().hex[:8]}:"


# --- 1. tokens, through a gateway that verifies against a JWKS ------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks(rsa_key) -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
        yield server


@pytest.fixture(scope="module")
def jwks_gateway(tmp_path_factory, redis_url, echo, jwks) -> Iterator[RunningGateway]:
    gw = RunningGateway(tmp_path_factory.mktemp("jwks-gw"), redis_url, prefix(), echo.url, echo.url,
                        f'auth_url = "{jwks.url}"\nauth_issuer = "{ISSUER}"\nauth_audience = "{AUDIENCE}"\n'
                        f"max_upstream_response_bytes = {UPSTREAM_LIMIT}\nmax_stream_line_bytes = {UPSTREAM_LIMIT}\n",
                        api_args=("--access-log",))
    try:
        yield gw.start()
    finally:
        gw.stop()


def signed(key: rsa.RSAPrivateKey, kid: str = "rsa-1", **claims: Any) -> str:
    return jwt.encode({**fresh_claims(iss=ISSUER, aud=AUDIENCE), **claims}, key, algorithm="RS256",
                      headers={"kid": kid})


def get_models(gw: RunningGateway, token: str | None, query: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gw.base_url}/models{query}", headers=headers, timeout=HTTP_TIMEOUT)


def test_a_good_token_passes(jwks_gateway, rsa_key) -> None:
    response = get_models(jwks_gateway, signed(rsa_key))

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "list"


def bad_tokens(key: rsa.RSAPrivateKey) -> dict[str, tuple[str, str]]:
    """Tokens a gateway must refuse, each with what the refusal says."""
    now = int(time.time())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = fresh_claims(iss=ISSUER, aud=AUDIENCE)
    return {
        "alg none": (forge({"alg": "none", "kid": "rsa-1"}, claims), "algorithm not accepted"),
        "alg none without kid": (forge({"alg": "none"}, claims), "unknown key"),
        "hs256 with the public key": (hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, pem),
                                      "algorithm not accepted"),
        "expired": (signed(key, exp=now - 3600, iat=now - 7200), "expired"),
        "not yet valid": (signed(key, nbf=now + 3600), "not yet valid"),
        "wrong issuer": (signed(key, iss="https://evil.example"), "issuer not accepted"),
        "wrong audience": (signed(key, aud="billing"), "audience not accepted"),
        "tampered": (signed(key)[:-6] + "AAAAAA", "signature is invalid"),
        "not a jwt": ("not-a-jwt", "Malformed token"),
    }


@pytest.mark.parametrize("case", ["alg none", "alg none without kid", "hs256 with the public key", "expired",
                                  "not yet valid", "wrong issuer", "wrong audience", "tampered", "not a jwt"])
def test_hostile_tokens_are_401(jwks_gateway, rsa_key, case: str) -> None:
    token, says = bad_tokens(rsa_key)[case]

    for response in (
        get_models(jwks_gateway, token),
        httpx.post(f"{jwks_gateway.base_url}/chat/completions", headers={"Authorization": f"Bearer {token}"},
                   json={"model": "mock-local", "messages": [{"role": "user", "content": "hi"}]}, timeout=HTTP_TIMEOUT),
        # Anthropic's header takes the same path to the verifier.
        httpx.post(f"{jwks_gateway.url}/ai/v1/messages", headers={"x-api-key": token},
                   json={"model": "mock-local", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                   timeout=HTTP_TIMEOUT),
    ):
        error = error_of(response, 401)
        assert error["code"] == "unauthorized"
        assert says.lower() in error["message"].lower()


def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(jwks_gateway, jwks, rsa_key) -> None:
    assert get_models(jwks_gateway, signed(rsa_key, jti="warm")).status_code == 200
    before = jwks.fetches
    junk_key = ec.generate_private_key(ec.SECP256R1())

    for i in range(8):
        token = jwt.encode(fresh_claims(iss=ISSUER, aud=AUDIENCE), junk_key, algorithm="ES256",
                           headers={"kid": f"junk-{i}"})
        assert "unknown key" in error_of(get_models(jwks_gateway, token), 401)["message"]

    # api.auth.JWKS_MIN_REFETCH_S (30 s) between refetches: junk kids cost Identity one fetch at most.
    assert jwks.fetches - before <= 1


@pytest.mark.parametrize("param", ["access_token", "token", "api_key", "key", "Access_Token"])
def test_tokens_in_the_query_string_are_refused_even_with_a_good_header(jwks_gateway, rsa_key, param: str) -> None:
    token = signed(rsa_key, jti=f"query-{param}")

    responses = [
        get_models(jwks_gateway, token, f"?{param}={token}"),
        get_models(jwks_gateway, None, f"?{param}={token}"),
        httpx.post(f"{jwks_gateway.base_url}/chat/completions?{param}={token}",
                   headers={"Authorization": f"Bearer {token}"},
                   json={"model": "mock-local", "messages": [{"role": "user", "content": "hi"}]}, timeout=HTTP_TIMEOUT),
        httpx.post(f"{jwks_gateway.url}/ai/v1/messages?{param}={token}", headers={"x-api-key": token},
                   json={"model": "mock-local", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                   timeout=HTTP_TIMEOUT),
        httpx.get(f"{jwks_gateway.base_url}/usage?{param}={token}", headers={"Authorization": f"Bearer {token}"},
                  timeout=HTTP_TIMEOUT),
    ]

    for response in responses:
        error = error_of(response, 401)
        assert error["code"] == "unauthorized"
        assert "Authorization: Bearer" in error["message"]
        assert param in error["message"]
        assert token not in response.text
    # uvicorn's access line names the URL: the token in it is masked.
    deadline = time.monotonic() + 5
    while "?" + param not in (log := (jwks_gateway.workdir / "api.log").read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"{param}=[redacted]" in log
    assert token not in log


def test_other_query_parameters_still_work(jwks_gateway, rsa_key) -> None:
    assert get_models(jwks_gateway, signed(rsa_key), "?limit=5&keys=1").status_code == 200


# Identity down at all, or answering something that is not a key set (tests/test_auth.py has each
# kind of outage against the verifier itself).
@pytest.mark.parametrize("outage", ["refused", "not a key set"])
def test_jwks_down_with_no_keys_is_503_never_401_or_a_pass(tmp_path, redis_url, echo, rsa_key, outage: str) -> None:
    with JWKSServer() as identity:
        if outage == "refused":
            url = f"http://127.0.0.1:{free_port()}"  # nothing listens
        else:
            identity.jwks = ["not", "a", "key set"]
            url = identity.url
        gw = RunningGateway(tmp_path / "gw", redis_url, prefix(), echo.url, echo.url,
                            f'auth_url = "{url}"\nauth_issuer = "{ISSUER}"\nauth_audience = "{AUDIENCE}"\n')
        try:
            gw.start()
            for _ in range(3):  # the first fetch fails, then the refetch interval holds: still 503
                for token in (signed(rsa_key), forge({"alg": "none", "kid": "rsa-1"}, fresh_claims())):
                    response = get_models(gw, token)
                    error = error_of(response, 503)
                    assert error["code"] == "service_unavailable"
                    assert error["type"] == "server_error"
                    assert "JWKS" in error["message"]
                    assert int(response.headers["retry-after"]) > 0
            chat = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {signed(rsa_key)}"},
                              json={"model": "mock-local", "messages": [{"role": "user", "content": "hi"}]},
                              timeout=HTTP_TIMEOUT)
            assert error_of(chat, 503)["code"] == "service_unavailable"
            # A request without a token is still the caller's fault.
            assert error_of(get_models(gw, None), 401)["code"] == "unauthorized"
        finally:
            gw.stop()


# --- 2. secrets never leak ---------------------------------------------------------------------------------


def _secret(prefix: str, length: int = 40) -> str:
    return (prefix + uuid.uuid4().hex + uuid.uuid4().hex)[:length]


SECRETS = {
    "OPENROUTER_API_KEY": _secret("sk-or-v1-", 73),
    "LOCAL_LLM_KEY": _secret("gk", 36),  # a generic upstream's key, in no known key format
    "AZURE_FOUNDRY_API_KEY": _secret("", 32),
    "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
    "AWS_SECRET_ACCESS_KEY": _secret("wJalr/", 40),
    "AWS_SESSION_TOKEN": _secret("FQoGZX", 120),
    "AWS_BEARER_TOKEN_BEDROCK": _secret("ABSKQmVk", 80),
    "REACTOR_AI_ANALYTICS_TOKEN": _secret("atk", 40),
    # A credential in a provider table's extra headers.
    "HEADER_TOKEN": _secret("hdr", 40),
}
AWS_ENV = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
LEAK_OVERLAY = f"""
[models."sec-openrouter"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "openrouter", model = "echo/or" }}]

[models."sec-local"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "local", model = "echo-local" }}]

[models."sec-local-embed"]
owned_by = "security"
capabilities = ["embeddings"]
routes = [{{ provider = "local", model = "echo-embed" }}]

[models."sec-headers"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "headers", model = "echo-headers" }}]

[models."sec-foundry"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "foundry", model = "gpt-4o-mini" }}]

[models."sec-azure"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "azure_mock", model = "gpt-4o-mini" }}]

[models."sec-bedrock"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "bedrock", model = "{BEDROCK_MODEL}" }}]

[models."sec-bedrock-echo"]
owned_by = "security"
capabilities = ["chat", "streaming"]
routes = [{{ provider = "bedrock_echo", model = "{BEDROCK_MODEL}" }}]
"""


class Collected:
    """Everything a run showed anyone: response bodies and headers, logs, metrics, Redis."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def response(self, what: str, response: httpx.Response) -> httpx.Response:
        self.texts.append((f"{what}: headers", "\n".join(f"{k}: {v}" for k, v in response.headers.items())))
        self.texts.append((f"{what}: body", response.text))
        return response

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        found = []
        for name, secret in secrets.items():
            for needle in (secret, secret[:8]):
                for where, text in self.texts:
                    if needle in text:
                        at = text.index(needle)
                        found.append(f"{name} ({needle!r}) in {where}: ...{text[max(0, at - 120):at + 60]!r}")
        return found


def drive_errors(gw: RunningGateway, out: Collected, models: list[str], admin_token: str, *,
                 local: bool = True) -> None:
    """Every error path a client can reach on ``models`` (and, with ``local``, on the generic
    provider's chat and embeddings), and then the gateway's own views."""
    headers = {"Authorization": f"Bearer {gw.token()}"}
    chat = f"{gw.base_url}/chat/completions"

    def post(what: str, url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", headers)
        return out.response(what, httpx.post(url, json=body, timeout=HTTP_TIMEOUT, **kwargs))

    # One request that succeeds, so usage is metered (and the Analytics feed has something to send);
    # the echo upstream answers in OpenAI's shape, which a Bedrock route (local=False) refuses.
    ok = post("ok", chat, {"model": models[0], "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 or not local, ok.text
    for model in models:
        for directive in ("401", "403", "429", "500", "err200"):
            for stream in (False, True):
                response = post(f"{model} #echo={directive} stream={stream}", chat, {
                    "model": model, "stream": stream, "messages": [{"role": "user", "content": f"#echo={directive}"}]})
                assert response.status_code >= 400 or stream, (model, directive, response.text)
    if local:
        # An upstream that stops answering.
        response = post("timeout", chat, {"model": "sec-local", "messages": [{"role": "user", "content": "#echo=hang"}]})
        assert response.status_code == 504, response.text
        post("embeddings 401", f"{gw.base_url}/embeddings", {"model": "sec-local-embed", "input": "#echo=401"})
    # Requests the gateway refuses itself.
    post("empty body", chat, headers={**headers, "Content-Type": "application/json"})
    out.response("not json", httpx.post(chat, content=b"{not json", headers=headers, timeout=HTTP_TIMEOUT))
    post("no model", chat, {"messages": []})
    post("unknown model", chat, {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    post("bad token", chat, {"model": models[0], "messages": []}, headers={"Authorization": "Bearer nope"})
    post("query token", f"{chat}?api_key={SECRETS['LOCAL_LLM_KEY']}", {"model": models[0], "messages": []})
    out.response("too large", httpx.post(chat, content=b"x" * 300_000, headers=headers, timeout=HTTP_TIMEOUT))
    for model in models:
        post(f"{model} responses 401", f"{gw.base_url}/responses", {"model": model, "input": "#echo=401"})
        post(f"{model} messages 401", f"{gw.url}/ai/v1/messages",
             {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "#echo=401"}]})
    # The gateway's own views.
    admin = {"Authorization": f"Bearer {admin_token}"}
    out.response("health", httpx.get(f"{gw.base_url}/health", timeout=HTTP_TIMEOUT))
    out.response("fleet", httpx.get(f"{gw.base_url}/fleet", headers=admin, timeout=HTTP_TIMEOUT))
    out.response("usage", httpx.get(f"{gw.base_url}/usage?by=model", headers=admin, timeout=HTTP_TIMEOUT))
    out.response("models", httpx.get(f"{gw.base_url}/models", headers=headers, timeout=HTTP_TIMEOUT))
    out.response("api metrics", httpx.get(f"{gw.url}/metrics", timeout=HTTP_TIMEOUT))


def collect_process_output(gw: RunningGateway, out: Collected) -> None:
    """Redis under the gateway's prefix, then (after stopping it, so every line is flushed) its logs."""
    out.add("usage events", json.dumps(gw.usage_events()))
    for key in gw.redis.scan_iter(match=f"{gw.prefix}*", count=1000):
        kind = gw.redis.type(key)
        if kind == b"string":
            value = gw.redis.get(key)
        elif kind == b"hash":
            value = gw.redis.hgetall(key)
        elif kind == b"stream":
            value = gw.redis.xrange(key)
        elif kind == b"list":
            value = gw.redis.lrange(key, 0, -1)
        elif kind == b"zset":
            value = gw.redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = gw.redis.smembers(key)
        else:
            continue
        out.add(f"redis {key!r}", repr(value))


def stopped_logs(gw: RunningGateway, out: Collected) -> None:
    gw.stop()
    for log in gw.workdir.glob("*.log"):
        out.add(f"log {log.name}", log.read_text(errors="replace"))


def test_secrets_never_leak(tmp_path, redis_url, echo) -> None:
    """Recognisable keys for every provider, every error path driven, and then every byte the run
    produced searched for the keys and their first eight characters."""
    metrics_port = free_port()
    out = Collected()
    with (MockBedrock(SECRETS["AWS_ACCESS_KEY_ID"], "not-the-gateways-secret", region="eu-central-1",
                      session_token=SECRETS["AWS_SESSION_TOKEN"]) as bedrock,
          MockAzure("not-the-gateways-key-0123456789ab") as azure):
        providers = f'''
[gateway.providers.headers]
kind = "openai"
base_url = "{echo.url}/v1"
headers = {{ "X-Api-Token" = "{SECRETS['HEADER_TOKEN']}" }}

[gateway.providers.foundry]
enabled = true
endpoint = "{echo.url}"

[gateway.providers.azure_mock]
kind = "foundry"
enabled = true
endpoint = "{azure.endpoint}"

[gateway.providers.bedrock]
enabled = true
region = "eu-central-1"
endpoint_url = "{bedrock.url}"

[gateway.providers.bedrock_echo]
kind = "bedrock"
enabled = true
region = "eu-central-1"
endpoint_url = "{echo.url}"
'''
        env = {**AWS_ENV, **{k: v for k, v in SECRETS.items() if k not in ("AWS_BEARER_TOKEN_BEDROCK", "HEADER_TOKEN")}}
        gw = RunningGateway(tmp_path / "gw", redis_url, prefix(), f"{echo.url}/v1", f"{echo.url}/v1",
                            providers=providers, overlay=LEAK_OVERLAY, env=env,
                            worker_providers=("openrouter", "local", "headers", "foundry", "azure_mock", "bedrock",
                                              "bedrock_echo"),
                            api_args=("--log-format", "json", "--access-log", "--log-level", "debug"),
                            worker_args=("--log-format", "json", "--log-level", "debug",
                                         "--metrics-port", str(metrics_port)))
        try:
            gw.start()
            drive_errors(gw, out, ["sec-openrouter", "sec-local", "sec-headers", "sec-foundry", "sec-azure",
                                   "sec-bedrock", "sec-bedrock-echo"], gw.token("admin", reactor_admin=True))
            # The SigV4 failure and the Azure bad key really happened, and the keys were on the wire.
            assert any("InvalidSignatureException" in text for _, text in out.texts)
            assert any("/openai/v1/chat/completions" in r["path"] for r in echo.requests)
            assert any(SECRETS["AWS_SESSION_TOKEN"] in str(r["headers"]) for r in echo.requests)
            assert any(SECRETS["HEADER_TOKEN"] in str(r["headers"]) for r in echo.requests)
            out.response("worker metrics", httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HTTP_TIMEOUT))
            run_analytics_forwarder(gw, echo, out)
            collect_process_output(gw, out)
        finally:
            stopped_logs(gw, out)

    # A Bedrock API key instead of SigV4 (the variable wins over AWS keys for every Bedrock table).
    bearer_env = {**AWS_ENV, "AWS_BEARER_TOKEN_BEDROCK": SECRETS["AWS_BEARER_TOKEN_BEDROCK"]}
    gw = RunningGateway(tmp_path / "gw-bearer", redis_url, prefix(), f"{echo.url}/v1", f"{echo.url}/v1",
                        providers=f'[gateway.providers.bedrock]\nenabled = true\nendpoint_url = "{echo.url}"\n',
                        overlay=LEAK_OVERLAY, env=bearer_env, worker_providers=("bedrock",),
                        api_args=("--log-format", "json", "--access-log"), worker_args=("--log-format", "json"))
    try:
        gw.start()
        drive_errors(gw, out, ["sec-bedrock"], gw.token("admin", reactor_admin=True), local=False)
        assert any(SECRETS["AWS_BEARER_TOKEN_BEDROCK"] in str(r["headers"]) for r in echo.requests)
        collect_process_output(gw, out)
    finally:
        stopped_logs(gw, out)

    assert len(out.texts) > 200
    assert any("Request refused" in text for _, text in out.texts)  # the echoing bodies did reach the gateway
    leaks = out.leaks(SECRETS)
    assert not leaks, "\n".join(leaks)


def run_analytics_forwarder(gw: RunningGateway, echo: EchoUpstream, out: Collected) -> None:
    """``reactor analytics forward`` against an Analytics that refuses and echoes the token, briefly."""
    log = gw.workdir / "analytics.log"
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "api.cli", "analytics", "forward", "--url",
                                 f"{echo.url}/analytics/echo-401", "--config", str(gw.config)],
                                cwd=gw.workdir, env=gw.env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r["path"].startswith("/analytics") for r in echo.requests):
            time.sleep(0.05)
        assert any(SECRETS["REACTOR_AI_ANALYTICS_TOKEN"] in str(r["headers"]) for r in echo.requests
                   if r["path"].startswith("/analytics"))
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- 3. where configuration comes from ---------------------------------------------------------------------


def load(tmp_path: Path, gateway: str):
    config = tmp_path / "reactor.toml"
    config.write_text(f"[gateway]\n{gateway}")
    return load_settings(config, env={})


@pytest.mark.parametrize("url", [
    "https://registry.example/ai-models.toml",
    "http://127.0.0.1:8000/ai-models.toml",
    "http://127.3.2.1/ai-models.toml",
    "http://localhost:9/ai-models.toml",
    "http://LOCALHOST/ai-models.toml",
    "http://[::1]:8000/ai-models.toml",
])
def test_registry_url_over_https_or_on_this_machine_is_accepted(tmp_path, url: str) -> None:
    assert load(tmp_path, f'registry_url = "{url}"\n').registry_url == url


@pytest.mark.parametrize("url", [
    "http://registry.example/ai-models.toml",
    "http://10.0.0.5/ai-models.toml",
    "http://128.0.0.1/ai-models.toml",
    "http://localhost.evil.example/ai-models.toml",
    "http://127.0.0.1.evil.example/ai-models.toml",
    "http://[::2]/ai-models.toml",
    "HTTP://registry.example/ai-models.toml",
])
def test_plain_http_registry_url_is_refused(tmp_path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'registry_url = "{url}"\n')

    message = str(info.value)
    assert "gateway.registry_url" in message
    assert "must be https://" in message
    assert url in message


@pytest.mark.parametrize("url", ["ftp://registry.example/m.toml", "file:///etc/reactor/m.toml", "registry.example/m.toml",
                                 "https:///m.toml", "http://[::1/m.toml"])
def test_registry_url_that_is_not_a_web_url_is_refused(tmp_path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.registry_url: expected an https:// URL"):
        load(tmp_path, f'registry_url = "{url}"\n')


def test_reactor_api_refuses_to_start_with_a_plain_http_registry_url(tmp_path) -> None:
    config = tmp_path / "reactor.toml"
    config.write_text('[gateway]\nregistry_url = "http://registry.example/ai-models.toml"\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}

    done = subprocess.run([sys.executable, "-m", "api.cli", "api", "--config", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "gateway.registry_url: must be https://" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def trap() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


def test_a_request_cannot_choose_where_the_worker_connects(jwks_gateway, echo, trap, rsa_key) -> None:
    """Only the provider table says where a request goes: fields of the body that name URLs, hosts or
    headers are the upstream's business at most, and never redirect the worker."""
    headers = {"Authorization": f"Bearer {signed(rsa_key)}", "X-Forwarded-Host": trap.url[7:],
               "X-Upstream-Url": trap.url}
    marker = uuid.uuid4().hex
    body = {
        "model": "mock-local", "messages": [{"role": "user", "content": f"hi {marker}"}],
        "base_url": trap.url, "api_base": trap.url, "endpoint": trap.url, "url": f"{trap.url}/v1/chat/completions",
        "extra_headers": {"Host": trap.url[7:], "Authorization": "Bearer stolen"}, "extra_query": {"api-version": "x"},
        "extra_body": {"base_url": trap.url}, "headers": {"Host": trap.url[7:]}, "provider": {"base_url": trap.url},
    }

    response = httpx.post(f"{jwks_gateway.base_url}/chat/completions", json=body, headers=headers,
                          timeout=HTTP_TIMEOUT)

    assert response.status_code == 200, response.text
    received = [r for r in echo.requests if marker.encode() in r["body"]]
    assert len(received) == 1
    assert received[0]["path"] == "/chat/completions"
    assert received[0]["headers"]["Host"] == echo.url[7:]
    # The configured key went out, not one the request named.
    assert received[0]["headers"]["Authorization"] == f"Bearer {LOCAL_KEY}"
    assert "X-Upstream-Url" not in received[0]["headers"] and "X-Forwarded-Host" not in received[0]["headers"]
    assert trap.requests == []


@pytest.mark.parametrize("model", ["TRAP/v1", "TRAP/v1/chat/completions", "//TRAP_HOST/v1", "openai/TRAP"])
def test_a_model_id_that_is_a_url_goes_nowhere(jwks_gateway, trap, rsa_key, model: str) -> None:
    model = model.replace("TRAP_HOST", trap.url[7:]).replace("TRAP", trap.url)

    response = httpx.post(f"{jwks_gateway.base_url}/chat/completions", headers={"Authorization": f"Bearer {signed(rsa_key)}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=HTTP_TIMEOUT)

    assert error_of(response, 404)["code"] == "model_not_found"
    assert trap.requests == []


# --- 4. how much an upstream may send -----------------------------------------------------------------------


def ask(gw: RunningGateway, token: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {token}"},
                      json={"model": "mock-local", "messages": [{"role": "user", "content": text}], **extra},
                      timeout=HTTP_TIMEOUT)


@pytest.mark.parametrize("directive", ["big", "bigchunked"])
def test_an_upstream_body_over_the_limit_is_a_502(jwks_gateway, rsa_key, directive: str) -> None:
    token = signed(rsa_key)

    error = error_of(ask(jwks_gateway, token, f"#echo={directive}"), 502)

    assert error["code"] == "upstream_response_too_large"
    assert error["type"] == "provider_error"
    assert f"larger than {UPSTREAM_LIMIT} bytes" in error["message"]
    # The worker is fine, and a body within the limit still passes.
    answer = ask(jwks_gateway, token, "hi")
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "ok"


def test_a_streamed_line_over_the_limit_ends_the_stream_with_an_error(jwks_gateway, rsa_key) -> None:
    response = ask(jwks_gateway, signed(rsa_key), "#echo=bigline", stream=True)

    if response.status_code == 200:
        # The stream had started (its first event may have gone out, when it arrived in a read of
        # its own): it ends with an error event.
        events = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert all("error" not in event for event in events[:-1])
        error = events[-1]["error"]
        sent = any(e["choices"][0]["delta"].get("content") for e in events[:-1] if e.get("choices"))
    else:
        error, sent = error_of(response, 502), False
    # Once text has gone out the answer cannot be retried: the stream's usual incomplete_response, naming why.
    assert error["code"] == ("incomplete_response" if sent else "upstream_response_too_large"), error
    assert f"longer than {UPSTREAM_LIMIT} bytes" in error["message"]
    assert "x" * 1000 not in response.text


# --- the seams, one by one ----------------------------------------------------------------------------------


def test_redact_masks_keys_whole_and_shortened() -> None:
    from shared.errors import redact

    key = "gk7Q2mZpLx9vB4nR8tY1"
    text = f"bad key {key}; we saw gk7Q2mZp****tY1 and 'gk7Q2mZpLx9v...', not gk7Q2mZ alone"

    masked = redact(text, (key,))

    assert key[:8] not in masked
    assert masked.count("[redacted]") == 3
    assert "not gk7Q2mZ alone" in masked  # seven characters say nothing


def test_credential_headers_of_a_provider_table_are_secrets() -> None:
    from workers.providers.openai_compat import OpenAISettings

    table = OpenAISettings(base_url="https://up.example", api_key="k-0123456789",
                           headers={"X-Api-Token": "t-0123456789", "Authorization": "Bearer b-0123456789",
                                    "X-Title": "My app", "HTTP-Referer": "https://app.example"})

    assert set(table.secrets()) == {"k-0123456789", "t-0123456789", "Bearer b-0123456789"}


def test_bedrock_redacts_the_aws_credentials_it_signs_with(monkeypatch) -> None:
    from workers.providers.bedrock import BedrockProvider, BedrockSettings
    from workers.providers.http import UpstreamHTTP

    for name, value in {**AWS_ENV, "AWS_ACCESS_KEY_ID": "AKIAUNITTEST00000001", "AWS_SECRET_ACCESS_KEY": "unit/secret",
                        "AWS_SESSION_TOKEN": "unit-session-token"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = BedrockSettings(name="bedrock", enabled=True).resolve({})

    provider = BedrockProvider(settings, UpstreamHTTP(), ("other-key",))

    assert set(provider.secrets) == {"other-key", "AKIAUNITTEST00000001", "unit/secret", "unit-session-token"}


def test_access_log_lines_mask_credentials_in_the_url() -> None:
    import logging

    from shared.logs import MaskQueryCredentials

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/ai/v1/models?limit=2&API_KEY=abc.def&token=x#f", "1.1", 401),
                               None)

    assert MaskQueryCredentials().filter(record)

    assert record.getMessage() == '127.0.0.1:5 - "GET /ai/v1/models?limit=2&API_KEY=[redacted]&token=[redacted]#f HTTP/1.1" 401'
