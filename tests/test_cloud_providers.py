"""What only Bedrock or only Azure does, through a real gateway: their errors, their quirks, their wire.

The shared contract is in tests/test_conformance.py; here each provider's own behaviour: every
Bedrock exception type and where it surfaces, images and embeddings batching on Bedrock, Azure's
content filter, annotations, URL styles, key header and rate-limit hint.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .gateway_proc import RunningGateway

BEDROCK_CHAT = "conf-bedrock"
FOUNDRY_CHAT = "conf-foundry"
FOUNDRY_DEPLOYMENT_CHAT = "conf-foundry-deployment"
# A 1x1 transparent PNG.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def gw(cloud_gateway) -> RunningGateway:
    return cloud_gateway


@pytest.fixture(scope="module")
def client(gw) -> openai.OpenAI:
    return gw.client()


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _sse_events(gw: RunningGateway, body: dict) -> list[dict]:
    """The data events of a streamed answer, as sent (an error event included)."""
    events = []
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json={**body, "stream": True}, timeout=20,
                      headers={"Authorization": f"Bearer {gw.token()}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


# --- Bedrock -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("directive", "exception", "status", "code"), [
    ("#status=429", "ThrottlingException", 429, "rate_limit_exceeded"),
    ("#status=429 #exception=ModelNotReadyException", "ModelNotReadyException", 429, "rate_limit_exceeded"),
    ("#status=400", "ValidationException", 400, "provider_error"),
    ("#status=403", "AccessDeniedException", 403, "provider_access_denied"),
    ("#status=408", "ModelTimeoutException", 504, "upstream_timeout"),
    ("#status=424", "ModelErrorException", 502, "provider_error"),
    ("#status=500", "InternalServerException", 502, "provider_error"),
    ("#status=503", "ServiceUnavailableException", 503, "provider_error"),
])
def test_bedrock_exceptions_map_to_openai_errors(gw, directive: str, exception: str, status: int, code: str) -> None:
    response = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {gw.token()}"},
                          json={"model": BEDROCK_CHAT, "messages": _ask(directive)}, timeout=20)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"Upstream bedrock returned {exception}: ")
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("exception", ["ThrottlingException", "ModelStreamErrorException", "ValidationException",
                                       "ServiceUnavailableException"])
def test_bedrock_exception_frame_mid_stream_ends_with_an_error_event(gw, bedrock_mock, exception: str) -> None:
    events = _sse_events(gw, {"model": BEDROCK_CHAT, "messages": _ask(f"#chunks=6 #midstream_error #exception={exception}")})

    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text == "tok0 tok1 "
    # Part of the answer went out: nothing is retried, and the code says the answer is cut short.
    assert "error" in events[-1]
    assert events[-1]["error"]["code"] == "incomplete_response"
    assert exception in events[-1]["error"]["message"]


def test_bedrock_image_data_url_reaches_converse_as_an_image_block(client, bedrock_mock) -> None:
    bedrock_mock.reset()
    reply = client.chat.completions.create(model=BEDROCK_CHAT, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}])

    assert reply.choices[0].message.content == "Hello from mock: what is this"
    blocks = bedrock_mock.received[-1].body["messages"][0]["content"]
    assert {"image": {"format": "png", "source": {"bytes": PNG}}} in blocks


def test_bedrock_image_by_url_is_refused_before_the_upstream(client, bedrock_mock) -> None:
    bedrock_mock.reset()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=BEDROCK_CHAT, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])

    assert "data:" in info.value.body["message"]
    assert bedrock_mock.received == []


def test_bedrock_sends_tools_and_tool_choice_to_converse(client, bedrock_mock) -> None:
    bedrock_mock.reset()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    client.chat.completions.create(model=BEDROCK_CHAT, messages=_ask("#tools"), tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "lookup"}})

    config = bedrock_mock.received[-1].body["toolConfig"]
    assert config["tools"][0]["toolSpec"]["name"] == "lookup"
    assert config["toolChoice"] == {"tool": {"name": "lookup"}}


def test_cohere_embeddings_are_sent_in_batches_of_96(client, bedrock_mock) -> None:
    bedrock_mock.reset()
    texts = [f"text number {i}" for i in range(100)]

    result = client.embeddings.create(model="conf-embed-cohere", input=texts, encoding_format="float")

    assert [d.index for d in result.data] == list(range(100))
    assert [len(r.body["texts"]) for r in bedrock_mock.received] == [96, 4]
    assert result.usage.prompt_tokens == 300


def test_titan_dimensions_native_or_shortened_here(client, bedrock_mock) -> None:
    bedrock_mock.reset()
    native = client.embeddings.create(model="conf-embed-titan", input="hello", dimensions=256, encoding_format="float")
    shortened = client.embeddings.create(model="conf-embed-titan", input="hello", dimensions=100,
                                         encoding_format="float")

    assert len(native.data[0].embedding) == 256
    assert len(shortened.data[0].embedding) == 100
    assert [r.body.get("dimensions") for r in bedrock_mock.received] == [256, None]


def test_bedrock_model_id_is_one_encoded_path_segment(bedrock_mock, client) -> None:
    bedrock_mock.reset()
    client.chat.completions.create(model=BEDROCK_CHAT, messages=_ask("hi"))

    record = bedrock_mock.received[-1]
    assert record.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert record.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAMOCKCONFORMANCE1/")
    assert "/eu-central-1/bedrock/aws4_request" in record.headers["authorization"]


# --- Azure Foundry -----------------------------------------------------------------------------------


def test_azure_prompt_filter_is_a_400_naming_the_category(gw) -> None:
    response = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {gw.token()}"},
                          json={"model": FOUNDRY_CHAT, "messages": _ask("#status=400 #exception=content_filter")},
                          timeout=20)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_filter"
    assert "hate (high)" in error["message"]
    assert error["type"] == "provider_error"


@pytest.mark.parametrize("model", [FOUNDRY_CHAT, FOUNDRY_DEPLOYMENT_CHAT])
def test_azure_output_filter_finishes_with_content_filter(client, model: str) -> None:
    plain = client.chat.completions.create(model=model, messages=_ask("tell me a story #exception=content_filter"))
    chunks = list(client.chat.completions.create(model=model, messages=_ask("tell me a story #exception=content_filter"),
                                                 stream=True))

    assert plain.choices[0].finish_reason == "content_filter"
    assert plain.choices[0].message.content == "Hello from "  # the two pieces sent before the filter
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["content_filter"]


@pytest.mark.parametrize("model", [FOUNDRY_CHAT, FOUNDRY_DEPLOYMENT_CHAT])
def test_azure_annotations_and_empty_first_chunk_never_reach_the_client(gw, model: str) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}"}
    plain = httpx.post(f"{gw.base_url}/chat/completions", headers=headers, timeout=20,
                       json={"model": model, "messages": _ask("hello")}).json()
    events = _sse_events(gw, {"model": model, "messages": _ask("hello"), "stream_options": {"include_usage": True}})

    assert "prompt_filter_results" not in plain
    assert "content_filter_results" not in plain["choices"][0]
    for event in events:
        assert event["id"].startswith("chatcmpl-") and event["model"] == model
        assert "prompt_filter_results" not in event
        assert all("content_filter_results" not in c for c in event["choices"])
    assert all(e["choices"] for e in events[:-1]) and events[-1]["choices"] == [] and events[-1]["usage"]


def test_azure_rate_limit_passes_its_retry_after_on(client) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=FOUNDRY_CHAT, messages=_ask("#status=429"))

    assert info.value.response.headers["retry-after"] == "6"


def test_azure_request_styles_key_header_and_api_version(client, azure_mock) -> None:
    azure_mock.reset()
    client.chat.completions.create(model=FOUNDRY_CHAT, messages=_ask("hi"))
    client.chat.completions.create(model=FOUNDRY_DEPLOYMENT_CHAT, messages=_ask("hi"))

    v1, deployment = azure_mock.received[-2:]
    assert (v1.style, v1.path, v1.body["model"]) == ("v1", "/openai/v1/chat/completions", "gpt-4o-mini")
    assert (deployment.style, deployment.deployment) == ("deployment", "gpt-4o")
    assert deployment.query["api-version"] == "2024-10-21"
    for record in (v1, deployment):
        assert record.headers["api-key"] == "azure-conformance-key-0123"
        assert "authorization" not in record.headers


def test_azure_unknown_deployment_names_the_model_problem(gw) -> None:
    response = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {gw.token()}"},
                          json={"model": "conf-foundry-missing", "messages": _ask("hi")}, timeout=20)

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "deployment" in error["message"]
