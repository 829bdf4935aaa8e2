"""Malformed, hostile and odd requests, replayed from ``tests/corpus/`` against a running gateway.

The gateway stands in front of upstreams that cost money and that parse JSON differently from
Python. So whatever it cannot take must be refused at the front door: with the status the corpus
names, in the error shape the client's SDK parses (OpenAI's, or Anthropic's on
``/ai/v1/messages*``), never as a 500 or with a traceback, and without a single upstream call.
The cases are data (``tests/corpus/README.md`` describes their format), so a new hostile input is
one more line there, not more code here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
DEFAULT_HEADERS = [["Authorization", "Bearer {token}"], ["Content-Type", "application/json"]]
MESSAGES_PATH = "/ai/v1/messages"
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}
ANTHROPIC_ERROR_FIELDS = {"type", "message"}
# What a server-side stack trace looks like in a body; none may ever reach a client.
TRACEBACK_MARKS = (b"Traceback (most recent call last)", b'File "/')


def load_corpus() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if line.strip():
                case = json.loads(line)
                case["source"] = f"{path.name}:{number}"
                cases.append(case)
    return cases


CASES = load_corpus()


def body_of(case: dict[str, Any]) -> bytes | None:
    """The raw body bytes of a case: ``json`` (encoded as is), ``body`` (UTF-8 text) or ``body_b64``,
    with ``expand`` markers replaced by their repeated text."""
    if "json" in case:
        return json.dumps(case["json"], ensure_ascii=False).encode()
    if "body_b64" in case:
        return base64.b64decode(case["body_b64"])
    if "body" not in case:
        return None
    text = case["body"]
    for marker, (piece, times) in (case.get("expand") or {}).items():
        text = text.replace(marker, piece * times)
    return text.encode()


def headers_of(case: dict[str, Any], tokens: dict[str, str]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in case.get("headers", DEFAULT_HEADERS):
        if isinstance(value, dict):
            raw = base64.b64decode(value["b64"])
        else:
            for placeholder, token in tokens.items():
                value = value.replace(placeholder, token)
            raw = value.encode()
        out.append((name.encode(), raw))
    return out


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 16_384):
        yield body[start:start + 16_384]


def upstream_calls(*mocks) -> int:
    return sum(len(mock.received) for mock in mocks)


def error_of(path: str, response: httpx.Response) -> dict[str, Any]:
    """The error object of a refusal to ``path``, after checking the envelope is exactly the shape
    the client's SDK parses."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    path = path.split("?", 1)[0]
    if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"):
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == ANTHROPIC_ERROR_FIELDS, body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == OPENAI_ERROR_FIELDS, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    return error


@pytest.fixture(scope="module")
def tokens(gateway) -> dict[str, str]:
    return {"{token}": gateway.token(), "{admin_token}": gateway.token("user_admin", reactor_admin=True),
            "{expired_token}": gateway.token(ttl=-3600)}


@pytest.fixture(scope="module")
def http(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20, follow_redirects=False) as client:
        yield client


def test_corpus_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        assert {"id", "method", "path", "expect"} <= set(case), case["source"]
        assert sum(key in case for key in ("json", "body", "body_b64")) <= 1, case["source"]
        assert isinstance(case["expect"].get("status"), int), case["source"]
        if case["expect"]["status"] >= 400:
            assert not case.get("upstream"), f"{case['source']}: a refused request never reaches an upstream"


def _param(case: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []
    return pytest.param(case, id=case["id"], marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_hostile_input(case, gateway, http, tokens, openrouter_mock, local_mock):
    body = body_of(case)
    content: bytes | Iterator[bytes] | None = body
    if body is not None and case.get("chunked"):
        content = _chunks(body)
    before = upstream_calls(openrouter_mock, local_mock)
    response = http.request(case["method"], case["path"], headers=headers_of(case, tokens), content=content)
    calls = upstream_calls(openrouter_mock, local_mock) - before
    expect = case["expect"]
    where = f"{case['source']} {case['id']}: {response.status_code} {response.text[:400]!r}"

    assert response.status_code < 500, where
    assert not any(mark in response.content for mark in TRACEBACK_MARKS), where
    assert response.status_code == expect["status"], where
    if response.status_code == 405:
        assert response.headers.get("allow"), f"{where}: a 405 names the allowed methods"
    if response.status_code >= 400 and case["method"] != "HEAD":
        error = error_of(case["path"], response)
        for key in ("code", "type", "param"):
            if key in expect:
                assert error.get(key) == expect[key], where
    if case.get("upstream"):
        assert calls >= 1, f"{where}: an accepted request should have reached the upstream"
    else:
        assert calls == 0, f"{where}: {calls} upstream call(s) for a request the front door should decide"
