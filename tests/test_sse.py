"""The SSE decoder, case by case against what the WHATWG spec says an event stream may hold."""

from __future__ import annotations

import pytest

from workers.providers.sse import LineTooLong, ServerSentEvent, SSEDecoder


def decode(pieces: list[bytes], max_line: int | None = None) -> list[ServerSentEvent]:
    decoder = SSEDecoder(max_line)
    out = [event for piece in pieces for event in decoder.feed(piece)]
    return out + decoder.close()


def events(raw: bytes) -> list[ServerSentEvent]:
    """The body in one read, and again a byte at a time: reads may split anything anywhere."""
    whole = decode([raw])
    assert decode([raw[i:i + 1] for i in range(len(raw))]) == whole
    return whole


def test_one_data_line_per_event() -> None:
    assert events(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [
        ServerSentEvent(b'{"a":1}'), ServerSentEvent(b"[DONE]")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert events(b"data: {\"a\":\ndata: 1}\n\n") == [ServerSentEvent(b'{"a":\n1}')]


def test_event_field_names_the_event_and_resets_after_dispatch() -> None:
    got = events(b"event: response.created\ndata: {}\n\ndata: x\n\n")
    assert got == [ServerSentEvent(b"{}", "response.created"), ServerSentEvent(b"x", "message")]


def test_comments_are_ignored() -> None:
    assert events(b": OPENROUTER PROCESSING\n\n:\ndata: x\n\n") == [ServerSentEvent(b"x")]


def test_crlf_and_bare_cr_line_endings() -> None:
    assert events(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == [
        ServerSentEvent(b"a"), ServerSentEvent(b"b"), ServerSentEvent(b"c")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert events(b"data:x\n\ndata:  y\n\n") == [ServerSentEvent(b"x"), ServerSentEvent(b" y")]


def test_field_without_colon_is_a_field_with_empty_value() -> None:
    # "data" alone appends an empty line to the data buffer.
    assert events(b"data\ndata: z\n\n") == [ServerSentEvent(b"\nz")]


def test_event_without_data_is_not_dispatched() -> None:
    assert events(b"event: ping\n\nid: 7\n\n") == []


def test_id_and_retry_fields() -> None:
    got = events(b"id: 42\nretry: 1500\ndata: a\n\nretry: soon\ndata: b\n\n")
    assert got == [ServerSentEvent(b"a", "message", "42", 1500), ServerSentEvent(b"b", "message", "42", 1500)]


def test_id_with_nul_is_ignored() -> None:
    assert events(b"id: a\0b\ndata: x\n\n") == [ServerSentEvent(b"x", "message", None, None)]


def test_unknown_fields_are_ignored() -> None:
    assert events(b"foo: bar\ndata: x\n\n") == [ServerSentEvent(b"x")]


@pytest.mark.parametrize("raw", [b"data: last", b"data: last\n"])
def test_open_event_at_end_of_body_is_dispatched(raw: bytes) -> None:
    assert events(raw) == [ServerSentEvent(b"last")]


def test_empty_stream() -> None:
    assert events(b"") == []


@pytest.mark.parametrize("pieces", [
    [b"data: a\n\ndata: b\n\n"],
    [b"data: a\n", b"\ndata: b\n\n"],
    [b"da", b"ta: a\n\nda", b"ta: b\n", b"\n"],
    [b"data: a\r\n\r\ndata: b\r\n\r\n"],
    [b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"],   # CRLF split across reads
    [b"data: a\r\rdata: b\r\r"],                     # bare CR
    [b"data: a\r", b"\rdata: b\r\r"],                # bare CR at the end of a read
])
def test_events_whatever_the_reads(pieces: list[bytes]) -> None:
    assert decode(pieces) == [ServerSentEvent(b"a"), ServerSentEvent(b"b")]


def test_line_limit_counts_lines_split_across_reads() -> None:
    assert decode([b"data: 1\n\n", b"data: 2\n\n"], max_line=8) == [ServerSentEvent(b"1"), ServerSentEvent(b"2")]
    with pytest.raises(LineTooLong):
        decode([b"data: 12", b"345678", b"9\n"], max_line=8)
    with pytest.raises(LineTooLong):
        decode([b"ok\ndata: 123456789\n"], max_line=8)
