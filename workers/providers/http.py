"""The workers' upstream HTTP client: aiohttp's pool and C parser behind an httpx-shaped seam.

Chosen by measurement (``bench/upstream_clients.py``, 20 chunks 100 ms apart, one process):
httpx on httpcore 1.0 spent 0.3 ms of CPU per chunk at 32 streams and 3.6 ms at 1,000, because
its pool walks every connection on every request and every release; httpx2 went from 0.23 to
0.57 ms; httpx over an aiohttp transport held 80–95 µs; aiohttp alone 45–65 µs at every
concurrency. So the bytes move through aiohttp, while requests are still built as
:class:`httpx.Request` and signed by an :class:`httpx.Auth` (bearer, Azure ``api-key``, SigV4):
httpx's API where it costs nothing per chunk, aiohttp's where it costs per chunk.

Only single-request auth flows are supported (the request is signed once and sent): every
provider's scheme is one, and a challenge-response flow would cost a round trip per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import httpx
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shared.config import DEFAULT_MAX_UPSTREAM_RESPONSE_BYTES
from shared.errors import GatewayError, ProviderError, UpstreamTimeout

from .sse import MAX_LINE_BYTES, LineTooLong


@dataclass(frozen=True)
class Timeouts:
    """``connect``: to open a connection (DNS, TCP, TLS). ``read``: the longest silence between two
    reads of a response, so a slow upstream that still sends is never cut, and a stalled one is."""

    connect: float = 10.0
    read: float = 300.0


@dataclass(frozen=True)
class Limits:
    """``max_connections``: open connections per worker process, all hosts together (0: no
    limit; the worker's job slots bound it anyway). ``keepalive_expiry``: seconds an idle
    connection is kept for reuse."""

    max_connections: int = 0
    keepalive_expiry: float = 30.0


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_LIMITS = Limits()
# The setting `max_upstream_response_bytes` when none is given.
DEFAULT_MAX_RESPONSE_BYTES = DEFAULT_MAX_UPSTREAM_RESPONSE_BYTES
# The error code of a body over that limit, and of a streamed line over ``max_line_bytes``.
RESPONSE_TOO_LARGE = "upstream_response_too_large"
# How many times a request is sent again when the connection is lost before any of the answer
# came back (see UpstreamHTTP.stream).
STALE_CONNECTION_RETRIES = 2
# How long to wait for the end of a body after the last event before giving up on reusing
# its connection (an unread body closes the connection, and the next call pays a handshake).
DRAIN_TIMEOUT_S = 1.0


class HeaderAuth(httpx.Auth):
    """An auth whose headers do not depend on the request (bearer, Azure ``api-key``).

    An ``httpx.Auth`` like any other, so it works with any httpx client; :class:`UpstreamHTTP`
    adds its headers directly instead of building an ``httpx.Request`` to run the flow on, which
    was about 7% of a worker's CPU per request. Schemes that sign the request (SigV4) take the
    full flow.
    """

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = dict(headers)

    def auth_flow(self, request: httpx.Request):
        request.headers.update(self.headers)
        yield request


class BearerAuth(HeaderAuth):
    """``Authorization: Bearer KEY``, the OpenAI-compatible scheme."""

    def __init__(self, key: str) -> None:
        super().__init__({"Authorization": f"Bearer {key}"})


class ResponseTooLarge(Exception):
    """A non-streamed body longer than the client's ``max_response_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class UpstreamResponse:
    """An upstream's answer, its body read on demand.

    :param max_body: the most :meth:`aread` reads before giving up with :class:`ResponseTooLarge`.
    """

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float,
                 max_body: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self._max_body = max_body
        self.status_code: int = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self._loop = asyncio.get_running_loop()
        # When the body last moved; the client's read watchdog ends a body silent for too long.
        self.last_read = self._loop.time()

    async def aread(self) -> bytes:
        """The whole body.

        :raises ResponseTooLarge: it declares or turns out to be longer than ``max_body``; what was
            read is dropped and the connection closed.
        """
        declared = self._response.content_length
        if declared is not None and declared > self._max_body:
            raise ResponseTooLarge(self._max_body)
        chunks, size = [], 0
        async with asyncio.timeout(self._read_timeout):
            while chunk := await self._response.content.readany():
                size += len(chunk)
                if size > self._max_body:
                    raise ResponseTooLarge(self._max_body)
                chunks.append(chunk)
        return b"".join(chunks)

    async def read_some(self) -> bytes:
        """Whatever part of the body has arrived (waiting for some if none has); ``b""`` at its end."""
        data = await self._response.content.readany()
        self.last_read = self._loop.time()
        return data

    def _time_out(self) -> None:
        self._response.content.set_exception(TimeoutError(f"no data for {self._read_timeout:g} s"))
        self._response.close()

    async def drain(self) -> None:
        """Read what is left of the body so the connection can be reused; give up after a while."""
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while await self._response.content.readany():
                    pass


class UpstreamHTTP:
    """One per worker process, shared by every provider: pooled keep-alive connections to all upstreams.

    :param timeouts: connect and read timeouts.
    :param limits: pool size and keep-alive.
    :param max_response_bytes: the longest non-streamed body read from an upstream.
    :param max_line_bytes: the longest line of a streamed body, for the providers' stream decoders.
    """

    def __init__(self, timeouts: Timeouts = DEFAULT_TIMEOUTS, limits: Limits = DEFAULT_LIMITS,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.timeouts = timeouts
        self.limits = limits
        self.max_response_bytes = max_response_bytes
        self.max_line_bytes = max_line_bytes
        self._session: aiohttp.ClientSession | None = None
        self._open: set[UpstreamResponse] = set()
        self._watchdog: asyncio.Task | None = None

    async def __aenter__(self) -> "UpstreamHTTP":
        connector = aiohttp.TCPConnector(limit=self.limits.max_connections, limit_per_host=0,
                                         keepalive_timeout=self.limits.keepalive_expiry)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No sock_read: aiohttp would re-arm a timer on every read, a few percent of a worker
            # holding a thousand streams. The read watchdog below checks them all once a second.
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect),
            # The gateway relays bodies; it never needs cookies.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._watchdog = asyncio.create_task(self._watch_reads(), name="upstream-read-watchdog")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _watch_reads(self) -> None:
        """End every body that has been silent for longer than the read timeout."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.timeouts.read / 4)
        while True:
            await asyncio.sleep(interval)
            cutoff = loop.time() - self.timeouts.read
            for response in [r for r in self._open if r.last_read < cutoff]:
                response._time_out()

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str | URL, *, content: bytes | None = None,
                     headers: dict[str, str] | None = None,
                     auth: httpx.Auth | None = None) -> AsyncIterator[UpstreamResponse]:
        """Send a request and yield its response with the body unread.

        Leaving the block closes the response: a body read to its end returns the connection
        to the pool, anything else closes it, so the upstream sees a hang-up at once.
        """
        if self._session is None:
            raise RuntimeError("UpstreamHTTP is used outside its `async with` block")
        if auth is None or isinstance(auth, HeaderAuth):
            sent_headers = CIMultiDict(headers or {})
            if auth is not None:
                sent_headers.update(auth.headers)
        else:
            # A signing scheme: it sees the request as it will go out, and nothing changes after it.
            request = httpx.Request(method, url, content=content, headers=headers)
            flow = auth.async_auth_flow(request)
            request = await flow.__anext__()
            await flow.aclose()
            # `encoded=True`: the path goes out exactly as signed (SigV4 signs `%3A`, not `:`).
            method, url, content = request.method, URL(str(request.url), encoded=True), request.content
            sent_headers = CIMultiDict(request.headers.multi_items())
        # Until the response's head arrives, the read timeout is one timer for the request.
        async with asyncio.timeout(self.timeouts.read):
            response = await self._send(method, url, content, sent_headers)
        upstream = UpstreamResponse(response, self.timeouts.read, self.max_response_bytes)
        self._open.add(upstream)
        try:
            yield upstream
        finally:
            self._open.discard(upstream)
            # A body read to its end returns the connection to the pool; anything else closes it.
            response.release()
            await response.wait_for_close()

    async def _send(self, method: str, url: str | URL, content: bytes | None,
                    headers: CIMultiDict[str]) -> aiohttp.ClientResponse:
        """The request, sent again on another connection when the one it went out on was closed
        before any of the answer came back.

        An upstream closes a keep-alive connection it has left idle (uvicorn, which vLLM and most
        Python servers run on, after 5 s); when its close crosses our next request on that
        connection, the request fails although the upstream never read it. aiohttp sends such a
        request again only for idempotent methods, and these are POSTs; the official OpenAI and
        Anthropic SDKs retry connection errors on POSTs too. A connection refused is not retried
        here: that is the upstream being down, which fallback and cooldowns handle.
        """
        assert self._session is not None
        for attempt in range(STALE_CONNECTION_RETRIES + 1):
            try:
                return await self._session.request(method, url, data=content, headers=headers)
            except aiohttp.ClientConnectorError:
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == STALE_CONNECTION_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      auth: httpx.Auth | None = None) -> tuple[UpstreamResponse, bytes]:
        """Send a request and read its whole body."""
        async with self.stream(method, url, content=content, headers=headers, auth=auth) as response:
            return response, await response.aread()


@contextlib.contextmanager
def map_upstream_errors(name: str) -> Iterator[None]:
    """Turn transport failures into the gateway's errors: one ``with`` block around every upstream call.

    Errors the provider raised itself (:class:`GatewayError`) pass through untouched, and so do
    cancellation and generator exit: closing a stream early is not a failure.
    """
    try:
        yield
    except GatewayError:
        raise
    except ResponseTooLarge as exc:
        raise ProviderError(f"Upstream {name} answered with a body larger than {exc.limit} bytes.",
                            code=RESPONSE_TOO_LARGE) from None
    except LineTooLong as exc:
        raise ProviderError(f"Upstream {name} broke the stream's limits: {exc}.", code=RESPONSE_TOO_LARGE) from None
    except TimeoutError:
        # aiohttp's connect and read timeouts are TimeoutError subclasses.
        raise UpstreamTimeout(f"Upstream {name} timed out.") from None
    except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError, OSError, ValueError) as exc:
        # ValueError: a body aiohttp could not decode.
        raise ProviderError(f"Upstream {name} connection failed: {type(exc).__name__}") from None
