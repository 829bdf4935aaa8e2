"""Generated request bodies against a running gateway: whatever a client sends, the answer is a
success or a client error in the client's error shape, never a server error of the gateway's own.

The corpus (``test_hostile_inputs.py``) pins the cases someone thought of; these properties look
for the ones nobody did, on the chat, embeddings, Responses and Messages routes: valid requests
(which must be served, so the validation refuses nothing it should take), valid requests with
random values in their fields or with values deep inside replaced, removed or added, any JSON
value, and random bytes (always a 400, decided without an upstream call). The only 5xx allowed
are the documented upstream conditions (502, 503, 504), which the mocks produce only on
directives, so generated text never holds the directive mark ``#``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .test_hostile_inputs import TRACEBACK_MARKS, error_of, upstream_calls

CHAT = "/ai/v1/chat/completions"
EMBEDDINGS = "/ai/v1/embeddings"
RESPONSES = "/ai/v1/responses"
MESSAGES = "/ai/v1/messages"
COUNT_TOKENS = "/ai/v1/messages/count_tokens"
ROUTES = [CHAT, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS]
# Upstream conditions a client may meet (ProviderError, NoWorker/Overloaded/Unavailable, UpstreamTimeout).
UPSTREAM_STATUSES = {502, 503, 504}

EXAMPLES = 20
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- values -----------------------------------------------------------------------------------------

# Text of valid requests: no lone surrogates (JSON can only escape them, and the gateway refuses them).
CHARACTERS = st.characters(blacklist_characters="#", blacklist_categories=("Cs",))
TEXT = st.text(CHARACTERS, max_size=24)
WORDS = st.text(CHARACTERS, min_size=1, max_size=24)
KEYS = st.text(CHARACTERS, max_size=10)
# Text of anything-goes values: lone surrogates included.
ANY_TEXT = st.text(st.characters(blacklist_characters="#"), max_size=24)
INTEGERS = st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31), st.integers())
SCALARS = st.one_of(st.none(), st.booleans(), INTEGERS, st.floats(allow_nan=False, allow_infinity=False), ANY_TEXT)


def json_values(scalars: st.SearchStrategy, keys: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=4)), max_leaves=10)


JSON = json_values(SCALARS, ANY_TEXT)
# What a valid request may carry in a field the gateway does not model: any JSON within the limits.
FITTING_JSON = json_values(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                                     st.floats(allow_nan=False, allow_infinity=False), TEXT), KEYS)
TOOL_NAME = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
SCHEMA = st.just({"type": "object", "properties": {"city": {"type": "string"}}})
TOKEN_IDS = st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=4)


def optional(**fields: st.SearchStrategy) -> dict[str, st.SearchStrategy]:
    return fields


# -- valid requests, one strategy per route ---------------------------------------------------------

CHAT_USER = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(TEXT, st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": WORDS}, optional={"detail": st.sampled_from(["auto", "low", "high"])})})), min_size=1, max_size=3))},
    optional={"name": WORDS})
CHAT_OTHER = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "assistant"]), "content": TEXT}),
    st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": st.lists(st.fixed_dictionaries(
        {"id": WORDS, "type": st.just("function"),
         "function": st.fixed_dictionaries({"name": TOOL_NAME, "arguments": st.just("{}")})}), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": WORDS, "content": TEXT}),
)


@st.composite
def chat_bodies(draw) -> dict[str, Any]:
    body = draw(st.fixed_dictionaries(
        {"model": st.just("mock-local"),
         "messages": st.tuples(st.lists(CHAT_OTHER, max_size=2), CHAT_USER).map(lambda t: [*t[0], t[1]])},
        optional=optional(
            temperature=st.floats(0, 2), top_p=st.floats(0, 1), max_tokens=st.integers(1, 2**31 - 1),
            max_completion_tokens=st.integers(1, 64), stop=st.one_of(TEXT, st.lists(TEXT, max_size=4)),
            n=st.integers(1, 128), stream=st.booleans(), seed=st.integers(-(2**63), 2**63 - 1), user=TEXT,
            response_format=st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
            presence_penalty=st.floats(-2, 2), frequency_penalty=st.floats(-2, 2), logprobs=st.booleans(),
            top_logprobs=st.integers(0, 20), parallel_tool_calls=st.booleans(),
            tools=st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
                {"name": TOOL_NAME}, optional={"description": TEXT, "parameters": SCHEMA, "strict": st.booleans()})}),
                min_size=1, max_size=2),
            x_unmodelled=FITTING_JSON)))
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    if body.get("tools") and draw(st.booleans()):
        body["tool_choice"] = draw(st.one_of(st.sampled_from(["none", "auto", "required"]), st.just(
            {"type": "function", "function": {"name": body["tools"][0]["function"]["name"]}})))
    return body


EMBEDDINGS_BODY = st.fixed_dictionaries(
    {"model": st.just("mock-embed"),
     "input": st.one_of(WORDS, st.lists(WORDS, min_size=1, max_size=3), TOKEN_IDS,
                        st.lists(TOKEN_IDS, min_size=1, max_size=3))},
    optional=optional(encoding_format=st.sampled_from(["float", "base64"]), dimensions=st.integers(1, 16), user=TEXT))

RESPONSES_USER = st.fixed_dictionaries(
    {"role": st.just("user"), "content": st.one_of(TEXT, st.lists(st.one_of(
        st.fixed_dictionaries({"type": st.just("input_text"), "text": TEXT}),
        st.fixed_dictionaries({"type": st.just("input_image"), "image_url": WORDS},
                              optional={"detail": st.sampled_from(["auto", "low", "high"])})), min_size=1, max_size=3))},
    optional={"type": st.just("message")})
RESPONSES_OTHER = st.one_of(
    st.fixed_dictionaries({"type": st.just("message"), "role": st.sampled_from(["assistant", "system", "developer"]),
                           "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries(
                               {"type": st.just("output_text"), "text": TEXT}), min_size=1, max_size=2))}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": WORDS, "name": TOOL_NAME,
                           "arguments": st.just("{}")}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": WORDS, "output": TEXT}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "summary": st.just([])}),
)


@st.composite
def responses_bodies(draw) -> dict[str, Any]:
    body = draw(st.fixed_dictionaries(
        {"model": st.just("mock-local"),
         "input": st.one_of(TEXT, st.tuples(st.lists(RESPONSES_OTHER, max_size=2), RESPONSES_USER)
                            .map(lambda t: [*t[0], t[1]])),
         "store": st.just(False)},
        optional=optional(
            instructions=TEXT, max_output_tokens=st.integers(1, 2**31 - 1), temperature=st.floats(0, 2),
            top_p=st.floats(0, 1), parallel_tool_calls=st.booleans(), user=TEXT, stream=st.booleans(),
            metadata=st.dictionaries(KEYS, TEXT, max_size=2), reasoning=st.just({"effort": "low"}),
            text=st.fixed_dictionaries({"format": st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object"])})}),
            tools=st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": TOOL_NAME},
                                                 optional={"description": TEXT, "parameters": SCHEMA}),
                           min_size=1, max_size=2))))
    if body.get("tools") and draw(st.booleans()):
        body["tool_choice"] = draw(st.one_of(st.sampled_from(["none", "auto", "required"]),
                                             st.just({"type": "function", "name": body["tools"][0]["name"]})))
    return body


ANTHROPIC_USER = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(TEXT, st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("image"), "source": st.one_of(
        st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"), "data": WORDS}),
        st.fixed_dictionaries({"type": st.just("url"), "url": WORDS}))}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": WORDS},
                          optional={"content": TEXT, "is_error": st.booleans()})), max_size=3))})
ANTHROPIC_ASSISTANT = st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(TEXT, st.lists(
    st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
              st.fixed_dictionaries({"type": st.just("tool_use"), "id": WORDS, "name": TOOL_NAME,
                                     "input": st.dictionaries(KEYS, TEXT, max_size=2)}),
              st.fixed_dictionaries({"type": st.just("thinking"), "thinking": TEXT})), max_size=2))})


@st.composite
def messages_bodies(draw) -> dict[str, Any]:
    turns = draw(st.lists(st.tuples(ANTHROPIC_USER, ANTHROPIC_ASSISTANT), max_size=2))
    body = draw(st.fixed_dictionaries(
        {"model": st.just("mock-local"), "max_tokens": st.integers(1, 2**31 - 1)},
        optional=optional(
            system=st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                                            max_size=2)),
            temperature=st.floats(0, 1), top_p=st.floats(0, 1), top_k=st.integers(0, 500),
            stop_sequences=st.lists(TEXT, max_size=4), stream=st.booleans(),
            metadata=st.fixed_dictionaries({"user_id": st.text(CHARACTERS, max_size=100)}), thinking=FITTING_JSON,
            tools=st.lists(st.fixed_dictionaries({"name": TOOL_NAME}, optional={"description": TEXT,
                                                                                "input_schema": SCHEMA}),
                           min_size=1, max_size=2))))
    body["messages"] = [message for turn in turns for message in turn] + [draw(ANTHROPIC_USER)]
    if body.get("tools") and draw(st.booleans()):
        body["tool_choice"] = draw(st.one_of(st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "none"])}, optional={"disable_parallel_tool_use": st.booleans()}),
            st.just({"type": "tool", "name": body["tools"][0]["name"]})))
    return body


VALID = {CHAT: chat_bodies(), EMBEDDINGS: EMBEDDINGS_BODY, RESPONSES: responses_bodies(), MESSAGES: messages_bodies(),
         COUNT_TOKENS: messages_bodies()}


# -- ways to spoil them ------------------------------------------------------------------------------


@st.composite
def random_fields(draw, valid: st.SearchStrategy) -> dict[str, Any]:
    """A valid body whose top-level fields each may hold any JSON value instead, plus unknown fields."""
    body = copy.deepcopy(draw(valid))  # strategies may hand out the same object twice
    for key in list(body):
        if draw(st.integers(0, 2)) == 0:
            body[key] = draw(JSON)
    body.update(draw(st.dictionaries(ANY_TEXT, JSON, max_size=2)))
    return body


@st.composite
def mutated(draw, valid: st.SearchStrategy) -> Any:
    """A valid body with one to three values somewhere inside replaced, removed or added."""
    body = copy.deepcopy(draw(valid))  # strategies may hand out the same object twice
    for _ in range(draw(st.integers(1, 3))):
        containers: list[dict | list] = []
        stack: list[Any] = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, (dict, list)):
                containers.append(node)
                stack.extend(node.values() if isinstance(node, dict) else node)
        target = draw(st.sampled_from(containers))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = draw(st.sampled_from(["replace", "remove", "add"]) if keys else st.just("add"))
        if action == "add":
            if isinstance(target, dict):
                target[draw(ANY_TEXT)] = draw(JSON)
            else:
                target.append(draw(JSON))
        elif action == "remove":
            del target[draw(st.sampled_from(keys))]
        else:
            target[draw(st.sampled_from(keys))] = draw(JSON)
    return body


# -- the properties ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(gateway) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {gateway.token('user_properties')}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gateway.url, timeout=30, headers=headers) as http:
        yield http


def send(client: httpx.Client, path: str, content: bytes) -> httpx.Response:
    """Send ``content`` to ``path`` and check what holds for any body: success, or a client error in
    the caller's shape, or one of the documented upstream statuses; never a traceback."""
    response = client.post(path, content=content)
    event(f"status {response.status_code}")
    where = f"{path} {content[:300]!r} -> {response.status_code} {response.text[:300]!r}"
    assert response.status_code < 500 or response.status_code in UPSTREAM_STATUSES, where
    assert not any(mark in response.content for mark in TRACEBACK_MARKS), where
    if response.status_code >= 400:
        error_of(path, response)
    return response


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


@pytest.mark.parametrize("path", ROUTES)
@SETTINGS
@given(data=st.data())
def test_valid_bodies_are_served(client, path, data):
    body = encode(data.draw(VALID[path], label="body"))
    response = send(client, path, body)
    assert response.status_code == 200, f"{body[:500]!r} -> {response.text[:500]}"


@pytest.mark.parametrize("path", ROUTES)
@SETTINGS
@given(data=st.data())
def test_random_field_values(client, path, data):
    send(client, path, encode(data.draw(random_fields(VALID[path]), label="body")))


@pytest.mark.parametrize("path", ROUTES)
@SETTINGS
@given(data=st.data())
def test_mutated_bodies(client, path, data):
    send(client, path, encode(data.draw(mutated(VALID[path]), label="body")))


@pytest.mark.parametrize("path", ROUTES)
@settings(SETTINGS, max_examples=EXAMPLES // 2)
@given(value=st.one_of(JSON, st.dictionaries(ANY_TEXT, JSON, max_size=6)))
def test_any_json_value(client, path, value):
    send(client, path, encode(value))


@pytest.mark.parametrize("path", ROUTES)
@settings(SETTINGS, max_examples=EXAMPLES // 2)
@given(raw=st.binary(max_size=64))
def test_random_bytes_are_refused_at_the_front_door(client, path, raw, openrouter_mock, local_mock):
    before = upstream_calls(openrouter_mock, local_mock)
    response = send(client, path, raw)
    assert response.status_code == 400, response.text
    assert upstream_calls(openrouter_mock, local_mock) == before
