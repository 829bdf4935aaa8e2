"""Server-Sent Events, decoded as the WHATWG spec says, from a response body as it arrives.

What upstreams really send is covered: ``data:`` split over several lines (joined with
``\\n``), ``event:`` names (the Responses and Anthropic streams), ``id:`` and ``retry:``,
comments as keep-alives (``: OPENROUTER PROCESSING``), a field without a colon, one optional
space after the colon, and every line ending (``\\n``, ``\\r\\n``, a bare ``\\r``), wherever the
reads happen to split them. One leniency beyond the spec: an event still open when the body
ends is dispatched rather than dropped, since some upstreams close right after their last
``data:`` line.

The decoder is fed each read and returns the events it completed, synchronously: an SSE event
is usually two lines in one read, and awaiting line by line through generators cost more than
parsing. No maintained decoder fits here: httpx-sse reads httpx responses only, and the worker
reads aiohttp's (see ``http.py``); this one is tested case by case in ``tests/test_sse.py``.
"""

from __future__ import annotations

from typing import NamedTuple

from shared.config import DEFAULT_MAX_STREAM_LINE_BYTES

# The longest single line a body may carry when the decoder is not told (the setting
# `max_stream_line_bytes`); past it the upstream is not to be trusted.
MAX_LINE_BYTES = DEFAULT_MAX_STREAM_LINE_BYTES


class LineTooLong(ValueError):
    """A line longer than :data:`MAX_LINE_BYTES`."""


class ServerSentEvent(NamedTuple):
    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it the body as it arrives (:meth:`feed`), then :meth:`close` it at the end."""

    def __init__(self, max_line: int | None = None) -> None:
        self._max_line = MAX_LINE_BYTES if max_line is None else max_line
        self._pending = b""
        self._data: list[bytes] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes."""
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            # CRLF or bare CR. A CR at the very end may be the first half of a CRLF: keep it back.
            keep_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                data = data[:-1] + b"\r"
        *lines, self._pending = data.split(b"\n")
        if len(data) > self._max_line and max(map(len, [self._pending, *lines])) > self._max_line:
            raise LineTooLong(f"a line of the stream is longer than {self._max_line} bytes")
        events: list[ServerSentEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[ServerSentEvent]:
        """The end of the body: what is still open."""
        events: list[ServerSentEvent] = []
        if self._pending:
            self._line(self._pending.rstrip(b"\r"), events)
            self._pending = b""
        if self._data:
            events.append(self._dispatch())
        return events

    def _dispatch(self) -> ServerSentEvent:
        event = ServerSentEvent(b"\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data, self._event = [], ""
        return event

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            # A blank line dispatches the event; one without data is dropped, as the spec says.
            if self._data:
                events.append(self._dispatch())
            else:
                self._event = ""
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
        # Any other field is ignored, as the spec says.
