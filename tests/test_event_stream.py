"""EventStreamResponse as an ASGI app: where the head and the body frames go, and how the body ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from api.sse import BODY_SEND, KEEPALIVE, EventStreamResponse, LastFrame


async def _frames(*frames: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    for frame in frames:
        if delay:
            await asyncio.sleep(delay)
        yield frame


def _serve(response: EventStreamResponse, *, body_send: bool = True) -> tuple[list[dict], list[dict]]:
    """Run the response; returns what went to ``send`` and what went to the scope's body send."""
    wrapped: list[dict] = []
    raw: list[dict] = []

    async def send(message: dict) -> None:
        wrapped.append(message)

    async def send_body(message: dict) -> None:
        raw.append(message)

    async def receive() -> dict:
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    scope = {"type": "http", BODY_SEND: send_body} if body_send else {"type": "http"}
    asyncio.run(asyncio.wait_for(response(scope, receive, send), 5))
    return wrapped, raw


def test_the_head_goes_through_the_wrappers_and_the_frames_straight_to_the_body_send() -> None:
    wrapped, raw = _serve(EventStreamResponse(_frames(b"data: 1\n\n", b"data: 2\n\n")))
    assert [m["type"] for m in wrapped] == ["http.response.start"]
    assert [(m["body"], m["more_body"]) for m in raw] == [
        (b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]


def test_a_last_frame_ends_the_body_in_the_same_message() -> None:
    _, raw = _serve(EventStreamResponse(_frames(b"data: 1\n\n", LastFrame(b"data: [DONE]\n\n"), b"never sent")))
    assert [(m["body"], m["more_body"]) for m in raw] == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]


def test_with_keepalive_a_whole_answer_in_its_first_frame_is_one_body_message() -> None:
    wrapped, raw = _serve(EventStreamResponse(_frames(LastFrame(b"data: x\n\ndata: [DONE]\n\n")), keepalive=5.0))
    assert [m["type"] for m in wrapped] == ["http.response.start"]
    assert raw == [{"type": "http.response.body", "body": b"data: x\n\ndata: [DONE]\n\n", "more_body": False}]


def test_keepalive_comments_go_before_the_first_frame_and_the_rest_to_the_body_send() -> None:
    wrapped, raw = _serve(EventStreamResponse(_frames(b"data: 1\n\n", LastFrame(b"data: [DONE]\n\n"), delay=0.12),
                                              keepalive=0.05))
    assert wrapped[0]["type"] == "http.response.start"
    assert {m["body"] for m in wrapped[1:]} == {KEEPALIVE}
    assert [(m["body"], m["more_body"]) for m in raw] == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]


def test_without_a_body_send_in_the_scope_everything_goes_to_send() -> None:
    wrapped, raw = _serve(EventStreamResponse(_frames(b"data: 1\n\n")), body_send=False)
    assert raw == []
    assert [m["type"] for m in wrapped] == ["http.response.start", "http.response.body", "http.response.body"]
    assert wrapped[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_in_the_app_only_the_head_passes_the_wrappers_inside_the_request_middleware() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from api.observe import ObserveRequests

    seen: list[str] = []

    class Inner:
        """A middleware inside ObserveRequests that wraps ``send``, as Starlette's own do."""

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            async def counting(message) -> None:
                seen.append(message["type"])
                await send(message)

            await self.app(scope, receive, counting)

    async def endpoint(request):
        return EventStreamResponse(_frames(b"data: 1\n\n", b"data: 2\n\n", LastFrame(b"data: [DONE]\n\n")))

    app = Starlette(routes=[Route("/s", endpoint)], middleware=[Middleware(ObserveRequests), Middleware(Inner)])

    async def fetch() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get("/s")

    response = asyncio.run(fetch())
    assert response.status_code == 200 and response.headers["x-request-id"]
    assert response.content == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert seen == ["http.response.start"]
