"""The OpenAI ⇄ Bedrock Converse translation: requests, responses, streams, errors, embeddings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from shared.errors import GatewayError, InvalidRequest, ProviderError, UpstreamTimeout
from shared.usage import Tokens, cost_usd, tokens_from_usage
from workers.providers.bedrock.converse import (
    COHERE_MAX_TEXTS,
    EMPTY_TOOL_RESULT,
    StreamTranslator,
    cohere_request,
    cohere_vectors,
    embedding_family,
    embedding_texts,
    error_from_response,
    finish_reason,
    from_converse,
    titan_request,
    titan_vector,
    to_converse,
    usage,
)

USER = {"role": "user", "content": "Weather in Oslo and Bergen?"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_SPEC = {"toolSpec": {
    "name": "get_weather", "description": "Get weather",
    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}
PERMISSIVE = {"type": "object", "properties": {}, "additionalProperties": True}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def convert(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return to_converse({"model": "claude", "messages": messages, **fields})


def refused(messages: list[dict[str, Any]], **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        convert(messages, **fields)
    assert info.value.status == 400
    return info.value


PARALLEL_HISTORY = [
    {"role": "system", "content": "You are terse."},
    USER,
    {"role": "assistant", "content": "Checking both.", "tool_calls": [
        call("call_oslo", "get_weather", '{"city":"Oslo"}'),
        call("call_bergen", "get_weather", '{"city": "Bergen"}'),
    ]},
    {"role": "tool", "tool_call_id": "call_oslo", "content": '{"temp_c":4}'},
    {"role": "tool", "tool_call_id": "call_bergen", "content": [text('{"temp_c":'), text("7}")]},
]

PARALLEL_MESSAGES = [
    {"role": "user", "content": [{"text": "Weather in Oslo and Bergen?"}]},
    {"role": "assistant", "content": [
        {"text": "Checking both."},
        {"toolUse": {"toolUseId": "call_oslo", "name": "get_weather", "input": {"city": "Oslo"}}},
        {"toolUse": {"toolUseId": "call_bergen", "name": "get_weather", "input": {"city": "Bergen"}}},
    ]},
    {"role": "user", "content": [
        {"toolResult": {"toolUseId": "call_oslo", "content": [{"text": '{"temp_c":4}'}]}},
        {"toolResult": {"toolUseId": "call_bergen", "content": [{"text": '{"temp_c":7}'}]}},
    ]},
]


# -------------------------------------------------------------------------------------------
# Request: messages


def test_plain_conversation():
    assert convert([USER]) == {"messages": [{"role": "user", "content": [{"text": "Weather in Oslo and Bergen?"}]}]}


def test_parallel_tool_calls_and_their_results_merged_into_one_user_turn():
    assert convert(PARALLEL_HISTORY, tools=[WEATHER]) == {
        "messages": PARALLEL_MESSAGES,
        "system": [{"text": "You are terse."}],
        "toolConfig": {"tools": [WEATHER_SPEC]},
    }


def test_full_tool_round_trip_history():
    messages = [
        {"role": "developer", "content": [text("Answer in Norwegian."), text("   "), text("Be brief.")]},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", '{"city":"Oslo"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
        {"role": "assistant", "content": "Det er 4 grader."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert convert(messages, tools=[WEATHER], tool_choice="auto", max_tokens=300) == {
        "system": [{"text": "Answer in Norwegian."}, {"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "4 degrees"}]}}]},
            {"role": "assistant", "content": [{"text": "Det er 4 grader."}]},
            {"role": "user", "content": [{"text": "And tomorrow?"}]},
        ],
        "inferenceConfig": {"maxTokens": 300},
        "toolConfig": {"tools": [WEATHER_SPEC], "toolChoice": {"auto": {}}},
    }


def test_tool_results_go_before_user_text_in_a_merged_turn():
    messages = [
        USER,
        {"role": "assistant", "tool_calls": [call("call_1", "get_weather", '{"city":"Oslo"}')]},
        {"role": "user", "content": "Also, hurry."},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "user", "content": "Thanks."},
    ]
    assert convert(messages, tools=[WEATHER])["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "4"}]}},
        {"text": "Also, hurry."},
        {"text": "Thanks."},
    ]}


def test_consecutive_messages_of_one_role_are_merged():
    messages = [
        {"role": "user", "content": "One."},
        {"role": "user", "content": [text("Two."), text("Three.")]},
        {"role": "assistant", "content": "Four."},
        {"role": "assistant", "content": [text("Five.")]},
        {"role": "user", "content": "Six."},
    ]
    assert convert(messages)["messages"] == [
        {"role": "user", "content": [{"text": "One."}, {"text": "Two."}, {"text": "Three."}]},
        {"role": "assistant", "content": [{"text": "Four."}, {"text": "Five."}]},
        {"role": "user", "content": [{"text": "Six."}]},
    ]


def test_system_and_developer_messages_anywhere_become_system_blocks_in_order():
    messages = [
        {"role": "system", "content": "First."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": "Second."},
        {"role": "system", "content": [text("Third."), text("")]},
        {"role": "user", "content": "Again"},
    ]
    assert convert(messages) == {
        "system": [{"text": "First."}, {"text": "Second."}, {"text": "Third."}],
        "messages": [{"role": "user", "content": [{"text": "Hi"}, {"text": "Again"}]}],
    }


def test_blank_text_blocks_and_empty_messages_are_dropped():
    messages = [
        {"role": "system", "content": "  "},
        {"role": "user", "content": [text("Hello"), text(""), text("\n")]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "   "},
        {"role": "user", "content": "There"},
    ]
    assert convert(messages) == {"messages": [{"role": "user", "content": [{"text": "Hello"}, {"text": "There"}]}]}


def test_assistant_blank_text_with_tool_calls_keeps_only_the_calls():
    messages = [USER, {"role": "assistant", "content": "", "tool_calls": [call("call_1", "get_weather", "{}")]}]
    assert convert(messages, tools=[WEATHER])["messages"][1] == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {}}}]}


def test_assistant_refusal_part_is_text():
    messages = [USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
                {"role": "user", "content": "Why?"}]
    assert convert(messages)["messages"][1] == {"role": "assistant", "content": [{"text": "I cannot."}]}


def test_empty_tool_result_gets_a_placeholder():
    messages = [USER, {"role": "assistant", "tool_calls": [call("call_1", "get_weather", '{"city":"Oslo"}')]},
                {"role": "tool", "tool_call_id": "call_1", "content": ""}]
    assert convert(messages, tools=[WEATHER])["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": EMPTY_TOOL_RESULT}]}}]}


def test_tool_result_parts_are_joined_as_they_are():
    messages = [USER, {"role": "assistant", "tool_calls": [call("call_1", "get_weather", '{"city":"Oslo"}')]},
                {"role": "tool", "tool_call_id": "call_1", "content": [text("a"), text(" "), text("b")]}]
    assert convert(messages, tools=[WEATHER])["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "a b"}]}}]


def test_empty_arguments_string_is_an_empty_object():
    messages = [USER, {"role": "assistant", "tool_calls": [call("call_1", "now", "")]}]
    assert convert(messages)["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "now", "input": {}}}]


def test_tool_call_ids_bedrock_refuses_are_replaced_consistently():
    odd = "call/with spaces+" + "x" * 70
    digest = "call_" + hashlib.sha256(odd.encode()).hexdigest()[:32]
    messages = [USER, {"role": "assistant", "tool_calls": [call(odd, "get_weather", '{"city":"Oslo"}')]},
                {"role": "tool", "tool_call_id": odd, "content": "4"}]
    converted = convert(messages, tools=[WEATHER])["messages"]
    assert converted[1]["content"][0]["toolUse"]["toolUseId"] == digest
    assert converted[2]["content"][0]["toolResult"]["toolUseId"] == digest


@pytest.mark.parametrize("arguments", ['"Oslo"', "[1, 2]", "{not json", "null", "42"])
def test_tool_arguments_that_are_not_a_json_object_are_refused(arguments):
    messages = [USER, {"role": "assistant", "tool_calls": [
        call("call_ok", "get_weather", '{"city":"Oslo"}'), call("call_bad", "get_weather", arguments)]}]
    exc = refused(messages, tools=[WEATHER])
    assert exc.param == "messages[1].tool_calls[1].function.arguments"
    assert "'call_bad'" in exc.message and "'get_weather'" in exc.message


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "Be nice."}, {"role": "assistant", "content": "Hello!"}, USER],
    [{"role": "assistant", "content": "Hello!"}],
    [{"role": "tool", "tool_call_id": "x", "content": "1"}, {"role": "assistant", "content": "Hi"}][1:],
])
def test_conversation_must_start_with_a_user_turn(messages):
    exc = refused(messages)
    assert exc.param == "messages"
    assert "start with a user message" in exc.message


def test_conversation_of_only_system_messages_is_refused():
    exc = refused([{"role": "system", "content": "Be nice."}, {"role": "user", "content": "  "}])
    assert exc.param == "messages"
    assert "at least one user message" in exc.message


def test_legacy_function_role_is_refused():
    exc = refused([USER, {"role": "function", "name": "f", "content": "1"}])
    assert exc.param == "messages[1].role"


@pytest.mark.parametrize("part", [
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "f1"}},
])
def test_unsupported_user_parts_are_refused(part):
    assert refused([{"role": "user", "content": [text("Hi"), part]}]).param == "messages[0].content[1]"


def test_system_image_is_refused():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert refused([{"role": "system", "content": [image]}, USER]).param == "messages[0].content[0]"


# -------------------------------------------------------------------------------------------
# Request: images


@pytest.mark.parametrize("url, fmt", [
    ("data:image/png;base64,iVBORw0KGgo=", "png"),
    ("data:image/jpeg;base64,/9j/4AAQ", "jpeg"),
    ("data:image/jpg;base64,/9j/4AAQ", "jpeg"),
    ("data:IMAGE/GIF;base64,R0lGODlh", "gif"),
    ("data:image/webp;base64,UklGRg==", "webp"),
])
def test_image_data_urls(url, fmt):
    message = {"role": "user", "content": [text("What is this?"),
                                           {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}
    assert convert([message])["messages"] == [{"role": "user", "content": [
        {"text": "What is this?"},
        {"image": {"format": fmt, "source": {"bytes": url.split(",", 1)[1]}}},
    ]}]


def test_https_image_url_is_refused_with_the_reason():
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]}
    exc = refused([message])
    assert exc.param == "messages[0].content[0].image_url.url"
    assert "data:image/<format>;base64" in exc.message
    assert "does not fetch" in exc.message


@pytest.mark.parametrize("url, says", [
    ("data:image/bmp;base64,Qk0=", "not supported"),
    ("data:image/svg+xml;base64,PHN2Zz4=", "not supported"),
    ("data:application/pdf;base64,JVBERi0=", "not supported"),
    ("data:image/png,rawbytes", "base64"),
    ("data:image/png;base64,", "base64"),
])
def test_bad_image_data_urls_are_refused(url, says):
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    assert says in refused([message]).message


# -------------------------------------------------------------------------------------------
# Request: parameters


@pytest.mark.parametrize("fields, config", [
    ({"max_tokens": 100}, {"maxTokens": 100}),
    ({"max_completion_tokens": 200}, {"maxTokens": 200}),
    ({"max_tokens": 100, "max_completion_tokens": 200}, {"maxTokens": 200}),
    ({"temperature": 0.2}, {"temperature": 0.2}),
    ({"temperature": 0}, {"temperature": 0}),
    ({"temperature": 1.0}, {"temperature": 1.0}),
    ({"temperature": 1.7}, {"temperature": 1.0}),
    ({"temperature": 2}, {"temperature": 1.0}),
    ({"top_p": 0.9}, {"topP": 0.9}),
    ({"stop": "END"}, {"stopSequences": ["END"]}),
    ({"stop": ["END", "", "STOP"]}, {"stopSequences": ["END", "STOP"]}),
    ({"stop": ""}, None),
    ({"stop": [""]}, None),
    ({"stop": None}, None),
    ({"max_tokens": 5, "temperature": 1.5, "top_p": 0.5, "stop": ["x"]},
     {"maxTokens": 5, "temperature": 1.0, "topP": 0.5, "stopSequences": ["x"]}),
])
def test_inference_config(fields, config):
    result = convert([USER], **fields)
    assert result.get("inferenceConfig") == config


def test_fields_bedrock_does_not_take_are_not_sent():
    result = convert([USER], model="x", stream=True, stream_options={"include_usage": True}, seed=7, user="u1",
                     presence_penalty=0.5, frequency_penalty=0.5, logprobs=True, top_logprobs=3,
                     parallel_tool_calls=False, n=1, response_format={"type": "text"}, metadata={"a": "b"})
    assert result == {"messages": [{"role": "user", "content": [{"text": "Weather in Oslo and Bergen?"}]}]}


def test_n_above_one_is_refused():
    assert refused([USER], n=2).param == "n"


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
])
def test_json_response_formats_are_refused(response_format):
    exc = refused([USER], response_format=response_format)
    assert exc.param == "response_format"
    assert "not supported for Bedrock models" in exc.message


# -------------------------------------------------------------------------------------------
# Request: tools


def test_tools_are_sent():
    bare = {"type": "function", "function": {"name": "now"}}
    empty_description = {"type": "function", "function": {"name": "ping", "description": "", "parameters": {}}}
    assert convert([USER], tools=[WEATHER, bare, empty_description])["toolConfig"] == {"tools": [
        WEATHER_SPEC,
        {"toolSpec": {"name": "now", "description": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
        {"toolSpec": {"name": "ping", "description": "ping", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
    ]}


@pytest.mark.parametrize("choice, converse", [
    (None, None),
    ("auto", {"auto": {}}),
    ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
])
def test_tool_choice(choice, converse):
    fields = {"tools": [WEATHER]} if choice is None else {"tools": [WEATHER], "tool_choice": choice}
    expected = {"tools": [WEATHER_SPEC]} if converse is None else {"tools": [WEATHER_SPEC], "toolChoice": converse}
    assert convert([USER], **fields)["toolConfig"] == expected


def test_tool_choice_none_without_tool_history_sends_no_tools():
    assert "toolConfig" not in convert([USER], tools=[WEATHER], tool_choice="none")


def test_tool_choice_none_with_tool_history_keeps_tools_with_auto():
    assert convert(PARALLEL_HISTORY, tools=[WEATHER], tool_choice="none")["toolConfig"] == {
        "tools": [WEATHER_SPEC], "toolChoice": {"auto": {}}}


def test_named_tool_choice_must_name_a_tool():
    exc = refused([USER], tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}})
    assert exc.param == "tool_choice"


def test_tool_choice_auto_without_tools_sends_no_tool_config():
    assert "toolConfig" not in convert([USER], tool_choice="auto")


def test_history_tool_blocks_without_tools_get_synthesized_specs():
    messages = [
        USER,
        {"role": "assistant", "tool_calls": [call("c1", "get_weather", '{"city":"Oslo"}'), call("c2", "now", "{}"),
                                             call("c3", "get_weather", '{"city":"Bergen"}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
        {"role": "tool", "tool_call_id": "c3", "content": "7"},
    ]
    for fields in ({}, {"tool_choice": "none"}):
        assert convert(messages, **fields)["toolConfig"]["tools"] == [
            {"toolSpec": {"name": "get_weather", "description": "A tool used earlier in this conversation.",
                          "inputSchema": {"json": PERMISSIVE}}},
            {"toolSpec": {"name": "now", "description": "A tool used earlier in this conversation.",
                          "inputSchema": {"json": PERMISSIVE}}},
        ]
    assert "toolChoice" not in convert(messages)["toolConfig"]
    assert convert(messages, tool_choice="none")["toolConfig"]["toolChoice"] == {"auto": {}}


def test_request_tools_are_not_padded_with_history_names():
    messages = [USER, {"role": "assistant", "tool_calls": [call("c1", "old_tool", "{}")]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    assert convert(messages, tools=[WEATHER])["toolConfig"] == {"tools": [WEATHER_SPEC]}


def test_the_body_is_not_modified():
    body = {"model": "m", "messages": json.loads(json.dumps(PARALLEL_HISTORY)), "tools": [WEATHER], "stop": "x"}
    before = json.dumps(body, sort_keys=True)
    to_converse(body)
    assert json.dumps(body, sort_keys=True) == before


# -------------------------------------------------------------------------------------------
# Response


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("content_filtered", "content_filter"),
    ("guardrail_intervened", "content_filter"),
    ("malformed_model_output", "stop"),
    ("malformed_tool_use", "stop"),
    ("something_new", "stop"),
])
def test_finish_reason(stop_reason, finish):
    assert finish_reason(stop_reason) == finish


def converse_response(content, stop_reason="end_turn", usage_=None):
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop_reason,
            "usage": usage_ or {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17}, "metrics": {"latencyMs": 9}}


USAGE_12_5 = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def test_from_converse_text():
    data = converse_response([{"text": "Hello"}, {"reasoningContent": {"reasoningText": {"text": "hm"}}},
                              {"text": " there"}])
    assert from_converse(data) == {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": USAGE_12_5,
    }


def test_from_converse_text_and_parallel_tool_calls():
    data = converse_response([
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Oslo"}}},
        {"toolUse": {"toolUseId": "tooluse_b", "name": "get_weather", "input": {"city": "Tromsø"}}},
    ], "tool_use")
    assert from_converse(data)["choices"] == [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "tooluse_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "tooluse_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tromsø"}'}},
        ]}}]


def test_from_converse_only_tool_calls_has_null_content():
    data = converse_response([{"toolUse": {"toolUseId": "t1", "name": "now", "input": {}}}], "tool_use")
    message = from_converse(data)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {}


def test_from_converse_empty_content_is_empty_string():
    data = converse_response([], "content_filtered")
    assert from_converse(data)["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert from_converse(data)["choices"][0]["finish_reason"] == "content_filter"


def test_from_converse_without_usable_usage_leaves_it_to_the_worker():
    data = converse_response([{"text": "Hi"}])
    del data["usage"]
    assert "usage" not in from_converse(data)
    data["usage"] = {"inputTokens": "12", "outputTokens": 5}
    assert "usage" not in from_converse(data)


@pytest.mark.parametrize("data", [
    None,
    [],
    {},
    {"output": {}},
    {"output": {"message": {"content": "text"}}, "stopReason": "end_turn"},
    {"output": {"message": {"content": []}}},
    {"output": {"message": {"content": ["text"]}}, "stopReason": "end_turn"},
    {"output": {"message": {"content": [{"text": 5}]}}, "stopReason": "end_turn"},
    {"output": {"message": {"content": [{"toolUse": {"name": "x", "input": {}}}]}}, "stopReason": "tool_use"},
    {"message": "Internal error"},
])
def test_from_converse_malformed(data):
    with pytest.raises(ProviderError) as info:
        from_converse(data, provider="aws")
    assert info.value.message.startswith("Upstream aws ")
    assert info.value.status == 502


# -------------------------------------------------------------------------------------------
# Usage


@pytest.mark.parametrize("converse, openai", [
    ({"inputTokens": 12, "outputTokens": 5, "totalTokens": 17}, USAGE_12_5),
    ({"inputTokens": 10, "outputTokens": 5, "totalTokens": 1015, "cacheReadInputTokens": 800,
      "cacheWriteInputTokens": 200},
     {"prompt_tokens": 1010, "completion_tokens": 5, "total_tokens": 1015,
      "prompt_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 200},
      "completion_tokens_details": {"reasoning_tokens": 0}}),
    ({"inputTokens": 10, "outputTokens": 5, "totalTokens": 515, "cacheReadInputTokens": 500},
     {"prompt_tokens": 510, "completion_tokens": 5, "total_tokens": 515,
      "prompt_tokens_details": {"cached_tokens": 500}, "completion_tokens_details": {"reasoning_tokens": 0}}),
    ({"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0},
     {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
      "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0}}),
])
def test_usage(converse, openai):
    assert usage(converse) == openai


@pytest.mark.parametrize("bad", [{}, {"inputTokens": 1}, {"inputTokens": "1", "outputTokens": 2},
                                 {"inputTokens": True, "outputTokens": 2}, {"inputTokens": -1, "outputTokens": 2}])
def test_usage_malformed(bad):
    with pytest.raises(ProviderError):
        usage(bad)


def test_metering_prices_cached_tokens_at_the_cached_price():
    tokens = tokens_from_usage(usage({"inputTokens": 100, "outputTokens": 50, "totalTokens": 1150,
                                      "cacheReadInputTokens": 1000}))
    assert tokens == Tokens(tokens_in=1100, tokens_out=50, cached_tokens=1000, reasoning_tokens=0)
    # $3 in, $15 out, $0.30 cached per million: 100 fresh + 1000 cached + 50 out.
    assert cost_usd(tokens, 3.0, 15.0, 0.30) == pytest.approx((100 * 3 + 1000 * 0.3 + 50 * 15) / 1e6)


# -------------------------------------------------------------------------------------------
# Stream


def chunk(delta, finish=None):
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def args(index, fragment):
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


def run(events):
    translator = StreamTranslator()
    out = []
    for event_type, payload in events:
        out.extend(translator.events(event_type, payload))
    return out


def test_stream_text_then_two_tool_calls_numbered_from_zero():
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking"}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " both."}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1,
                               "start": {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Oslo"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockStart", {"contentBlockIndex": 2,
                               "start": {"toolUse": {"toolUseId": "tooluse_b", "name": "get_weather"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"city":"Bergen"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 412, "outputTokens": 38, "totalTokens": 450},
                      "metrics": {"latencyMs": 790}}),
    ]
    assert run(events) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking"}),
        chunk({"content": " both."}),
        chunk({"tool_calls": [{"index": 0, "id": "tooluse_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        args(0, '{"city":'),
        args(0, '"Oslo"}'),
        chunk({"tool_calls": [{"index": 1, "id": "tooluse_b", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        args(1, '{"city":"Bergen"}'),
        chunk({}, "tool_calls"),
        {"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 412, "completion_tokens": 38, "total_tokens": 450,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}},
    ]


def test_stream_tool_with_empty_input_gets_empty_object_arguments():
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": "now"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": ""}}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t2", "name": "get_weather"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":"Oslo"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
    ]
    assert run(events) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}]}),
        args(0, "{}"),
        chunk({"tool_calls": [{"index": 1, "id": "t2", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        args(1, '{"city":"Oslo"}'),
        chunk({}, "tool_calls"),
    ]


def test_stream_tool_never_stopped_still_gets_arguments_before_the_finish():
    events = [
        ("contentBlockStart", {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "t1", "name": "now"}}}),
        ("messageStop", {"stopReason": "tool_use"}),
    ]
    assert run(events)[1:] == [args(0, "{}"), chunk({}, "tool_calls")]


def test_stream_usage_with_cache_tokens_after_message_stop():
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ("messageStop", {"stopReason": "max_tokens"}),
        ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 504,
                                "cacheReadInputTokens": 400, "cacheWriteInputTokens": 100}, "metrics": {"latencyMs": 1}}),
    ]
    assert run(events)[2:] == [
        chunk({}, "length"),
        {"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 503, "completion_tokens": 1, "total_tokens": 504,
            "prompt_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 0}}},
    ]


def test_stream_ignores_reasoning_unknown_events_and_unusable_usage():
    events = [
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "thinking"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": ""}}),
        ("somethingNew", {"x": 1}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"image": {}}}),
        ("metadata", {"metrics": {"latencyMs": 1}}),
        ("metadata", {"usage": {"inputTokens": None}}),
    ]
    assert run(events) == []


def test_stream_message_stop_without_reason_is_stop():
    assert run([("messageStop", {})]) == [chunk({}, "stop")]


@pytest.mark.parametrize("events", [
    [("contentBlockDelta", {"contentBlockIndex": 4, "delta": {"toolUse": {"input": "{}"}}})],
    [("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"name": "x"}}})],
    [("contentBlockStart", {"start": {"toolUse": {"toolUseId": "t", "name": "x"}}})],
    [("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "x"}}}),
     ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "u", "name": "x"}}})],
    [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": 5}})],
    [("contentBlockDelta", {"contentBlockIndex": 0})],
    [("messageStart", "not an object")],
])
def test_stream_malformed_events(events):
    with pytest.raises(ProviderError):
        run(events)


@pytest.mark.parametrize("kind, payload, cls, status, code, retryable, message", [
    ("throttlingException", {"message": "Too many requests"}, ProviderError, 429, "rate_limit_exceeded", True,
     "Upstream bedrock returned ThrottlingException: Too many requests"),
    ("validationException", {"message": "Bad input"}, InvalidRequest, 400, "provider_error", False,
     "Upstream bedrock returned ValidationException: Bad input"),
    ("validationException", {"message": "Input is too long for requested model."}, InvalidRequest, 400,
     "context_length_exceeded", False, "Upstream bedrock returned ValidationException: Input is too long for requested model."),
    ("modelStreamErrorException", {"message": "Model failed", "originalStatusCode": 500, "originalMessage": "boom"},
     ProviderError, 502, "provider_error", True, "Upstream bedrock returned ModelStreamErrorException: Model failed (model said: boom)"),
    ("internalServerException", {"message": "Oops"}, ProviderError, 502, "provider_error", True,
     "Upstream bedrock returned InternalServerException: Oops"),
    ("serviceUnavailableException", {"message": "Later"}, ProviderError, 503, "provider_error", True,
     "Upstream bedrock returned ServiceUnavailableException: Later"),
    ("somethingElse", {}, ProviderError, 502, "provider_error", True,
     "Upstream bedrock returned SomethingElse: no detail"),
])
def test_stream_exceptions(kind, payload, cls, status, code, retryable, message):
    exc = StreamTranslator().exception(kind, payload, ())
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.retryable, exc.message) == (status, code, retryable, message)


def test_stream_exception_is_redacted():
    exc = StreamTranslator("aws-east").exception("throttlingException", {"message": "key hunter2-secret, sk-abcdef123"},
                                                 ("hunter2-secret",))
    assert exc.message == "Upstream aws-east returned ThrottlingException: key [redacted], [redacted]"


# -------------------------------------------------------------------------------------------
# HTTP errors


def error(status, kind, message, *, secrets=(), body=None):
    payload = body if body is not None else json.dumps({"message": message}).encode()
    header = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/" if kind else None
    return error_from_response(status, header, payload, secrets, provider="bedrock")


@pytest.mark.parametrize("status, kind, cls, out_status, code, retryable", [
    (400, "ValidationException", InvalidRequest, 400, "provider_error", False),
    (403, "AccessDeniedException", ProviderError, 403, "provider_access_denied", False),
    (403, "UnrecognizedClientException", ProviderError, 403, "provider_access_denied", False),
    (403, "InvalidSignatureException", ProviderError, 403, "provider_access_denied", False),
    (403, "ExpiredTokenException", ProviderError, 403, "provider_access_denied", False),
    (404, "ResourceNotFoundException", ProviderError, 404, "model_not_found", False),
    (429, "ThrottlingException", ProviderError, 429, "rate_limit_exceeded", True),
    (429, "ModelNotReadyException", ProviderError, 429, "rate_limit_exceeded", True),
    (400, "ServiceQuotaExceededException", ProviderError, 429, "rate_limit_exceeded", True),
    (408, "ModelTimeoutException", UpstreamTimeout, 504, "upstream_timeout", True),
    (424, "ModelErrorException", ProviderError, 502, "provider_error", True),
    (500, "InternalServerException", ProviderError, 502, "provider_error", True),
    (503, "ServiceUnavailableException", ProviderError, 503, "provider_error", True),
    # Unknown types fall back on the HTTP status.
    (400, "BrandNewException", InvalidRequest, 400, "provider_error", False),
    (401, "BrandNewException", ProviderError, 403, "provider_access_denied", False),
    (404, "BrandNewException", ProviderError, 404, "model_not_found", False),
    (429, "BrandNewException", ProviderError, 429, "rate_limit_exceeded", True),
    (504, "BrandNewException", UpstreamTimeout, 504, "upstream_timeout", True),
    (500, "BrandNewException", ProviderError, 502, "provider_error", True),
    (503, "BrandNewException", ProviderError, 503, "provider_error", True),
])
def test_error_mapping(status, kind, cls, out_status, code, retryable):
    exc = error(status, kind, "Something happened.")
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.retryable) == (out_status, code, retryable)
    assert exc.message.startswith(f"Upstream bedrock returned {kind}: Something happened.")


def test_throttling_message():
    exc = error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    assert exc.message == "Upstream bedrock returned ThrottlingException: Too many requests, please wait before trying again."


@pytest.mark.parametrize("message", [
    "Input is too long for requested model.",
    "prompt is too long: 201234 tokens > 200000 maximum",
    "The model returned the following errors: input length and `max_tokens` exceed context limit: 195000 + 8192 > 200000",
    "Too many input tokens. Max input tokens: 8192",
])
def test_context_window_validation_errors(message):
    exc = error(400, "ValidationException", message)
    assert (type(exc), exc.code) == (InvalidRequest, "context_length_exceeded")


def test_other_validation_errors_are_not_context_errors():
    exc = error(400, "ValidationException", "max_tokens: Input should be less than or equal to 4096")
    assert exc.code == "provider_error"


def test_credential_errors_tell_the_operator_and_keep_no_secrets():
    body = json.dumps({"message": (
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
        "Access Key and signing method.\n\nThe Canonical String for this request should have been\n'POST\n"
        "/model/x/converse\n\nx-amz-security-token:IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN'")}).encode()
    exc = error_from_response(403, "InvalidSignatureException:http://internal.amazon.com/", body,
                              ("IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN",), provider="bedrock")
    assert exc.message == (
        "Upstream bedrock returned InvalidSignatureException: The request signature we calculated does not match "
        "the signature you provided. Check your AWS Secret Access Key and signing method. (check the AWS "
        "credentials, region and model access configured for this provider on the gateway)")


def test_access_denied_hides_principal_arns_and_key_ids():
    exc = error(403, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/gw is not authorized; key "
                "ASIAABCDEFGHIJKLMNOP, AKIAABCDEFGHIJKLMNOP")
    assert exc.message.startswith("Upstream bedrock returned AccessDeniedException: User: [redacted] is not "
                                  "authorized; key [redacted], [redacted] (check the AWS credentials")
    assert "123456789012" not in exc.message


def test_secrets_are_redacted_everywhere():
    exc = error(400, "ValidationException", "bad key my-very-secret-key", secrets=("my-very-secret-key",))
    assert exc.message == "Upstream bedrock returned ValidationException: bad key [redacted]"


def test_error_type_from_body_when_the_header_is_missing():
    body = json.dumps({"__type": "com.amazon.coral.service#UnrecognizedClientException",
                       "Message": "The security token included in the request is invalid."}).encode()
    exc = error_from_response(403, None, body, (), provider="bedrock")
    assert exc.code == "provider_access_denied"
    assert exc.message.startswith("Upstream bedrock returned UnrecognizedClientException: "
                                  "The security token included in the request is invalid.")


def test_error_with_a_body_that_is_not_json():
    exc = error_from_response(502, None, b"<html>Bad Gateway</html>", (), provider="bedrock")
    assert (type(exc), exc.status, exc.message) == (
        ProviderError, 502, "Upstream bedrock returned HTTP 502: <html>Bad Gateway</html>")
    exc = error_from_response(429, "", b"", (), provider="bedrock")
    assert (exc.status, exc.message) == (429, "Upstream bedrock returned HTTP 429: no detail")


def test_errors_are_gateway_errors_that_render():
    exc = error(429, "ThrottlingException", "slow down")
    assert isinstance(exc, GatewayError)
    assert json.loads(exc.to_json()) == {"error": {
        "message": "Upstream bedrock returned ThrottlingException: slow down", "type": "provider_error",
        "param": None, "code": "rate_limit_exceeded"}}


def test_long_upstream_messages_are_cut():
    exc = error(400, "ValidationException", "x" * 5000)
    assert len(exc.message) < 1100


# -------------------------------------------------------------------------------------------
# Embeddings


@pytest.mark.parametrize("model_id, family", [
    ("amazon.titan-embed-text-v2:0", "titan"),
    ("us.amazon.titan-embed-text-v2:0", "titan"),
    ("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0", "titan"),
    ("amazon.titan-embed-text-v1", None),
    ("amazon.titan-embed-image-v1", None),
    ("cohere.embed-english-v3", "cohere"),
    ("cohere.embed-multilingual-v3", "cohere"),
    ("eu.cohere.embed-v4:0", "cohere"),
    ("global.cohere.embed-v4:0", "cohere"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.cohere.embed-v4:0", "cohere"),
    ("anthropic.claude-3-haiku-20240307-v1:0", None),
    ("cohere.command-r-v1:0", None),
])
def test_embedding_family(model_id, family):
    assert embedding_family(model_id) == family


@pytest.mark.parametrize("dimensions, expected", [
    (None, {"inputText": "hi", "normalize": True, "embeddingTypes": ["float"]}),
    (256, {"inputText": "hi", "normalize": True, "embeddingTypes": ["float"], "dimensions": 256}),
    (512, {"inputText": "hi", "normalize": True, "embeddingTypes": ["float"], "dimensions": 512}),
    (1024, {"inputText": "hi", "normalize": True, "embeddingTypes": ["float"], "dimensions": 1024}),
    (300, {"inputText": "hi", "normalize": True, "embeddingTypes": ["float"]}),
])
def test_titan_request(dimensions, expected):
    assert titan_request("hi", dimensions) == expected


def test_titan_dimensions_above_its_size_are_refused():
    with pytest.raises(InvalidRequest) as info:
        titan_request("hi", 1536)
    assert info.value.param == "dimensions"


def test_cohere_request():
    assert COHERE_MAX_TEXTS == 96
    assert cohere_request(["a", "b"]) == {"texts": ["a", "b"], "input_type": "search_document", "truncate": "END",
                                          "embedding_types": ["float"]}
    cohere_request(["x"] * COHERE_MAX_TEXTS)
    with pytest.raises(ValueError):
        cohere_request(["x"] * (COHERE_MAX_TEXTS + 1))


@pytest.mark.parametrize("inputs, texts", [("hi", ["hi"]), (["a", "b"], ["a", "b"])])
def test_embedding_texts(inputs, texts):
    assert embedding_texts(inputs) == texts


@pytest.mark.parametrize("inputs", [[1, 2, 3], [[1, 2], [3]], [], 5, ["a", 1]])
def test_token_inputs_are_refused(inputs):
    with pytest.raises(InvalidRequest) as info:
        embedding_texts(inputs)
    assert info.value.param == "input"
    with pytest.raises(InvalidRequest):
        cohere_request([[1, 2]])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest):
        titan_request([1, 2], None)  # type: ignore[arg-type]


def test_titan_vector():
    assert titan_vector({"embedding": [0.5, -1], "inputTextTokenCount": 2}) == ([0.5, -1.0], 2)
    assert titan_vector({"embedding": [9.0], "embeddingsByType": {"float": [0.25, 0.75]}}) == ([0.25, 0.75], None)
    for bad in ({}, {"embedding": []}, {"embedding": ["a"]}, {"embeddingsByType": {"binary": [1]}}, None):
        with pytest.raises(ProviderError):
            titan_vector(bad)


def test_cohere_vectors():
    floats = {"response_type": "embeddings_floats", "texts": ["a", "b"], "embeddings": [[0.1, 0.2], [0.3, 0.4]]}
    by_type = {"response_type": "embeddings_by_type", "embeddings": {"float": [[0.1, 0.2], [0.3, 0.4]]}}
    assert cohere_vectors(floats) == cohere_vectors(by_type) == [[0.1, 0.2], [0.3, 0.4]]
    for bad in ({}, {"embeddings": []}, {"embeddings": {"int8": [[1]]}}, {"embeddings": [[0.1], "x"]}, None):
        with pytest.raises(ProviderError):
            cohere_vectors(bad)
