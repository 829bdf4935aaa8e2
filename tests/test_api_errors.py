"""Every error a client can meet comes in OpenAI's shape with the right status, and the SDK
raises its matching exception."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import openai
import pytest

CHAT = {"model": "mock-local", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, path, body, token="default", **headers):
    if token == "default":
        token = gateway.token()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{gateway.base_url}/{path}", content=content, timeout=20,
                      headers={"Content-Type": "application/json", **headers})


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwdw==", "Bearer", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_unauthorized_bad_header(gateway, header):
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_unauthorized_expired_and_foreign_tokens(gateway, tmp_path):
    from api.auth import LocalKey

    expired = gateway.token(ttl=-60)
    foreign = LocalKey.load_or_create(tmp_path / "other").mint("user_x")
    forged = jwt.encode({"sub": "user_x", "exp": int(time.time()) + 60}, "a-shared-secret-of-at-least-32-bytes", algorithm="HS256")
    for token, words in ((expired, "expired"), (foreign, "unknown key"), (forged, "")):
        response = post(gateway, "chat/completions", CHAT, token=token)
        assert response.status_code == 401, token
        assert words in error_of(response)["message"]
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=gateway.base_url, api_key=expired, max_retries=0).models.list()
    assert info.value.code == "unauthorized"


def test_model_not_found(gateway):
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        gateway.client().embeddings.create(model="no-such-model", input="x")


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1,2]", None),
    ({"model": "mock-local"}, "messages"),
    ({"model": "mock-local", "messages": []}, "messages"),
    ({"model": "mock-local", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "mock-local", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({**CHAT, "temperature": 7}, "temperature"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens"),
    ({**CHAT, "stream": "yes"}, "stream"),
    ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_invalid_chat_bodies(gateway, body, param):
    response = post(gateway, "chat/completions", body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize("body", [
    {"model": "mock-embed"},
    {"model": "mock-embed", "input": ""},
    {"model": "mock-embed", "input": []},
    {"model": "mock-embed", "input": ["a", 1]},
    {"model": "mock-embed", "input": "x", "encoding_format": "hex"},
    {"model": "mock-embed", "input": "x", "dimensions": 0},
])
def test_invalid_embeddings_bodies(gateway, body):
    response = post(gateway, "embeddings", body)
    assert response.status_code == 400, response.text
    assert error_of(response)["type"] == "invalid_request_error"


def test_wrong_capability_is_400(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.client().embeddings.create(model="gpt-4o-mini", input="x")
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model="mock-embed", messages=[{"role": "user", "content": "x"}])


def test_body_too_large(gateway):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 300_000}]}
    response = post(gateway, "chat/completions", big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_unknown_route_and_method(gateway):
    response = httpx.get(f"{gateway.base_url}/nope")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = httpx.get(f"{gateway.base_url}/chat/completions", headers={"Authorization": f"Bearer {gateway.token()}"})
    assert response.status_code == 405 and "error" in response.json()


def test_upstream_auth_failure_is_502_and_redacted(gateway, openrouter_mock):
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="gpt-4o-mini",
                                                 messages=[{"role": "user", "content": "#status=401"}])
    assert info.value.status_code == 502
    assert info.value.code == "provider_error"
    message = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value.body)
    assert "401" in message and "Incorrect API key" in message
    assert "sk-mock-upstream" not in info.value.response.text


def test_upstream_server_error_and_error_in_200(gateway):
    for directive in ("#status=500", "#status=402", "#error_in_200"):
        with pytest.raises(openai.InternalServerError) as info:
            gateway.client().chat.completions.create(model="gpt-4o-mini",
                                                     messages=[{"role": "user", "content": directive}])
        assert info.value.status_code == 502, directive
        assert info.value.code == "provider_error"


def test_upstream_rate_limit_passes_retry_after(gateway):
    response = post(gateway, "chat/completions",
                    {"model": "mock-local", "messages": [{"role": "user", "content": "#status=429"}]})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError):
        gateway.client().chat.completions.create(model="mock-local",
                                                 messages=[{"role": "user", "content": "#status=429"}])


def test_upstream_bad_request_is_400(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(model="mock-local",
                                                 messages=[{"role": "user", "content": "#status=400"}])
    assert "mock error 400" in info.value.message


def test_stream_error_before_first_token_is_an_http_status(gateway):
    with pytest.raises(openai.APIStatusError) as info:
        list(gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "#status=503"}], stream=True))
    assert info.value.status_code == 502


def test_midstream_error_is_a_final_sse_error_event(gateway):
    stream = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#midstream_error"}], stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) >= 2  # the tokens before the failure did reach the client
    assert "Provider disconnected" in str(info.value) or "error" in str(info.value).lower()


def test_upstream_timeout_is_504(gateway):
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="mock-local",
                                                 messages=[{"role": "user", "content": "#hang"}])
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


def test_no_worker_is_503_at_once(gateway):
    """A pool with no live worker is refused before anything is queued, not after queue_timeout."""
    started = time.monotonic()
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {gateway.token()}"},
                          json={"model": "unserved-model", "messages": [{"role": "user", "content": "x"}]})
    assert time.monotonic() - started < 2  # queue_timeout is 3 s here
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_worker_available" and "'idle'" in error["message"]
    assert response.headers["retry-after"] == "1"
    assert not [k for k in gateway.redis.scan_iter(f"{gateway.prefix}queue:idle*")]
