"""Tests of the mock Bedrock Runtime: fidelity through botocore's real client, and the raw wire format."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.config
import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests.mocks.bedrock import (
    COHERE_DIMENSIONS,
    ERROR_TYPE_SUFFIX,
    EVENTSTREAM_CONTENT_TYPE,
    INPUT_TOKEN_HEADER,
    MSG_BAD_SIGNATURE,
    MSG_BAD_TOKEN,
    MSG_UNKNOWN_MODEL,
    STATUS_EXCEPTIONS,
    STREAM_WRITE_SIZES,
    TITAN_DEFAULT_DIMENSIONS,
    MockBedrock,
    bedrock_usage,
    converse_conversation,
)
from tests.mocks.script import (
    CITIES,
    MIDSTREAM_ERROR_AFTER,
    REPLY_PREFIX,
    TOOL_COMPLETION_TOKENS,
    TOOL_RESULT_PREFIX,
    Conversation,
    embedding_vector,
    plan,
)

ACCESS_KEY = "AKIAMOCKBEDROCK00001"
SECRET_KEY = "mock/secret+key/for/bedrock"
REGION = "us-west-2"
BEARER_TOKEN = "bedrock-api-key-mock"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
TIMEOUT = httpx.Timeout(5.0)
REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_CONFIG = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Weather for a city",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
            }
        }
    ]
}


def make_client(endpoint: MockBedrock | str, *, validate: bool = True, **overrides: Any) -> Any:
    """botocore's own bedrock-runtime client, pointed at the mock, with retries off."""
    settings: dict[str, Any] = {
        "region_name": REGION,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        **overrides,
    }
    config = botocore.config.Config(
        retries={"total_max_attempts": 1}, parameter_validation=validate, connect_timeout=5, read_timeout=5
    )
    url = endpoint if isinstance(endpoint, str) else endpoint.url
    return botocore.session.get_session().create_client("bedrock-runtime", endpoint_url=url, config=config, **settings)


@pytest.fixture(scope="module")
def mock() -> Iterator[MockBedrock]:
    with MockBedrock(ACCESS_KEY, SECRET_KEY, region=REGION, bearer_token=BEARER_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def client(mock: MockBedrock) -> Any:
    return make_client(mock)


@pytest.fixture(scope="module")
def lax_client(mock: MockBedrock) -> Any:
    """A client that sends what botocore's own parameter validation would refuse."""
    return make_client(mock, validate=False)


@pytest.fixture(autouse=True)
def _fresh_records(mock: MockBedrock) -> None:
    mock.reset()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def signed_request(
    mock: MockBedrock,
    model_id: str,
    operation: str,
    body: bytes,
    *,
    secret: str = SECRET_KEY,
    region: str = REGION,
    session_token: str | None = None,
) -> tuple[str, dict[str, str]]:
    """A URL and SigV4 headers for ``body``, signed the way the gateway signs (botocore's signer)."""
    url = f"{mock.url}/model/{quote(model_id, safe='')}/{operation}"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, secret, session_token), "bedrock", region).add_auth(request)
    return url, dict(request.headers.items())


def post_signed(mock: MockBedrock, model_id: str, operation: str, body: dict[str, Any]) -> httpx.Response:
    data = json.dumps(body).encode()
    url, headers = signed_request(mock, model_id, operation, data)
    return httpx.post(url, content=data, headers=headers, timeout=TIMEOUT)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def collect(stream: Any) -> list[dict[str, Any]]:
    return [event for event in stream]


def decode_frames(data: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, json.loads(message.payload)) for message in buffer]


# -- Converse ----------------------------------------------------------------------------------


def test_converse_text(client: Any, mock: MockBedrock) -> None:
    response = client.converse(
        modelId=HAIKU, system=[{"text": "Be terse."}], messages=[user("hi there")], inferenceConfig={"temperature": 0.2}
    )

    assert response["output"]["message"] == {"role": "assistant", "content": [{"text": REPLY_PREFIX + "hi there"}]}
    assert response["stopReason"] == "end_turn"
    # Two texts ("Be terse.", "hi there"): 4 words + 3 per text; one output token per word.
    assert response["usage"] == {
        "inputTokens": 10,
        "outputTokens": 5,
        "totalTokens": 15,
        "cacheReadInputTokens": 0,
        "cacheWriteInputTokens": 0,
    }
    assert response["metrics"]["latencyMs"] >= 1
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    [record] = mock.received
    assert record.operation == "converse"
    assert record.model_id == HAIKU
    assert record.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert record.body is not None and record.body["system"] == [{"text": "Be terse."}]
    assert record.completed and not record.stream and record.error_type is None
    assert record.usage == response["usage"]


def test_usage_equals_plan_and_cached_tokens_leave_input_tokens(client: Any) -> None:
    text = "count these four words #cached=3"
    response = client.converse(modelId=HAIKU, messages=[user(text)])

    expected = plan(Conversation(texts=[text], last_user_text=text))
    assert response["usage"] == bedrock_usage(expected)
    assert response["usage"]["cacheReadInputTokens"] == 3
    assert response["usage"]["inputTokens"] == expected.prompt_tokens - 3
    assert response["usage"]["totalTokens"] == expected.prompt_tokens + expected.completion_tokens


def test_converse_tools_then_tool_results_round_trip(client: Any, mock: MockBedrock) -> None:
    first = [user("weather please #tools=2")]
    response = client.converse(modelId=HAIKU, messages=first, toolConfig=TOOL_CONFIG)

    assert response["stopReason"] == "tool_use"
    content = response["output"]["message"]["content"]
    assert content == [
        {"toolUse": {"toolUseId": "tooluse_mock0", "name": "get_weather", "input": {"city": CITIES[0]}}},
        {"toolUse": {"toolUseId": "tooluse_mock1", "name": "get_weather", "input": {"city": CITIES[1]}}},
    ]
    assert response["usage"]["outputTokens"] == 2 * TOOL_COMPLETION_TOKENS

    results = {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": "tooluse_mock0", "content": [{"text": "4 C"}], "status": "success"}},
            {"toolResult": {"toolUseId": "tooluse_mock1", "content": [{"json": {"temp_c": 9}}]}},
        ],
    }
    messages = [*first, response["output"]["message"], results]
    answer = client.converse(modelId=HAIKU, messages=messages, toolConfig=TOOL_CONFIG)

    text = answer["output"]["message"]["content"][0]["text"]
    assert text.startswith(TOOL_RESULT_PREFIX)
    assert text == TOOL_RESULT_PREFIX + '4 C; {"temp_c":9}'
    assert answer["stopReason"] == "end_turn"
    assert mock.received[-1].body is not None and len(mock.received[-1].body["messages"]) == 3


def test_stop_sequence_and_max_tokens_stop_reasons(client: Any) -> None:
    cut = client.converse(modelId=HAIKU, messages=[user("hi there")], inferenceConfig={"stopSequences": ["mock"]})
    assert cut["output"]["message"]["content"] == [{"text": "Hello from "}]
    assert cut["stopReason"] == "stop_sequence"

    unmatched = client.converse(modelId=HAIKU, messages=[user("hi")], inferenceConfig={"stopSequences": ["zzz"]})
    assert unmatched["stopReason"] == "end_turn"

    short = client.converse(modelId=HAIKU, messages=[user("one two three four")], inferenceConfig={"maxTokens": 2})
    assert short["output"]["message"]["content"] == [{"text": "Hello from "}]
    assert short["stopReason"] == "max_tokens"
    assert short["usage"]["outputTokens"] == 2


def test_model_ids_with_colon_and_slash_arrive_intact(client: Any, mock: MockBedrock) -> None:
    client.converse(modelId="global.anthropic.claude-sonnet-4-20250514-v1:0", messages=[user("hi")])
    client.converse(modelId=PROFILE_ARN, messages=[user("hi")])

    first, second = mock.received
    assert first.model_id == "global.anthropic.claude-sonnet-4-20250514-v1:0"
    assert second.model_id == PROFILE_ARN
    assert "%2F" in second.path and "%3A" in second.path and second.path.count("/") == 3
    assert first.completed and second.completed


def test_unknown_model_is_a_validation_error(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        client.converse(modelId="anthropic.claude-9-imaginary-v1:0", messages=[user("hi")])
    assert error_code(exc) == ("ValidationException", 400, MSG_UNKNOWN_MODEL)


def test_extra_models_can_be_added() -> None:
    with MockBedrock(ACCESS_KEY, SECRET_KEY, region=REGION, models=["acme.model-v1:0"]) as extra:
        response = make_client(extra).converse(modelId="acme.model-v1:0", messages=[user("hi")])
    assert response["stopReason"] == "end_turn"


# -- ConverseStream ----------------------------------------------------------------------------


def test_converse_stream_text(client: Any, mock: MockBedrock) -> None:
    response = client.converse_stream(modelId=HAIKU, messages=[user("#chunks=4")])
    events = collect(response["stream"])

    kinds = [next(iter(event)) for event in events]
    assert kinds == ["messageStart"] + ["contentBlockDelta"] * 4 + ["contentBlockStop", "messageStop", "metadata"]
    assert events[0]["messageStart"] == {"role": "assistant"}
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert all(d["contentBlockIndex"] == 0 for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == "tok0 tok1 tok2 tok3 "
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    expected = plan(Conversation(texts=["#chunks=4"], last_user_text="#chunks=4"))
    assert events[-1]["metadata"]["usage"] == bedrock_usage(expected)
    assert events[-1]["metadata"]["metrics"]["latencyMs"] >= 1
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == EVENTSTREAM_CONTENT_TYPE

    assert mock.wait_for(lambda r: r[-1].completed)
    record = mock.received[-1]
    assert record.stream and record.operation == "converse-stream"
    assert record.chunks_sent == 4 and not record.disconnected


def test_converse_stream_tools(client: Any) -> None:
    response = client.converse_stream(modelId=HAIKU, messages=[user("go #tools=2")], toolConfig=TOOL_CONFIG)
    events = collect(response["stream"])

    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert [s["contentBlockIndex"] for s in starts] == [0, 1]
    assert [s["start"]["toolUse"] for s in starts] == [
        {"toolUseId": "tooluse_mock0", "name": "get_weather"},
        {"toolUseId": "tooluse_mock1", "name": "get_weather"},
    ]
    inputs: dict[int, str] = {}
    fragments = 0
    for event in events:
        if "contentBlockDelta" in event:
            delta = event["contentBlockDelta"]
            block = delta["contentBlockIndex"]
            inputs[block] = inputs.get(block, "") + delta["delta"]["toolUse"]["input"]
            fragments += 1
    assert {i: json.loads(s) for i, s in inputs.items()} == {0: {"city": CITIES[0]}, 1: {"city": CITIES[1]}}
    assert fragments > 2
    stops = [e["contentBlockStop"]["contentBlockIndex"] for e in events if "contentBlockStop" in e]
    assert stops == [0, 1]
    assert [next(iter(e)) for e in events[-2:]] == ["messageStop", "metadata"]
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


def test_stream_text_then_stop_reasons(client: Any) -> None:
    response = client.converse_stream(
        modelId=HAIKU, messages=[user("one two three")], inferenceConfig={"maxTokens": 3}
    )
    events = collect(response["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "Hello from mock: "
    assert [e["messageStop"] for e in events if "messageStop" in e] == [{"stopReason": "max_tokens"}]


def test_stream_no_usage_leaves_out_metadata(client: Any) -> None:
    events = collect(client.converse_stream(modelId=HAIKU, messages=[user("hi #no_usage")])["stream"])
    assert "metadata" not in [next(iter(e)) for e in events]
    assert next(iter(events[-1])) == "messageStop"


def test_midstream_exception_is_an_event_stream_error(client: Any, mock: MockBedrock) -> None:
    response = client.converse_stream(modelId=HAIKU, messages=[user("#chunks=6 #midstream_error")])
    seen: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as exc:
        for event in response["stream"]:
            seen.append(event)

    assert exc.value.response["Error"]["Code"] == "throttlingException"
    assert exc.value.response["Error"]["Message"] == "Too many requests, please wait before trying again."
    assert sum("contentBlockDelta" in e for e in seen) == MIDSTREAM_ERROR_AFTER
    assert mock.wait_for(lambda r: r[-1].completed)
    assert mock.received[-1].chunks_sent == MIDSTREAM_ERROR_AFTER
    assert mock.received[-1].error_type == "throttlingException"


def test_midstream_model_stream_error_frame(mock: MockBedrock) -> None:
    text = "#chunks=5 #midstream_error #exception=ModelStreamErrorException"
    response = post_signed(mock, HAIKU, "converse-stream", {"messages": [user(text)]})

    assert response.status_code == 200
    frames = decode_frames(response.content)
    headers, payload = frames[-1]
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "modelStreamErrorException"
    assert headers[":content-type"] == "application/json"
    assert set(payload) == {"message", "originalStatusCode", "originalMessage"}
    assert all(h[":message-type"] == "event" for h, _ in frames[:-1])


def test_stream_frames_are_split_across_odd_writes(mock: MockBedrock) -> None:
    """Read the chunked transfer encoding off the socket: each chunk is one write of the mock."""
    body = json.dumps({"messages": [user("#chunks=3")]}).encode()
    url, headers = signed_request(mock, HAIKU, "converse-stream", body)
    path = url.removeprefix(mock.url)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{mock.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk

    status_line, _, rest = raw.partition(b"\r\n")
    assert b" 200 " in status_line
    response_head, _, chunked = rest.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in response_head.lower()
    sizes: list[int] = []
    data = b""
    while True:
        size_line, _, chunked = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data += chunked[:size]
        sizes.append(size)
        chunked = chunked[size + 2 :]

    assert sizes[0] == STREAM_WRITE_SIZES[0]
    assert max(sizes) <= max(STREAM_WRITE_SIZES)
    frames = decode_frames(data)
    assert len(sizes) > len(frames)
    boundaries = set(itertools.accumulate(sizes))
    frame_ends = set(itertools.accumulate(_frame_lengths(data)))
    assert boundaries - frame_ends, "some write should end inside a frame"
    assert [h[":event-type"] for h, _ in frames] == (
        ["messageStart"] + ["contentBlockDelta"] * 3 + ["contentBlockStop", "messageStop", "metadata"]
    )


def _frame_lengths(data: bytes) -> list[int]:
    lengths = []
    while data:
        length = int.from_bytes(data[:4], "big")
        lengths.append(length)
        data = data[length:]
    return lengths


def test_hang_then_client_hang_up_is_recorded(mock: MockBedrock) -> None:
    body = json.dumps({"messages": [user("#chunks=5 #hang")]}).encode()
    url, headers = signed_request(mock, HAIKU, "converse-stream", body)
    buffer = EventStreamBuffer()
    events: list[str] = []
    with httpx.Client(timeout=TIMEOUT) as http, http.stream("POST", url, content=body, headers=headers) as response:
        for chunk in response.iter_raw():
            buffer.add_data(chunk)
            events += [message.headers[":event-type"] for message in buffer]
            if "contentBlockDelta" in events:
                break
    assert events == ["messageStart", "contentBlockDelta"]
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=3)
    record = mock.received[-1]
    assert record.chunks_sent == 1 and not record.completed


def test_hang_without_stream_notices_the_hang_up(mock: MockBedrock) -> None:
    body = json.dumps({"messages": [user("hi #hang")]}).encode()
    url, headers = signed_request(mock, HAIKU, "converse", body)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, content=body, headers=headers, timeout=httpx.Timeout(5.0, read=0.3))
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=3)
    assert not mock.received[-1].completed


def test_unknown_operation_is_a_404(mock: MockBedrock) -> None:
    data = b"{}"
    url = f"{mock.url}/model/{quote(HAIKU, safe='')}/chat"
    request = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION).add_auth(request)
    response = httpx.post(url, content=data, headers=dict(request.headers.items()), timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.headers["x-amzn-ErrorType"].startswith("UnknownOperationException:")
    assert mock.received[-1].operation is None


# -- HTTP errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(STATUS_EXCEPTIONS))
def test_status_directive_answers_bedrock_exception(client: Any, mock: MockBedrock, status: int) -> None:
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=HAIKU, messages=[user(f"hi #status={status}")])
    code, http_status, _ = error_code(exc)
    assert (code, http_status) == (STATUS_EXCEPTIONS[status], status)
    assert mock.received[-1].error_type == STATUS_EXCEPTIONS[status]


def test_http_429_is_throttling_in_bedrock_error_shape(client: Any, mock: MockBedrock) -> None:
    with pytest.raises(ClientError) as exc:
        client.converse_stream(modelId=HAIKU, messages=[user("hi #status=429")])
    assert error_code(exc) == ("ThrottlingException", 429, "Too many requests, please wait before trying again.")

    raw = post_signed(mock, HAIKU, "converse", {"messages": [user("hi #status=429")]})
    assert raw.status_code == 429
    assert raw.json() == {"message": "Too many requests, please wait before trying again."}
    assert raw.headers["x-amzn-ErrorType"] == "ThrottlingException" + ERROR_TYPE_SUFFIX
    assert raw.headers["x-amzn-RequestId"]


def test_exception_directive_overrides_type(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=HAIKU, messages=[user("hi #status=429 #exception=ModelNotReadyException")])
    assert error_code(exc)[:2] == ("ModelNotReadyException", 429)


def test_model_error_carries_original_status(mock: MockBedrock) -> None:
    raw = post_signed(mock, HAIKU, "converse", {"messages": [user("#status=424")]})
    assert raw.status_code == 424
    assert {"message", "originalStatusCode", "resourceName"} <= set(raw.json())


# -- authentication ----------------------------------------------------------------------------


def test_wrong_secret_is_invalid_signature(mock: MockBedrock) -> None:
    with pytest.raises(ClientError) as exc:
        make_client(mock, aws_secret_access_key="not-the-secret").converse(modelId=HAIKU, messages=[user("hi")])
    assert error_code(exc) == ("InvalidSignatureException", 403, MSG_BAD_SIGNATURE)
    assert mock.received[-1].error_type == "InvalidSignatureException"


def test_wrong_region_is_refused(mock: MockBedrock) -> None:
    with pytest.raises(ClientError) as exc:
        make_client(mock, region_name="eu-central-1").converse(modelId=HAIKU, messages=[user("hi")])
    assert error_code(exc)[:2] == ("InvalidSignatureException", 403)


def test_wrong_access_key_is_unrecognized_client(mock: MockBedrock) -> None:
    with pytest.raises(ClientError) as exc:
        make_client(mock, aws_access_key_id="AKIAOTHER").converse(modelId=HAIKU, messages=[user("hi")])
    assert error_code(exc) == ("UnrecognizedClientException", 403, MSG_BAD_TOKEN)


def test_body_altered_after_signing_is_refused(mock: MockBedrock) -> None:
    signed_body = json.dumps({"messages": [user("hi")]}).encode()
    url, headers = signed_request(mock, HAIKU, "converse", signed_body)
    altered = json.dumps({"messages": [user("hI")]}).encode()

    refused = httpx.post(url, content=altered, headers=headers, timeout=TIMEOUT)
    assert refused.status_code == 403
    assert refused.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
    assert refused.json() == {"message": MSG_BAD_SIGNATURE}
    accepted = httpx.post(url, content=signed_body, headers=headers, timeout=TIMEOUT)
    assert accepted.status_code == 200


def test_wrong_service_in_signature_is_refused(mock: MockBedrock) -> None:
    body = json.dumps({"messages": [user("hi")]}).encode()
    url = f"{mock.url}/model/{quote(HAIKU, safe='')}/converse"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock-runtime", REGION).add_auth(request)
    response = httpx.post(url, content=body, headers=dict(request.headers.items()), timeout=TIMEOUT)
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")


def test_missing_authentication(mock: MockBedrock) -> None:
    url = f"{mock.url}/model/{quote(HAIKU, safe='')}/converse"
    response = httpx.post(url, json={"messages": [user("hi")]}, timeout=TIMEOUT)
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException:")


def test_bearer_api_key(mock: MockBedrock) -> None:
    url = f"{mock.url}/model/{quote(HAIKU, safe='')}/converse"
    body = {"messages": [user("hi")]}
    good = httpx.post(url, json=body, headers={"Authorization": f"Bearer {BEARER_TOKEN}"}, timeout=TIMEOUT)
    assert good.status_code == 200
    assert good.json()["output"]["message"]["content"] == [{"text": REPLY_PREFIX + "hi"}]
    bad = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
    assert bad.status_code == 403


def test_session_token_is_required_when_configured() -> None:
    with MockBedrock(ACCESS_KEY, SECRET_KEY, region=REGION, session_token="session-xyz") as scoped:
        good = make_client(scoped, aws_session_token="session-xyz").converse(modelId=HAIKU, messages=[user("hi")])
        assert good["stopReason"] == "end_turn"
        assert scoped.received[-1].headers["x-amz-security-token"] == "session-xyz"
        for token in (None, "session-other"):
            with pytest.raises(ClientError) as exc:
                make_client(scoped, aws_session_token=token).converse(modelId=HAIKU, messages=[user("hi")])
            assert error_code(exc)[:2] == ("UnrecognizedClientException", 403)


# -- validation ----------------------------------------------------------------------------------

TOOL_USE_TURN = {
    "role": "assistant",
    "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}],
}
TOOL_RESULT_TURN = {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "4"}]}}]}


@pytest.mark.parametrize(
    ("request_fields", "fragment"),
    [
        ({"messages": [user("a"), user("b")]}, "alternate between user and assistant"),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "must start with a user message"),
        ({"messages": [user("w"), TOOL_USE_TURN, TOOL_RESULT_TURN]}, "toolConfig field must be defined"),
        ({"messages": [user("hi")], "inferenceConfig": {"temperature": 1.5}}, "inferenceConfig.temperature"),
        ({"messages": [user("hi")], "inferenceConfig": {"topP": -0.1}}, "inferenceConfig.topP"),
        ({"messages": [user("hi")], "inferenceConfig": {"maxTokens": 0}}, "inferenceConfig.maxTokens"),
        ({"messages": [user("   ")]}, "is blank"),
        (
            {
                "messages": [user("hi")],
                "toolConfig": {"tools": [{"toolSpec": {"name": "bad name", "inputSchema": {"json": {}}}}]},
            },
            "regular expression pattern",
        ),
        (
            {"messages": [user("hi")], "toolConfig": {**TOOL_CONFIG, "toolChoice": {"auto": {}, "any": {}}}},
            "toolChoice",
        ),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": b"x"}}}]}]},
            "image.format",
        ),
    ],
)
def test_validation_errors(lax_client: Any, request_fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ClientError) as exc:
        lax_client.converse(modelId=HAIKU, **request_fields)
    code, status, message = error_code(exc)
    assert (code, status) == ("ValidationException", 400)
    assert fragment in message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [user("hi")], "temperatur": 0.5}, "extraneous key [temperatur]"),
        (
            {"messages": [{"role": "user", "content": [
                {"image": {"format": "png", "source": {"bytes": "!!not base64"}}}]}]},
            "not valid base64",
        ),
        (
            {
                "messages": [user("w"), TOOL_USE_TURN, {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_unknown", "content": [{"text": "4"}]}}]}],
                "toolConfig": TOOL_CONFIG,
            },
            "tooluse_unknown",
        ),
        ({"messages": [{"role": "system", "content": [{"text": "hi"}]}]}, "enum value set"),
        ({"messages": [TOOL_RESULT_TURN], "toolConfig": TOOL_CONFIG}, "exceeds the number of toolUse blocks"),
        (
            {"messages": [user("w"), TOOL_USE_TURN, user("and?")], "toolConfig": TOOL_CONFIG},
            "Expected toolResult blocks at messages.2.content for the following Ids: tooluse_1",
        ),
        ({"messages": [user("#chunks=x")]}, "#chunks"),
    ],
)
def test_validation_errors_botocore_would_not_send(mock: MockBedrock, body: dict[str, Any], fragment: str) -> None:
    response = post_signed(mock, HAIKU, "converse", body)
    assert response.status_code == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationException" + ERROR_TYPE_SUFFIX
    assert fragment in response.json()["message"]


def test_valid_image_and_tool_history_pass(client: Any) -> None:
    image = {"image": {"format": "png", "source": {"bytes": b"\x89PNG\r\n\x1a\n"}}}
    messages = [{"role": "user", "content": [{"text": "look"}, image]}, TOOL_USE_TURN, TOOL_RESULT_TURN]
    response = client.converse(modelId=HAIKU, messages=messages, toolConfig=TOOL_CONFIG)
    assert response["output"]["message"]["content"] == [{"text": TOOL_RESULT_PREFIX + "4"}]


def test_converse_conversation_is_the_neutral_view() -> None:
    body = {
        "system": [{"text": "Be terse."}, {"text": "Be kind."}],
        "messages": [user("w #tools"), TOOL_USE_TURN, TOOL_RESULT_TURN],
        "toolConfig": TOOL_CONFIG,
        "inferenceConfig": {"maxTokens": 9, "stopSequences": ["END"]},
    }
    assert converse_conversation(body) == Conversation(
        texts=["Be terse. Be kind.", "w #tools", "", "4"],
        last_user_text="w #tools",
        tool_results=["4"],
        tool_names=["get_weather"],
        max_tokens=9,
        stop=["END"],
    )


# -- InvokeModel embeddings ----------------------------------------------------------------------


def test_titan_embeddings(client: Any) -> None:
    text = "embed these three"
    response = client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": text, "dimensions": 512}))
    answer = json.loads(response["body"].read())
    assert answer["embedding"] == pytest.approx(embedding_vector(text, 512))
    assert answer["embeddingsByType"]["float"] == answer["embedding"]
    assert answer["inputTextTokenCount"] == 3
    assert response["ResponseMetadata"]["HTTPHeaders"][INPUT_TOKEN_HEADER.lower()] == "3"
    assert response["contentType"] == "application/json"

    default = json.loads(client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": "x"}))["body"].read())
    assert len(default["embedding"]) == TITAN_DEFAULT_DIMENSIONS

    with pytest.raises(ClientError) as exc:
        client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": "x", "dimensions": 100}))
    assert error_code(exc)[:2] == ("ValidationException", 400)


def test_cohere_embeddings(client: Any, mock: MockBedrock) -> None:
    texts = ["first text", "the second one"]
    body = {"texts": texts, "input_type": "search_document"}
    response = client.invoke_model(modelId=COHERE, body=json.dumps(body))
    answer = json.loads(response["body"].read())
    assert answer["response_type"] == "embeddings_floats"
    assert answer["texts"] == texts
    assert answer["embeddings"] == [pytest.approx(embedding_vector(t, COHERE_DIMENSIONS)) for t in texts]
    assert response["ResponseMetadata"]["HTTPHeaders"][INPUT_TOKEN_HEADER.lower()] == "5"
    assert mock.received[-1].usage == {"inputTokens": 5}
    assert mock.received[-1].operation == "invoke"

    typed_body = json.dumps({**body, "embedding_types": ["float", "int8"]})
    typed = json.loads(client.invoke_model(modelId=COHERE, body=typed_body)["body"].read())
    assert typed["response_type"] == "embeddings_by_type"
    assert set(typed["embeddings"]) == {"float", "int8"}
    assert len(typed["embeddings"]["int8"][0]) == COHERE_DIMENSIONS

    with pytest.raises(ClientError) as exc:
        client.invoke_model(modelId=COHERE, body=json.dumps({"texts": texts}))
    assert error_code(exc)[0] == "ValidationException"
    assert "input_type" in error_code(exc)[2]


def test_embedding_status_directive(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": "hello #status=429"}))
    assert error_code(exc)[:2] == ("ThrottlingException", 429)


def test_wrong_operation_for_model_kind(client: Any) -> None:
    with pytest.raises(ClientError) as exc:
        client.invoke_model(modelId=HAIKU, body=json.dumps({"inputText": "x"}))
    assert error_code(exc)[:2] == ("ValidationException", 400)
    with pytest.raises(ClientError) as exc:
        client.converse(modelId=TITAN, messages=[user("hi")])
    assert error_code(exc)[:2] == ("ValidationException", 400)


# -- standalone ----------------------------------------------------------------------------------


def test_standalone_main_serves() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.mocks.bedrock", "--port", str(port), "--access-key", ACCESS_KEY,
               "--secret-key", SECRET_KEY, "--region", REGION]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "standalone mock did not start"
                time.sleep(0.05)
        response = make_client(f"http://127.0.0.1:{port}").converse(modelId=HAIKU, messages=[user("hi")])
        assert response["output"]["message"]["content"] == [{"text": REPLY_PREFIX + "hi"}]
    finally:
        process.terminate()
        process.wait(timeout=5)
