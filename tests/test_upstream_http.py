"""The workers' upstream client: requests signed by httpx.Auth, sent by aiohttp, failures mapped once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time

import httpx
import pytest

from shared.errors import GatewayError, ProviderError, UpstreamTimeout
from workers.providers.http import BearerAuth, Timeouts, UpstreamHTTP, map_upstream_errors
from workers.providers.sse import SSEDecoder

from .mocks.openai import MockUpstream

KEY = "sk-upstream-http-test"


@pytest.fixture(scope="module")
def mock():
    with MockUpstream(api_key=KEY, flavour="openai") as m:
        yield m


def chat(text: str, stream: bool = False) -> bytes:
    return json.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}).encode()


def run(coro):
    return asyncio.run(coro)


class BodyDigestAuth(httpx.Auth):
    """A signing scheme in the way SigV4 is one: a header computed from the final method, URL and body."""

    def __init__(self) -> None:
        self.signed: dict[str, str] = {}

    def auth_flow(self, request: httpx.Request):
        digest = hashlib.sha256(request.method.encode() + str(request.url).encode() + request.content).hexdigest()
        request.headers["X-Body-Digest"] = digest
        request.headers["Authorization"] = f"Bearer {KEY}"
        self.signed = {k.lower(): v for k, v in request.headers.items()}
        yield request


def test_bearer_auth_and_the_request_as_built(mock: MockUpstream) -> None:
    body = chat("hi")

    async def go():
        async with UpstreamHTTP() as http:
            return await http.request("POST", f"{mock.url}/chat/completions", content=body,
                                      headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY))

    response, content = run(go())
    assert response.status_code == 200, content
    assert json.loads(content)["choices"][0]["message"]["content"] == "Hello from mock: hi"
    seen = mock.received[-1].headers
    assert seen["authorization"] == f"Bearer {KEY}"
    assert seen["content-length"] == str(len(body))
    assert seen["content-type"] == "application/json"
    assert seen["host"] == mock.url.split("//")[1].split("/")[0]


def test_wrong_key_is_the_upstreams_401(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP() as http:
            return await http.request("POST", f"{mock.url}/chat/completions", content=chat("hi"),
                                      headers={"Content-Type": "application/json"}, auth=BearerAuth("sk-wrong"))

    response, _ = run(go())
    assert response.status_code == 401


def test_a_signing_auth_sees_the_final_request(mock: MockUpstream) -> None:
    body = chat("signed")
    url = f"{mock.url}/chat/completions"

    auth = BodyDigestAuth()

    async def go():
        async with UpstreamHTTP() as http:
            return await http.request("POST", url, content=body, headers={"Content-Type": "application/json"},
                                      auth=auth)

    response, _ = run(go())
    assert response.status_code == 200
    expected = hashlib.sha256(b"POST" + url.encode() + body).hexdigest()
    assert mock.received[-1].headers["x-body-digest"] == expected
    # Every header the auth saw when it signed goes on the wire unchanged (SigV4 signs headers too).
    seen = mock.received[-1].headers
    assert {k: seen.get(k) for k in auth.signed} == auth.signed


async def read_events(response) -> list[bytes]:
    decoder, out = SSEDecoder(), []
    while data := await response.read_some():
        out += [e.data for e in decoder.feed(data)]
    return out + [e.data for e in decoder.close()]


def test_stream_reads_and_events(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP() as http:
            async with http.stream("POST", f"{mock.url}/chat/completions", content=chat("a b #chunks=3", True),
                                   headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY)) as response:
                return await read_events(response)

    data = run(go())
    assert data[-1] == b"[DONE]"
    assert len(data) >= 4 and all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])


def test_leaving_a_stream_early_hangs_up_on_the_upstream(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP() as http:
            async with http.stream("POST", f"{mock.url}/chat/completions",
                                   content=chat("#chunks=50 #delay=100", True),
                                   headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY)) as response:
                decoder = SSEDecoder()
                while not decoder.feed(await response.read_some()):
                    pass

    run(go())
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=3)
    assert not mock.received[-1].completed


def test_read_timeout_is_an_upstream_timeout(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP(Timeouts(connect=2, read=0.2)) as http:
            with map_upstream_errors("mock"):
                await http.request("POST", f"{mock.url}/chat/completions", content=chat("#delay=3000"),
                                   headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY))

    with pytest.raises(UpstreamTimeout, match="Upstream mock timed out"):
        run(go())


def test_refused_connection_is_a_provider_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nobody listens there

    async def go():
        async with UpstreamHTTP(Timeouts(connect=2, read=2)) as http:
            with map_upstream_errors("mock"):
                await http.request("GET", f"http://127.0.0.1:{port}/v1/models")

    with pytest.raises(ProviderError, match="Upstream mock connection failed"):
        run(go())


def test_a_line_longer_than_the_limit_is_a_provider_error(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP() as http:
            with map_upstream_errors("mock"):
                async with http.stream("POST", f"{mock.url}/chat/completions", content=chat("x " * 100, True),
                                       headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY)) as r:
                    decoder = SSEDecoder(max_line=64)
                    while data := await r.read_some():
                        decoder.feed(data)

    with pytest.raises(ProviderError):
        run(go())


def test_gateway_errors_and_cancellation_pass_through_the_mapping() -> None:
    with pytest.raises(UpstreamTimeout, match="mine"):
        with map_upstream_errors("x"):
            raise UpstreamTimeout("mine")

    async def cancelled():
        with map_upstream_errors("x"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run(cancelled())
    assert issubclass(UpstreamTimeout, GatewayError)


def test_header_auths_are_httpx_auths_too() -> None:
    """Bearer (and later api-key) auth works with plain httpx, the same headers as UpstreamHTTP adds."""
    request = httpx.Request("POST", "http://upstream.test/v1/chat/completions", content=b"{}")
    signed = next(BearerAuth("sk-x").auth_flow(request))
    assert signed.headers["Authorization"] == "Bearer sk-x"
    assert BearerAuth("sk-x").headers == {"Authorization": "Bearer sk-x"}


def test_a_body_silent_past_the_read_timeout_ends(mock: MockUpstream) -> None:
    """The read watchdog: a stream whose head came but whose body stalls is ended as a timeout."""

    async def go():
        async with UpstreamHTTP(Timeouts(connect=2, read=0.5)) as http:
            with map_upstream_errors("mock"):
                async with http.stream("POST", f"{mock.url}/chat/completions", content=chat("#delay=3000", True),
                                       headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY)) as r:
                    assert r.status_code == 200
                    while await r.read_some():
                        pass

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        run(go())
    assert 0.4 < time.monotonic() - started < 2
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=3)


def test_a_slow_body_that_keeps_sending_is_not_cut(mock: MockUpstream) -> None:
    async def go():
        async with UpstreamHTTP(Timeouts(connect=2, read=0.5)) as http:
            async with http.stream("POST", f"{mock.url}/chat/completions",
                                   content=chat("#chunks=6 #delay=300", True),
                                   headers={"Content-Type": "application/json"}, auth=BearerAuth(KEY)) as r:
                return await read_events(r)

    events = run(go())  # 2 s in all, never silent for 0.5 s
    assert events[-1] == b"[DONE]"


async def _closing_server(serve_per_connection: int) -> tuple[asyncio.AbstractServer, dict[str, int]]:
    """An HTTP/1.1 server that answers the first ``serve_per_connection`` requests of each
    connection (keep-alive) and closes the connection, unanswered, on the next one: an upstream
    whose idle close crosses the client's next request."""
    seen = {"connections": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                seen["requests"] += 1
                if served == serve_per_connection:
                    break
                served += 1
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def test_a_request_crossing_an_idle_close_goes_out_again_on_another_connection() -> None:
    async def go():
        server, seen = await _closing_server(serve_per_connection=1)
        port = server.sockets[0].getsockname()[1]
        try:
            async with UpstreamHTTP(Timeouts(connect=2, read=5)) as http:
                first, _ = await http.request("POST", f"http://127.0.0.1:{port}/v1/x", content=b"{}")
                second, body = await http.request("POST", f"http://127.0.0.1:{port}/v1/x", content=b"{}")
            return first.status_code, second.status_code, body, dict(seen)
        finally:
            server.close()
            await server.wait_closed()

    first, second, body, seen = run(go())
    assert (first, second, body) == (200, 200, b'{"ok": true}')
    # The second request went out on the kept connection, was dropped, and went out again on a new one.
    assert seen == {"connections": 2, "requests": 3}


def test_an_upstream_that_drops_every_request_fails_after_the_retries() -> None:
    from workers.providers.http import STALE_CONNECTION_RETRIES

    async def go():
        server, seen = await _closing_server(serve_per_connection=0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with UpstreamHTTP(Timeouts(connect=2, read=5)) as http:
                with map_upstream_errors("mock"):
                    await http.request("POST", f"http://127.0.0.1:{port}/v1/x", content=b"{}")
        finally:
            server.close()
            await server.wait_closed()
            assert seen["requests"] == STALE_CONNECTION_RETRIES + 1

    with pytest.raises(ProviderError, match="Upstream mock connection failed"):
        run(go())
