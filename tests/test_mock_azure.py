"""Tests of the Azure OpenAI / Foundry mock: its wire format over httpx, and fidelity via the openai SDK."""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from tests.mocks.azure import (
    ACCESS_DENIED,
    API_VERSION_NOT_SUPPORTED,
    CONTENT_FILTER_AFTER,
    DEFAULT_DEPLOYMENTS,
    DEPLOYMENT_NOT_FOUND,
    EMBEDDING_DIMENSIONS,
    FOUNDRY_API_VERSION,
    OUTPUT_FILTER_CATEGORY,
    PROMPT_FILTERED,
    RETRY_AFTER_SECONDS,
    SUPPORTED_API_VERSIONS,
    TOOL_CALL_ID,
    MockAzure,
    Received,
    conversation_of,
)
from tests.mocks.script import (
    CITIES,
    MIDSTREAM_ERROR_AFTER,
    REPLY_PREFIX,
    TOOL_RESULT_PREFIX,
    Conversation,
    embedding_vector,
    plan,
)

KEY = "azure-test-key"
API_VERSION = "2024-10-21"
CHAT_DEPLOYMENT = "gpt-4o"
EMBEDDING_DEPLOYMENT = "text-embedding-3-small"
# Reads that should never take long; a hang shows up as a timeout rather than a stuck suite.
TIMEOUT = httpx.Timeout(5.0)
SHORT_READ = httpx.Timeout(5.0, read=0.3)
SDK_TIMEOUT = 5.0
REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    },
]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockAzure]:
    with MockAzure(KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_records(mock: MockAzure) -> None:
    mock.reset()


def azure(mock: MockAzure, api_key: str = KEY, api_version: str = API_VERSION) -> openai.AzureOpenAI:
    # No retries: 429 and 5xx would otherwise be retried after Retry-After and slow the suite.
    return openai.AzureOpenAI(
        azure_endpoint=mock.endpoint,
        api_key=api_key,
        api_version=api_version,
        max_retries=0,
        timeout=SDK_TIMEOUT,
    )


def v1(mock: MockAzure, api_key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mock.endpoint}/openai/v1/", api_key=api_key, max_retries=0, timeout=SDK_TIMEOUT)


def foundry(mock: MockAzure) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=mock.models_base_url,
        api_key=KEY,
        default_query={"api-version": FOUNDRY_API_VERSION},
        max_retries=0,
        timeout=SDK_TIMEOUT,
    )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def expected(messages: list[dict[str, Any]], **body: Any) -> Any:
    """What script.plan answers for this request, worked out independently of the mock's parser."""
    texts = [m.get("content") or "" for m in messages]
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    tool_results: list[str] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tool_results.insert(0, message["content"])
    stop = body.get("stop")
    conversation = Conversation(
        texts=texts,
        last_user_text=last_user,
        tool_results=tool_results,
        tool_names=[t["function"]["name"] for t in body.get("tools", [])],
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
    )
    return plan(conversation, tool_call_id=TOOL_CALL_ID)


def classic_url(mock: MockAzure, deployment: str = CHAT_DEPLOYMENT, operation: str = "chat/completions") -> str:
    return f"{mock.endpoint}/openai/deployments/{deployment}/{operation}"


def post(
    url: str,
    body: dict[str, Any],
    *,
    api_version: str | None = API_VERSION,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    params = {"api-version": api_version} if api_version is not None else {}
    return httpx.post(url, json=body, params=params, headers=headers or {"api-key": KEY}, timeout=TIMEOUT)


def stream_events(url: str, body: dict[str, Any], api_version: str | None = API_VERSION) -> list[Any]:
    """The SSE data payloads of a streamed request, JSON-decoded except the literal [DONE]."""
    params = {"api-version": api_version} if api_version is not None else {}
    with httpx.stream(
        "POST", url, json={**body, "stream": True}, params=params, headers={"api-key": KEY}, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- lifecycle and recording ---------------------------------------------------------------------


def test_endpoint_is_the_resource_root_and_accepts_connections(mock: MockAzure) -> None:
    assert mock.endpoint == f"http://127.0.0.1:{mock.port}"
    assert mock.v1_base_url == f"{mock.endpoint}/openai/v1/"
    with socket.create_connection(("127.0.0.1", mock.port), timeout=1):
        pass


def test_defaults() -> None:
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small", "text-embedding-3-large"} <= set(
        DEFAULT_DEPLOYMENTS
    )
    assert all(name == model for name, model in DEFAULT_DEPLOYMENTS.items())
    assert {"2024-10-21", "2024-06-01", "2025-01-01-preview", "2024-05-01-preview"} <= set(SUPPORTED_API_VERSIONS)
    assert EMBEDDING_DIMENSIONS["text-embedding-3-small"] == 1536
    assert EMBEDDING_DIMENSIONS["text-embedding-3-large"] == 3072


def test_stop_frees_the_port() -> None:
    server = MockAzure(KEY).start()
    url = f"{server.endpoint}/openai/v1/models"
    assert httpx.get(url, headers={"api-key": KEY}, timeout=TIMEOUT).status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, headers={"api-key": KEY}, timeout=TIMEOUT)


def test_records_every_style(mock: MockAzure) -> None:
    post(classic_url(mock), {"model": "ignored", "messages": user("one")})
    v1_body = {"model": "gpt-4o-mini", "messages": user("two")}
    bearer = {"Authorization": f"Bearer {KEY}"}
    post(f"{mock.endpoint}/openai/v1/chat/completions", v1_body, api_version=None, headers=bearer)
    foundry_body = {"model": EMBEDDING_DEPLOYMENT, "input": "three"}
    post(f"{mock.endpoint}/models/embeddings", foundry_body, api_version=FOUNDRY_API_VERSION)
    httpx.get(f"{mock.endpoint}/openai/v1/models", headers={"api-key": KEY, "x-trace": "t1"}, timeout=TIMEOUT)
    got = mock.received
    assert [(r.method, r.path, r.style, r.deployment) for r in got] == [
        ("POST", "/openai/deployments/gpt-4o/chat/completions", "deployment", "gpt-4o"),
        ("POST", "/openai/v1/chat/completions", "v1", "gpt-4o-mini"),
        ("POST", "/models/embeddings", "models", EMBEDDING_DEPLOYMENT),
        ("GET", "/openai/v1/models", "v1", None),
    ]
    assert got[0].query == {"api-version": API_VERSION} and got[1].query == {}
    assert got[0].headers["api-key"] == KEY
    assert got[1].headers["authorization"] == f"Bearer {KEY}"
    assert got[3].headers["x-trace"] == "t1" and got[3].body is None
    assert got[0].body == {"model": "ignored", "messages": user("one")}
    assert all(r.completed and not r.disconnected for r in got[:3])
    assert got[2].usage == {"prompt_tokens": 1, "total_tokens": 1}
    mock.reset()
    assert mock.received == []


def test_received_is_a_struct() -> None:
    record = Received("POST", "/p", {}, "v1", "gpt-4o", {}, None)
    assert isinstance(record, msgspec.Struct)
    assert (record.stream, record.chunks_sent, record.completed, record.disconnected, record.usage) == (
        False, 0, False, False, None,
    )


def test_wait_for_is_bounded_and_tolerates_empty_list(mock: MockAzure) -> None:
    started = time.monotonic()
    assert mock.wait_for(lambda r: r[-1].completed, timeout=0.2) is False
    assert 0.2 <= time.monotonic() - started < 1.0


def test_standalone_entry_point() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mocks.azure", "--port", str(port), "--api-key", "k1"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 8
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/openai/v1/models", headers={"api-key": "k1"}, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "standalone mock never came up"
                time.sleep(0.05)
        assert response.status_code == 200
        assert CHAT_DEPLOYMENT in [m["id"] for m in response.json()["data"]]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_stop_ends_hanging_requests_quietly() -> None:
    server = MockAzure(KEY).start()
    outcome: dict[str, Any] = {}

    def hang_non_stream() -> None:
        outcome["non_stream"] = post(classic_url(server), {"messages": user("#hang")})

    def hang_stream() -> None:
        outcome["events"] = stream_events(classic_url(server), {"messages": user("#hang")})

    threads = [threading.Thread(target=hang_non_stream), threading.Thread(target=hang_stream)]
    for thread in threads:
        thread.start()
    assert server.wait_for(lambda r: len(r) == 2 and any(x.chunks_sent == 1 for x in r))
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(timeout=5)
    assert outcome["non_stream"].status_code == 503
    assert "[DONE]" not in outcome["events"]
    assert not any(r.disconnected or r.completed for r in server.received)


# -- URL families, versions, auth ----------------------------------------------------------------


def test_missing_api_version_is_404(mock: MockAzure) -> None:
    for url in (classic_url(mock), f"{mock.endpoint}/models/chat/completions"):
        response = post(url, {"model": CHAT_DEPLOYMENT, "messages": user("x")}, api_version=None)
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_missing_api_version_comes_before_auth(mock: MockAzure) -> None:
    response = post(classic_url(mock), {"messages": user("x")}, api_version=None, headers={"api-key": "wrong"})
    assert response.status_code == 404


def test_unsupported_api_version_is_400(mock: MockAzure) -> None:
    response = post(classic_url(mock), {"messages": user("x")}, api_version="2019-01-01")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "BadRequest", "message": API_VERSION_NOT_SUPPORTED}}
    with pytest.raises(openai.BadRequestError) as caught:
        azure(mock, api_version="2019-01-01").chat.completions.create(model=CHAT_DEPLOYMENT, messages=user("x"))
    assert caught.value.code == "BadRequest"


def test_custom_api_versions() -> None:
    with MockAzure(KEY, api_versions=("2030-01-01",)) as server:
        assert post(classic_url(server), {"messages": user("x")}, api_version="2030-01-01").status_code == 200
        assert post(classic_url(server), {"messages": user("x")}, api_version=API_VERSION).status_code == 400


@pytest.mark.parametrize("headers", [{"api-key": KEY}, {"Authorization": f"Bearer {KEY}"}])
def test_either_auth_header_works_on_every_style(mock: MockAzure, headers: dict[str, str]) -> None:
    body = {"model": CHAT_DEPLOYMENT, "messages": user("x")}
    assert post(classic_url(mock), body, headers=headers).status_code == 200
    v1_url = f"{mock.endpoint}/openai/v1/chat/completions"
    assert post(v1_url, body, api_version=None, headers=headers).status_code == 200
    foundry_url = f"{mock.endpoint}/models/chat/completions"
    assert post(foundry_url, body, api_version=FOUNDRY_API_VERSION, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"x-api-key": KEY}],
)
def test_bad_auth_is_401(mock: MockAzure, headers: dict[str, str]) -> None:
    response = httpx.post(
        classic_url(mock),
        json={"messages": user("x")},
        params={"api-version": API_VERSION},
        headers=headers,
        timeout=TIMEOUT,
    )
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "401", "message": ACCESS_DENIED}}


def test_sdk_wrong_key(mock: MockAzure) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        azure(mock, api_key="wrong").chat.completions.create(model=CHAT_DEPLOYMENT, messages=user("x"))
    assert caught.value.status_code == 401 and caught.value.code == "401"
    with pytest.raises(openai.AuthenticationError):
        v1(mock, api_key="wrong").chat.completions.create(model=CHAT_DEPLOYMENT, messages=user("x"))


def test_sdk_unknown_deployment(mock: MockAzure) -> None:
    for client in (azure(mock), v1(mock)):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-nope", messages=user("x"))
        assert caught.value.code == "DeploymentNotFound"
        assert caught.value.body == {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND}


def test_foundry_unknown_and_missing_model(mock: MockAzure) -> None:
    url = f"{mock.endpoint}/models/chat/completions"
    unknown = post(url, {"model": "Phi-9", "messages": user("x")}, api_version=FOUNDRY_API_VERSION)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_model"
    missing = post(url, {"messages": user("x")}, api_version=FOUNDRY_API_VERSION)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_model_name"


def test_deployment_decides_not_body_model(mock: MockAzure) -> None:
    response = post(classic_url(mock, "gpt-4.1"), {"model": "something-else", "messages": user("x")})
    assert response.status_code == 200 and response.json()["model"] == "gpt-4.1"


def test_custom_deployments_report_the_underlying_model() -> None:
    with MockAzure(KEY, deployments={"prod-chat": "gpt-4o-2024-08-06"}) as server:
        response = post(classic_url(server, "prod-chat"), {"messages": user("x")})
        assert response.status_code == 200 and response.json()["model"] == "gpt-4o-2024-08-06"
        missing = post(classic_url(server, CHAT_DEPLOYMENT), {"messages": user("x")})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "DeploymentNotFound"


def test_operation_must_match_the_deployment(mock: MockAzure) -> None:
    chat_on_embedder = post(classic_url(mock, EMBEDDING_DEPLOYMENT), {"messages": user("x")})
    assert chat_on_embedder.status_code == 400
    assert chat_on_embedder.json()["error"]["code"] == "OperationNotSupported"
    embed_on_chat = post(classic_url(mock, CHAT_DEPLOYMENT, "embeddings"), {"input": "x"})
    assert embed_on_chat.status_code == 400
    assert embed_on_chat.json()["error"]["code"] == "OperationNotSupported"


def test_v1_tolerates_api_version(mock: MockAzure) -> None:
    url = f"{mock.endpoint}/openai/v1/chat/completions"
    for version in ("preview", "latest", None):
        response = post(url, {"model": CHAT_DEPLOYMENT, "messages": user("x")}, api_version=version)
        assert response.status_code == 200


def test_unknown_path_and_wrong_method_are_azure_404(mock: MockAzure) -> None:
    for method, path in (("POST", "/openai/nope"), ("GET", "/openai/v1/chat/completions"), ("GET", "/")):
        response = httpx.request(method, mock.endpoint + path, headers={"api-key": KEY}, timeout=TIMEOUT)
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert [r.style for r in mock.received] == [None, None, None]


def test_malformed_body_is_400(mock: MockAzure) -> None:
    not_json = httpx.post(
        classic_url(mock), content=b"{nope", params={"api-version": API_VERSION}, headers={"api-key": KEY}
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    no_messages = post(classic_url(mock), {"messages": []})
    assert no_messages.status_code == 400
    bad_limit = post(classic_url(mock), {"messages": user("x"), "max_tokens": "ten"})
    assert bad_limit.status_code == 400
    tools_without_tools = post(classic_url(mock), {"messages": user("#tools")})
    assert tools_without_tools.status_code == 400


def test_models_route(mock: MockAzure) -> None:
    response = httpx.get(f"{mock.endpoint}/openai/v1/models", headers={"api-key": KEY}, timeout=TIMEOUT)
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == list(DEFAULT_DEPLOYMENTS)
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id[CHAT_DEPLOYMENT]["object"] == "model"
    assert by_id[CHAT_DEPLOYMENT]["capabilities"]["chat_completion"] is True
    assert by_id[EMBEDDING_DEPLOYMENT]["capabilities"]["embeddings"] is True
    one = httpx.get(f"{mock.endpoint}/openai/v1/models/gpt-4.1", headers={"api-key": KEY}, timeout=TIMEOUT)
    assert one.status_code == 200 and one.json()["id"] == "gpt-4.1"
    missing = httpx.get(f"{mock.endpoint}/openai/v1/models/nope", headers={"api-key": KEY}, timeout=TIMEOUT)
    assert missing.status_code == 404
    denied = httpx.get(f"{mock.endpoint}/openai/v1/models", timeout=TIMEOUT)
    assert denied.status_code == 401
    assert [m.id for m in v1(mock).models.list()] == list(DEFAULT_DEPLOYMENTS)


# -- chat over the SDK ---------------------------------------------------------------------------


def test_sdk_chat(mock: MockAzure) -> None:
    messages = [{"role": "system", "content": "Be terse."}, *user("hello there")]
    response = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages)
    want = expected(messages)
    assert response.choices[0].message.content == REPLY_PREFIX + "hello there" == want.text
    assert response.choices[0].finish_reason == "stop"
    assert response.model == CHAT_DEPLOYMENT and response.object == "chat.completion"
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == want.usage()
    extra = response.model_dump()
    [prompt_filter] = extra["prompt_filter_results"]
    assert prompt_filter["prompt_index"] == 0
    assert prompt_filter["content_filter_results"]["jailbreak"] == {"filtered": False, "detected": False}
    choice_filter = extra["choices"][0]["content_filter_results"]
    assert set(choice_filter) == {
        "hate", "self_harm", "sexual", "violence", "protected_material_code", "protected_material_text",
    }
    assert choice_filter["violence"] == {"filtered": False, "severity": "safe"}
    [record] = mock.received
    assert (record.style, record.deployment) == ("deployment", CHAT_DEPLOYMENT)
    assert record.query == {"api-version": API_VERSION}
    assert record.usage == want.usage() and record.completed and not record.stream
    assert response.id.startswith("chatcmpl-")


def test_sdk_stream_copes_with_the_empty_first_chunk(mock: MockAzure) -> None:
    messages = user("stream please #chunks=5")
    stream = azure(mock).chat.completions.create(
        model=CHAT_DEPLOYMENT, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    first = chunks[0]
    assert first.choices == [] and first.id == "" and first.model == "" and first.created == 0
    assert first.model_dump()["prompt_filter_results"][0]["prompt_index"] == 0
    body = [c for c in chunks[1:] if c.choices]
    assert len({c.id for c in body}) == 1 and body[0].id.startswith("chatcmpl-")
    assert body[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    want = expected(messages)
    assert text == want.text == "tok0 tok1 tok2 tok3 tok4 "
    assert body[-1].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(exclude_none=True) == want.usage()
    assert mock.wait_for(lambda r: r[-1].completed, timeout=2)
    assert mock.received[-1].chunks_sent == 5 and mock.received[-1].stream


def test_raw_stream_shape(mock: MockAzure) -> None:
    body = {"messages": user("#chunks=3"), "stream_options": {"include_usage": True}}
    events = stream_events(classic_url(mock), body)
    first, role, *content, finish, usage, done = events
    assert first == {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": first["prompt_filter_results"],
    }
    assert role["choices"][0]["delta"] == {"content": "", "refusal": None, "role": "assistant"}
    assert [c["choices"][0]["delta"] for c in content] == [{"content": f"tok{i} "} for i in range(3)]
    annotations = [c["choices"][0]["content_filter_results"] for c in content]
    assert {} in annotations and any("hate" in a for a in annotations)
    assert annotations[-1] != {}
    for chunk in (role, *content, finish):
        assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
        assert chunk["id"] == role["id"] and chunk["model"] == CHAT_DEPLOYMENT
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert done == "[DONE]"


def test_raw_stream_without_include_usage(mock: MockAzure) -> None:
    events = stream_events(classic_url(mock), {"messages": user("#chunks=2")})
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in e for e in events[:-1])


def test_sdk_parallel_tool_calls(mock: MockAzure) -> None:
    messages = user("weather please #tools=2")
    response = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, tools=TOOLS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_azure0", "get_weather", {"city": CITIES[0]}),
        ("call_azure1", "get_time", {"city": CITIES[1]}),
    ]
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == expected(messages, tools=TOOLS).usage()


def test_sdk_tool_call_stream_reassembled(mock: MockAzure) -> None:
    messages = user("#tools=2")
    stream = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, tools=TOOLS, stream=True)
    calls: dict[int, dict[str, Any]] = {}
    heads: list[Any] = []
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.id is not None:
                heads.append(delta)
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.function.name is None and delta.type is None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert [h.index for h in heads] == [0, 1]
    assert all(h.type == "function" and h.function.arguments == "" for h in heads)
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_azure0", "name": "get_weather", "arguments": json.dumps({"city": CITIES[0]})},
        1: {"id": "call_azure1", "name": "get_time", "arguments": json.dumps({"city": CITIES[1]})},
    }
    assert mock.wait_for(lambda r: r[-1].completed, timeout=2)
    assert mock.received[-1].chunks_sent > 2


def test_sdk_tool_round_trip(mock: MockAzure) -> None:
    client = azure(mock)
    first = user("weather please #tools=2")
    turn = client.chat.completions.create(model=CHAT_DEPLOYMENT, messages=first, tools=TOOLS)
    calls = turn.choices[0].message.tool_calls or []
    messages: list[dict[str, Any]] = [
        *first,
        turn.choices[0].message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": f"result {i}"} for i, c in enumerate(calls)),
    ]
    response = client.chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, tools=TOOLS)
    assert response.choices[0].message.content == TOOL_RESULT_PREFIX + "result 0; result 1"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == expected(messages, tools=TOOLS).usage()


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_sdk_max_tokens_gives_length(mock: MockAzure, limit: str) -> None:
    messages = user("#chunks=6")
    response = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, **{limit: 2})
    assert response.choices[0].message.content == "tok0 tok1 "
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.model_dump(exclude_none=True) == expected(messages, **{limit: 2}).usage()


@pytest.mark.parametrize(
    ("stop", "text"), [("tok3", "tok0 tok1 tok2 "), (["zzz", "tok2"], "tok0 tok1 "), (["zzz"], "tok0 tok1 tok2 tok3 ")]
)
def test_sdk_stop_sequences(mock: MockAzure, stop: str | list[str], text: str) -> None:
    messages = user("#chunks=4")
    response = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, stop=stop)
    assert response.choices[0].message.content == text == expected(messages, stop=stop).text
    assert response.choices[0].finish_reason == "stop"


def test_sdk_stream_max_tokens(mock: MockAzure) -> None:
    stream = azure(mock).chat.completions.create(
        model=CHAT_DEPLOYMENT, messages=user("#chunks=6"), max_tokens=3, stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].choices[0].finish_reason == "length"


def test_no_usage_and_cached(mock: MockAzure) -> None:
    plain = post(classic_url(mock), {"messages": user("x #no_usage")})
    assert "usage" not in plain.json()
    assert mock.received[-1].usage is not None
    events = stream_events(
        classic_url(mock), {"messages": user("x #no_usage"), "stream_options": {"include_usage": True}}
    )
    assert not any(isinstance(e, dict) and e.get("usage") for e in events)
    cached = post(classic_url(mock), {"messages": user("x #cached=4")})
    assert cached.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


def test_echo_body(mock: MockAzure) -> None:
    body = {"messages": user("#echo_body"), "temperature": 0.5}
    response = post(classic_url(mock), body)
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == body


def test_conversation_of_matches_the_independent_reading() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "hi #chunks=2"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "a", "content": "r"},
    ]
    got = conversation_of({"messages": messages, "tools": TOOLS, "max_tokens": 9, "stop": "x"})
    assert got == Conversation(
        texts=["sys", "hi #chunks=2", "", "r"],
        last_user_text="hi #chunks=2",
        tool_results=["r"],
        tool_names=["get_weather", "get_time"],
        max_tokens=9,
        stop=["x"],
    )


# -- v1 and Foundry styles over the SDK ----------------------------------------------------------


def test_v1_sdk_chat_stream_and_embeddings(mock: MockAzure) -> None:
    client = v1(mock)
    messages = user("via v1")
    response = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert response.choices[0].message.content == REPLY_PREFIX + "via v1"
    assert response.model == "gpt-4o-mini"
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=user("#chunks=2"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "tok0 tok1 "
    embedded = client.embeddings.create(model=EMBEDDING_DEPLOYMENT, input="v1 words", encoding_format="float")
    assert embedded.data[0].embedding == pytest.approx(embedding_vector("v1 words", 1536))
    records = mock.received
    assert [r.style for r in records] == ["v1", "v1", "v1"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in records)
    assert records[0].path == "/openai/v1/chat/completions" and records[0].deployment == "gpt-4o-mini"


def test_foundry_sdk_chat_and_embeddings(mock: MockAzure) -> None:
    client = foundry(mock)
    response = client.chat.completions.create(model="gpt-4.1", messages=user("via foundry"))
    assert response.choices[0].message.content == REPLY_PREFIX + "via foundry"
    embedded = client.embeddings.create(model=EMBEDDING_DEPLOYMENT, input="f", dimensions=8)
    assert len(embedded.data[0].embedding) == 8
    records = mock.received
    assert [(r.style, r.path, r.query) for r in records] == [
        ("models", "/models/chat/completions", {"api-version": FOUNDRY_API_VERSION}),
        ("models", "/models/embeddings", {"api-version": FOUNDRY_API_VERSION}),
    ]


# -- embeddings ----------------------------------------------------------------------------------


def test_sdk_embeddings_float(mock: MockAzure) -> None:
    inputs = ["one two", "three"]
    response = azure(mock).embeddings.create(model=EMBEDDING_DEPLOYMENT, input=inputs, encoding_format="float")
    assert [d.index for d in response.data] == [0, 1]
    for item, datum in zip(inputs, response.data):
        assert datum.embedding == pytest.approx(embedding_vector(item, EMBEDDING_DIMENSIONS[EMBEDDING_DEPLOYMENT]))
    assert response.usage.prompt_tokens == response.usage.total_tokens == 3
    assert response.model == EMBEDDING_DEPLOYMENT
    [record] = mock.received
    assert record.path == f"/openai/deployments/{EMBEDDING_DEPLOYMENT}/embeddings"
    assert record.body is not None and record.body["encoding_format"] == "float"


def test_sdk_embeddings_default_is_base64(mock: MockAzure) -> None:
    response = azure(mock).embeddings.create(model="text-embedding-3-large", input="hello world")
    [record] = mock.received
    assert record.body is not None and record.body["encoding_format"] == "base64"
    vector = embedding_vector("hello world", EMBEDDING_DIMENSIONS["text-embedding-3-large"])
    assert len(response.data[0].embedding) == 3072
    assert response.data[0].embedding == pytest.approx(vector, abs=1e-6)


def test_raw_embeddings_base64_dimensions_and_token_inputs(mock: MockAzure) -> None:
    url = classic_url(mock, "text-embedding-3-large", "embeddings")
    response = post(url, {"input": [[1, 2, 3]], "encoding_format": "base64", "dimensions": 16})
    assert response.status_code == 200
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert struct.unpack("<16f", raw) == pytest.approx(embedding_vector([1, 2, 3], 16), abs=1e-6)
    assert response.json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert post(url, {"input": "x", "dimensions": 4000}).status_code == 400
    assert post(url, {"input": []}).status_code == 400


def test_ada_rejects_dimensions() -> None:
    with MockAzure(KEY, deployments={"ada": "text-embedding-ada-002"}) as server:
        url = classic_url(server, "ada", "embeddings")
        assert len(post(url, {"input": "x"}).json()["data"][0]["embedding"]) == 1536
        assert post(url, {"input": "x", "dimensions": 8}).status_code == 400


def test_embeddings_status_directive(mock: MockAzure) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        azure(mock).embeddings.create(model=EMBEDDING_DEPLOYMENT, input="x #status=429")
    assert "Embeddings_Create" in caught.value.message


# -- content filter and errors -------------------------------------------------------------------


def test_sdk_prompt_filtered_400(mock: MockAzure) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        azure(mock).chat.completions.create(
            model=CHAT_DEPLOYMENT, messages=user("bad words #status=400 #exception=content_filter")
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "content_filter" == caught.value.code
    assert body["param"] == "prompt" and body["status"] == 400 and body["type"] is None
    assert body["message"] == PROMPT_FILTERED
    inner = body["innererror"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["content_filter_result"]["hate"] == {"filtered": True, "severity": "high"}
    assert inner["content_filter_result"]["violence"] == {"filtered": False, "severity": "safe"}
    assert inner["content_filter_result"]["jailbreak"] == {"filtered": False, "detected": False}


def test_sdk_output_filtered(mock: MockAzure) -> None:
    messages = user("tell me a story #exception=content_filter")
    response = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages)
    choice = response.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content == "".join(expected(messages).pieces[:CONTENT_FILTER_AFTER])
    annotation = response.model_dump()["choices"][0]["content_filter_results"]
    assert annotation[OUTPUT_FILTER_CATEGORY]["filtered"] is True
    assert annotation["hate"]["filtered"] is False
    assert response.usage is not None and response.usage.completion_tokens == CONTENT_FILTER_AFTER


def test_sdk_output_filtered_stream(mock: MockAzure) -> None:
    messages = user("#chunks=5 #exception=content_filter")
    stream = azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=messages, stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 "
    last = chunks[-1].model_dump()["choices"][0]
    assert last["finish_reason"] == "content_filter"
    assert last["content_filter_results"][OUTPUT_FILTER_CATEGORY]["filtered"] is True


def test_sdk_rate_limited(mock: MockAzure) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=user("x #status=429"))
    error = caught.value
    headers = error.response.headers
    assert headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert headers["retry-after-ms"] == str(RETRY_AFTER_SECONDS * 1000)
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["apim-request-id"]
    assert error.code == "429"
    assert isinstance(error.body, dict) and set(error.body) == {"code", "message"}
    assert error.body["message"].startswith(
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION} "
        "have exceeded token rate limit"
    )


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_sdk_status_directive(mock: MockAzure, status: int, exception: type[openai.APIStatusError]) -> None:
    with pytest.raises(exception) as caught:
        azure(mock).chat.completions.create(model=CHAT_DEPLOYMENT, messages=user(f"x #status={status}"))
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == str(status) and "type" not in body


def test_status_with_named_code(mock: MockAzure) -> None:
    response = post(classic_url(mock), {"messages": user("x #status=400 #exception=context_length_exceeded")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_status_out_of_range_is_400(mock: MockAzure) -> None:
    response = post(classic_url(mock), {"messages": user("x #status=200")})
    assert response.status_code == 400 and "#status" in response.json()["error"]["message"]


def test_midstream_error(mock: MockAzure) -> None:
    events = stream_events(classic_url(mock), {"messages": user("#chunks=5 #midstream_error")})
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "server_error"
    contents = [e["choices"][0]["delta"].get("content") for e in events[2:-1]]
    assert contents == [f"tok{i} " for i in range(MIDSTREAM_ERROR_AFTER)]
    assert mock.received[-1].chunks_sent == MIDSTREAM_ERROR_AFTER
    stream = azure(mock).chat.completions.create(
        model=CHAT_DEPLOYMENT, messages=user("#chunks=5 #midstream_error"), stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


# -- timing and hang-ups -------------------------------------------------------------------------


def test_delay_stream_and_non_stream(mock: MockAzure) -> None:
    started = time.monotonic()
    assert post(classic_url(mock), {"messages": user("x #delay=100")}).status_code == 200
    assert time.monotonic() - started >= 0.1
    started = time.monotonic()
    stream_events(classic_url(mock), {"messages": user("#chunks=2 #delay=60")})
    assert time.monotonic() - started >= 0.18


def test_hang_stream_then_hang_up(mock: MockAzure) -> None:
    with httpx.Client(timeout=SHORT_READ) as client:
        with client.stream(
            "POST",
            classic_url(mock),
            params={"api-version": API_VERSION},
            json={"messages": user("#chunks=4 #hang"), "stream": True},
            headers={"api-key": KEY},
        ) as response:
            with pytest.raises(httpx.ReadTimeout):
                for _ in response.iter_lines():
                    pass
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=2)
    assert mock.received[-1].chunks_sent == 1 and not mock.received[-1].completed


def test_hang_non_stream_then_hang_up(mock: MockAzure) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            classic_url(mock),
            params={"api-version": API_VERSION},
            json={"messages": user("#hang")},
            headers={"api-key": KEY},
            timeout=SHORT_READ,
        )
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=2)
