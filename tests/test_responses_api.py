"""The OpenAI Responses API (``/ai/v1/responses``), driven by the official ``openai`` SDK.

The surface translates to chat completions and back, so the answers are the mocks' scripted ones
(``tests/mocks/script.py``): plain and streamed text, the SDK's stream helper, a full function
tool round trip with parallel calls, conversations continued with ``previous_response_id``,
stored responses and who may read them, the ``max_output_tokens`` cut, errors before and after
the stream starts, the usage recorded for the bill, and every provider through ``cloud_gateway``.
The first tests drive the response builder directly with chunk sequences no mock sends
(interleaved parallel calls, text after calls, a usage-only chunk first).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from api.responses import ResponseBuilder, ResponsesRequest, chat_body, input_items, response_skeleton
from shared.errors import InvalidRequest

from .cloud import CASES, Case
from .mocks.script import CITIES, REPLY_PREFIX, TOOL_RESULT_PREFIX

MODEL = "mock-local"
IDS = [c.chat_model for c in CASES]

TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": False,
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"type": "function", "name": "get_time", "description": "Local time in a city", "strict": False,
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]
EXPECTED_RESULTS = TOOL_RESULT_PREFIX + "get_weather ok 0; get_time ok 1"

TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


# --- helpers ---------------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream; each frame's ``event:`` line must name its data's type."""
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def check_items_do_not_interleave(events: list[dict[str, Any]]) -> None:
    """Between an item's ``added`` and ``done`` every event belongs to that item; indexes count from 0."""
    open_index = None
    added = []
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_index is None
            open_index = event["output_index"]
            added.append(open_index)
        elif kind == "response.output_item.done":
            assert event["output_index"] == open_index
            open_index = None
        elif "output_index" in event:
            assert event["output_index"] == open_index, event
    assert open_index is None
    assert added == list(range(len(added)))


def stream_raw(gw, body: dict[str, Any], user: str = "user_test") -> list[dict[str, Any]]:
    response = httpx.post(f"{gw.base_url}/responses", json={**body, "stream": True}, timeout=20,
                          headers={"Authorization": f"Bearer {gw.token(user)}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in response.content
    return parse_sse(response.content)


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def sent_upstream(mock, marker: str):
    """The last chat request the mock received whose last message mentions ``marker``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for record in reversed(list(mock.received)):
            messages = (record.body or {}).get("messages") or []
            if messages and marker in text_of(messages[-1]):
                return record
        time.sleep(0.05)
    raise AssertionError(f"the mock received no request mentioning {marker!r}")


def events_for(gw, request_id: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in gw.usage_events() if e["properties"]["request_id"] == request_id]
        if found:
            return found
        time.sleep(0.05)
    return []


def check_calls(calls) -> None:
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": CITIES[0]}, {"city": CITIES[1]}]
    assert all(c.type == "function_call" and c.call_id and c.id.startswith("fc_") for c in calls)
    assert len({c.call_id for c in calls}) == 2


def outputs_for(calls) -> list[dict[str, Any]]:
    return [{"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name} ok {i}"}
            for i, c in enumerate(calls)]


# --- the builder, fed directly ----------------------------------------------------------------------


def builder() -> ResponseBuilder:
    req = ResponsesRequest(model="m", input="hi")
    b = ResponseBuilder(response_skeleton(req, "resp_x", 1, "m"), "x")
    b.start()
    return b


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage}


def call(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    head = {"id": call_id, "type": "function"} if call_id else {}
    return {"tool_calls": [{"index": index, **head, "function": {**({"name": name} if name else {}),
                                                                 "arguments": arguments}}]}


def test_interleaved_parallel_calls_come_out_one_item_after_the_other() -> None:
    b = builder()
    for c in [chunk({"role": "assistant", "content": ""}), chunk({"content": "Checking."}),
              chunk(call(0, "", "call_a", "get_weather")), chunk(call(1, "", "call_b", "get_time")),
              chunk(call(0, '{"city":')), chunk(call(1, '{"city": "Paris"}')), chunk(call(0, ' "Oslo"}')),
              chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})]:
        b.feed(c)
    response = b.finish()
    b.terminal(response)
    events = parse_sse(b.take())

    check_items_do_not_interleave(events)
    assert [e["type"] for e in events][-1] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in done] == ["message", "function_call", "function_call"]
    assert [(i.get("call_id"), i.get("arguments")) for i in done[1:]] == [
        ("call_a", '{"city": "Oslo"}'), ("call_b", '{"city": "Paris"}')]
    for index, item in ((1, done[1]), (2, done[2])):
        deltas = [e["delta"] for e in events
                  if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == index]
        assert "".join(deltas) == item["arguments"]
    assert response["output"] == done
    assert response["usage"]["input_tokens"] == 9 and response["usage"]["output_tokens"] == 4
    assert response["usage"]["total_tokens"] == 13


def test_text_after_calls_is_a_second_message_and_never_repeated() -> None:
    b = builder()
    for c in [chunk({"content": "Let me "}), chunk({"content": "look."}), chunk(call(0, '{"a": 1}', "c1", "f")),
              chunk({"content": "Done "}), chunk({"content": "now."}), chunk({}, "stop")]:
        b.feed(c)
    response = b.finish()
    events = parse_sse(b.take())

    check_items_do_not_interleave(events)
    assert [i["type"] for i in response["output"]] == ["message", "function_call", "message"]
    texts = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(texts) == "Let me look.Done now."
    assert [e["text"] for e in events if e["type"] == "response.output_text.done"] == ["Let me look.", "Done now."]


def test_usage_only_chunk_emits_no_output_and_an_empty_answer_is_an_empty_message() -> None:
    b = builder()
    b.feed(chunk(usage={"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}))
    assert parse_sse(b.take())[2:] == []  # only created and in_progress

    response = b.finish()
    assert response["status"] == "completed"
    assert response["output"][0]["content"] == [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]
    assert response["usage"]["input_tokens"] == 3


def test_length_finish_makes_the_response_incomplete() -> None:
    b = builder()
    b.feed(chunk({"content": "tok0 "}))
    b.feed(chunk({}, "length"))
    response = b.finish()
    b.terminal(response)
    events = parse_sse(b.take())

    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert events[-1]["type"] == "response.incomplete"


def test_conversation_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "input_text", "text": "Weather?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "4C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
    ]
    req = ResponsesRequest(model="m", input=items, instructions="Sys.", tools=TOOLS,
                           tool_choice={"type": "function", "name": "get_time"}, max_output_tokens=7,
                           text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                                            "strict": True}},
                           reasoning={"effort": "low"}, stream=True)
    body = chat_body(req, input_items(req.input))

    assert body["messages"] == [
        {"role": "system", "content": "Sys."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": TOOLS[0]["parameters"],
        "strict": False}}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert body["max_completion_tokens"] == 7
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "w", "schema": {"type": "object"}, "strict": True}}
    assert body["reasoning_effort"] == "low"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("request_fields, param", [
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"type": "message", "role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].image_url"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
    ({"input": []}, "input"),
])
def test_untranslatable_requests_name_the_field(request_fields: dict, param: str) -> None:
    req = ResponsesRequest(model="m", **request_fields)
    with pytest.raises(InvalidRequest) as info:
        chat_body(req, input_items(req.input))
    assert info.value.param == param


# --- text ------------------------------------------------------------------------------------------


def test_create_text(gateway, local_mock) -> None:
    response = gateway.client().responses.create(model=MODEL, input="plain text question")

    assert response.output_text == REPLY_PREFIX + "plain text question"
    assert response.status == "completed" and response.object == "response"
    assert response.id.startswith("resp_") and response.model == MODEL
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    reported = sent_upstream(local_mock, "plain text question").usage
    assert response.usage.input_tokens == reported["prompt_tokens"]
    assert response.usage.output_tokens == reported["completion_tokens"]
    assert response.usage.total_tokens == reported["prompt_tokens"] + reported["completion_tokens"]
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_request_fields_reach_the_upstream_translated(gateway, local_mock) -> None:
    response = gateway.client().responses.create(
        model=MODEL, instructions="You are terse.", temperature=0.3, top_p=0.9, max_output_tokens=50,
        user="end-user-1", metadata={"ticket": "42"}, reasoning={"effort": "low"},
        text={"format": {"type": "json_object"}}, parallel_tool_calls=False, tools=TOOLS, tool_choice="auto",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "fields check"},
                                            {"type": "input_image", "image_url": "https://example.com/a.png"}]}])

    body = sent_upstream(local_mock, "fields check").body
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["max_completion_tokens"] == 50
    assert body["user"] == "end-user-1" and body["reasoning_effort"] == "low"
    assert body["response_format"] == {"type": "json_object"} and body["parallel_tool_calls"] is False
    assert body["tools"][1]["function"]["name"] == "get_time" and body["tool_choice"] == "auto"
    # Echoed on the response as the Responses API does.
    assert response.instructions == "You are terse." and response.metadata == {"ticket": "42"}
    assert response.max_output_tokens == 50 and response.text.format.type == "json_object"
    assert [t.name for t in response.tools] == ["get_weather", "get_time"]


def test_stream_events_in_order(gateway) -> None:
    events = stream_raw(gateway, {"model": MODEL, "input": "#chunks=4"})

    kinds = [e["type"] for e in events]
    assert kinds == [*TEXT_EVENTS, *["response.output_text.delta"] * 4, *TEXT_END_EVENTS, "response.completed"]
    check_items_do_not_interleave(events)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "tok0 tok1 tok2 tok3 "
    created, final = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert final["id"] == created["id"] and {e["response"]["id"] for e in events[:2]} == {created["id"]}
    assert final["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 tok3 "
    assert final["usage"]["output_tokens"] == 4


def test_stream_with_the_sdk_helper(gateway) -> None:
    client = gateway.client()
    with client.responses.stream(model=MODEL, input="helper stream please") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert final.output_text == REPLY_PREFIX + "helper stream please"
    assert final.status == "completed" and final.usage.output_tokens == len(final.output_text.split())
    assert kinds[:4] == TEXT_EVENTS and kinds[-1] == "response.completed"

    events = list(client.responses.create(model=MODEL, input="iterated stream", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == REPLY_PREFIX + "iterated stream"  # every piece once: never duplicated
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == text


# --- tools -----------------------------------------------------------------------------------------


def test_tools_round_trip(gateway, local_mock) -> None:
    client = gateway.client()
    first = client.responses.create(model=MODEL, input="weather and time #tools=2", tools=TOOLS)

    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    check_calls(calls)
    assert [item.type for item in first.output] == ["function_call", "function_call"]

    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=TOOLS,
                                     input=outputs_for(calls))
    assert second.output_text == EXPECTED_RESULTS
    assert second.previous_response_id == first.id

    messages = sent_upstream(local_mock, "get_time ok 1").body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [c.call_id for c in calls]
    assert [m["tool_call_id"] for m in messages[2:]] == [c.call_id for c in calls]


def test_tools_round_trip_streamed(gateway) -> None:
    client = gateway.client()
    events = stream_raw(gateway, {"model": MODEL, "input": "weather and time #tools=2", "tools": TOOLS})

    check_items_do_not_interleave(events)
    assert "response.content_part.added" not in [e["type"] for e in events]
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], i["name"], i["arguments"]) for i in added] == [
        ("function_call", "get_weather", ""), ("function_call", "get_time", "")]
    for index in (0, 1):
        pieces = [e["delta"] for e in events
                  if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == index]
        [done] = [e for e in events
                  if e["type"] == "response.function_call_arguments.done" and e["output_index"] == index]
        assert "".join(pieces) == done["arguments"] and json.loads(done["arguments"]) == {"city": CITIES[index]}
    assert events[-1]["type"] == "response.completed"

    with client.responses.stream(model=MODEL, input="weather and time #tools=2", tools=TOOLS) as stream:
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    check_calls(calls)

    with client.responses.stream(model=MODEL, previous_response_id=first.id, tools=TOOLS,
                                 input=outputs_for(calls)) as stream:
        answer = stream.get_final_response()
    assert answer.output_text == EXPECTED_RESULTS


def test_tool_history_sent_in_full_without_storage(gateway) -> None:
    """As Codex does: ``store: false`` and the whole conversation in ``input`` every turn."""
    client = gateway.client()
    question = {"role": "user", "content": "stateless tools #tools=2"}
    first = client.responses.create(model=MODEL, input=[question], tools=TOOLS, store=False)
    calls = [item for item in first.output if item.type == "function_call"]

    history = [question, *[c.model_dump(exclude_none=True) for c in calls], *outputs_for(calls)]
    second = client.responses.create(model=MODEL, input=history, tools=TOOLS, store=False)
    assert second.output_text == EXPECTED_RESULTS


# --- conversation state ----------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(gateway, local_mock) -> None:
    client = gateway.client()
    first = client.responses.create(model=MODEL, input="first turn alpha", instructions="Old instructions.")
    second = client.responses.create(model=MODEL, input="second turn beta", previous_response_id=first.id,
                                     instructions="New instructions.")
    third = client.responses.stream(model=MODEL, input="third turn gamma", previous_response_id=second.id)
    with third as stream:
        final = stream.get_final_response()

    assert second.output_text == REPLY_PREFIX + "second turn beta"
    assert final.output_text == REPLY_PREFIX + "third turn gamma"
    sent = sent_upstream(local_mock, "second turn beta").body["messages"]
    # Earlier turns come back; earlier instructions do not.
    assert sent == [
        {"role": "system", "content": "New instructions."},
        {"role": "user", "content": "first turn alpha"},
        {"role": "assistant", "content": REPLY_PREFIX + "first turn alpha"},
        {"role": "user", "content": "second turn beta"},
    ]
    sent = sent_upstream(local_mock, "third turn gamma").body["messages"]
    assert [text_of(m) for m in sent] == ["first turn alpha", REPLY_PREFIX + "first turn alpha", "second turn beta",
                                          REPLY_PREFIX + "second turn beta", "third turn gamma"]


def test_retrieve_and_delete(gateway) -> None:
    client = gateway.client("user_store_owner")
    created = client.responses.create(model=MODEL, input="keep me")

    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    assert fetched.usage.total_tokens == created.usage.total_tokens

    raw = httpx.delete(f"{gateway.base_url}/responses/{created.id}", timeout=20,
                       headers={"Authorization": f"Bearer {gateway.token('user_store_owner')}"})
    assert raw.status_code == 200
    assert raw.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="again", previous_response_id=created.id)
    assert info.value.body["code"] == "previous_response_not_found"


def test_streamed_response_is_stored(gateway) -> None:
    client = gateway.client()
    with client.responses.stream(model=MODEL, input="stored stream") as stream:
        final = stream.get_final_response()
    assert client.responses.retrieve(final.id).output_text == REPLY_PREFIX + "stored stream"


def test_store_false_keeps_nothing(gateway) -> None:
    client = gateway.client()
    response = client.responses.create(model=MODEL, input="forget me", store=False)

    assert response.store is False
    assert not gateway.redis.exists(f"{gateway.prefix}responses:{response.id}")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="more", previous_response_id=response.id)
    assert info.value.body["param"] == "previous_response_id"


def test_stored_response_expires(gateway) -> None:
    response = gateway.client().responses.create(model=MODEL, input="ttl check")
    ttl = gateway.redis.ttl(f"{gateway.prefix}responses:{response.id}")
    assert 29 * 86_400 < ttl <= 30 * 86_400


def test_another_users_response_is_not_found(gateway) -> None:
    owner, other = gateway.client("user_resp_owner"), gateway.client("user_resp_other")
    response = owner.responses.create(model=MODEL, input="private")

    with pytest.raises(openai.NotFoundError) as info:
        other.responses.retrieve(response.id)
    assert info.value.body["message"] == f"Response with id '{response.id}' not found."
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.BadRequestError) as info:
        other.responses.create(model=MODEL, input="steal", previous_response_id=response.id)
    assert info.value.body["code"] == "previous_response_not_found"
    # Identical to an id that never existed.
    with pytest.raises(openai.BadRequestError) as unknown:
        other.responses.create(model=MODEL, input="steal", previous_response_id="resp_doesnotexist")
    assert unknown.value.body["code"] == "previous_response_not_found"
    assert owner.responses.retrieve(response.id).output_text == REPLY_PREFIX + "private"


# --- limits and errors -----------------------------------------------------------------------------


def test_max_output_tokens_makes_it_incomplete(gateway) -> None:
    response = gateway.client().responses.create(model=MODEL, input="#chunks=10", max_output_tokens=3)

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "tok0 tok1 tok2 "
    assert response.output[0].status == "incomplete"

    events = stream_raw(gateway, {"model": MODEL, "input": "#chunks=10", "max_output_tokens": 3})
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "tok0 tok1 tok2 "


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_errors_before_the_answer_are_http_errors(gateway, stream: bool) -> None:
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="hi", stream=stream)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model=MODEL, input="#status=429", stream=stream)
    assert info.value.status_code == 429


@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": MODEL}, "input"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": MODEL, "input": "hi", "background": True}, "background"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_invalid_requests_are_400s(gateway, body: dict, param: str) -> None:
    response = httpx.post(f"{gateway.base_url}/responses", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {gateway.token()}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_failure_mid_stream_is_response_failed(gateway) -> None:
    events = stream_raw(gateway, {"model": MODEL, "input": "one two three four #midstream_error"})

    kinds = [e["type"] for e in events]
    assert kinds[:4] == TEXT_EVENTS and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    sent = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert sent and failed["output"][0]["content"][0]["text"] == sent
    assert failed["output"][0]["status"] == "incomplete"


def test_client_hang_up_stops_the_upstream(gateway, local_mock) -> None:
    marker = "#chunks=200 #delay=50 hangup"
    with httpx.stream("POST", f"{gateway.base_url}/responses", timeout=10,
                      headers={"Authorization": f"Bearer {gateway.token()}"},
                      json={"model": MODEL, "stream": True, "input": marker}) as response:
        deltas = 0
        for line in response.iter_lines():
            deltas += line == "event: response.output_text.delta"
            if deltas >= 3:
                break
    hung_up = time.monotonic()

    assert local_mock.wait_for(lambda rs: any(r.disconnected and marker in str(r.body) for r in rs), timeout=3.0)
    assert time.monotonic() - hung_up < 3.0
    received = next(r for r in reversed(local_mock.received) if marker in str(r.body))
    assert received.chunks_sent < 200


def test_unauthenticated_routes_are_401(gateway) -> None:
    for method in ("POST", "GET", "DELETE"):
        path = "/responses" if method == "POST" else "/responses/resp_x"
        response = httpx.request(method, f"{gateway.base_url}{path}", json={"model": MODEL, "input": "x"})
        assert response.status_code == 401


# --- metering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_usage_records_the_responses_surface(gateway, stream: bool) -> None:
    client = gateway.client("user_resp_usage")
    if stream:
        with client.responses.stream(model=MODEL, input="#chunks=3") as s:
            response = s.get_final_response()
    else:
        response = client.responses.create(model=MODEL, input="#chunks=3")

    [event] = events_for(gateway, response.id.removeprefix("resp_"))
    props = event["properties"]
    assert props["surface"] == "responses" and props["user_id"] == "user_resp_usage"
    assert props["tokens_out"] == response.usage.output_tokens == 3
    assert props["tokens_in"] == response.usage.input_tokens


# --- every provider ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud_client(cloud_gateway) -> openai.OpenAI:
    return cloud_gateway.client()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_text_on_every_provider(cloud_client, case: Case, stream: bool) -> None:
    if stream:
        with cloud_client.responses.stream(model=case.chat_model, input="hello there",
                                           instructions="You are terse.") as s:
            response = s.get_final_response()
    else:
        response = cloud_client.responses.create(model=case.chat_model, input="hello there",
                                                 instructions="You are terse.")

    assert response.output_text == REPLY_PREFIX + "hello there"
    assert response.status == "completed" and response.model == case.chat_model
    assert response.usage.output_tokens == 5 and response.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tools_round_trip_on_every_provider(cloud_client, case: Case, stream: bool) -> None:
    def ask(**fields):
        if not stream:
            return cloud_client.responses.create(model=case.chat_model, tools=TOOLS, **fields)
        with cloud_client.responses.stream(model=case.chat_model, tools=TOOLS, **fields) as s:
            return s.get_final_response()

    first = ask(input="weather and time please #tools=2")
    calls = [item for item in first.output if item.type == "function_call"]
    check_calls(calls)

    second = ask(input=outputs_for(calls), previous_response_id=first.id)
    assert second.output_text == EXPECTED_RESULTS
