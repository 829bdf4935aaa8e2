"""Models, health, the product page's curl lines, and a worker dying under a stream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import openai
import pytest

PAGE_CURLS = r'''
# List models
curl -s "$REACTOR_URL/ai/v1/models" \
  -H "Authorization: Bearer $REACTOR_TOKEN"

# Chat completion
curl -s -X POST "$REACTOR_URL/ai/v1/chat/completions" \
  -H "Authorization: Bearer $REACTOR_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{ "model": "gpt-4o-mini", "messages": [{"role":"user","content":"Hello!"}], "max_tokens": 256 }'

# Streaming
curl -N -X POST "$REACTOR_URL/ai/v1/chat/completions" \
  -H "Authorization: Bearer $REACTOR_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{ "model": "gpt-4o-mini", "messages": [{"role":"user","content":"Hello!"}], "stream": true }'

# Embeddings
curl -s -X POST "$REACTOR_URL/ai/v1/embeddings" \
  -H "Authorization: Bearer $REACTOR_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{ "model": "text-embedding-3-small", "input": "Hello world" }'
'''


def test_models_list(gateway):
    models = {m.id: m for m in gateway.client().models.list()}
    for name in ("gpt-4o-mini", "gpt-4", "gpt-4o", "claude-3-5-sonnet", "claude-3-haiku", "text-embedding-3-small",
                 "text-embedding-3-large", "mock-local", "reasoning/cheapest", "reasoning/best"):
        assert name in models, name
    assert models["gpt-4o-mini"].object == "model" and models["gpt-4o-mini"].owned_by == "openai"
    assert models["reasoning/cheapest"].model_extra["alias"] is True
    assert models["reasoning/cheapest"].model_extra["targets"] == ["gpt-4o-mini", "claude-3-haiku"]
    assert not models["gpt-4o-mini"].model_extra.get("alias")
    assert "unserved-model" in models  # listed: its provider is enabled, even with no worker yet
    assert gateway.client().models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        gateway.client().models.retrieve("nope")


def test_models_need_auth(gateway):
    assert httpx.get(f"{gateway.base_url}/models").status_code == 401


def test_health(gateway):
    response = httpx.get(f"{gateway.base_url}/health")
    body = response.json()
    assert response.status_code == 200
    assert body["redis"] is True and body["version"]
    assert body["workers"]["openrouter"] >= 1 and body["workers"]["local"] >= 1
    assert body["workers"]["idle"] == 0 and body["status"] == "degraded"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_page_curl_lines_verbatim(gateway):
    env = {**os.environ, "REACTOR_URL": gateway.url, "REACTOR_TOKEN": gateway.token("user_curl")}
    outputs = []
    for block in PAGE_CURLS.strip().split("\n\n"):
        result = subprocess.run(["bash", "-c", block], env=env, capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    models, chat, stream, embeddings = outputs
    assert json.loads(models)["object"] == "list"
    assert json.loads(chat)["choices"][0]["message"]["content"] == "Hello from mock: Hello!"
    assert stream.strip().endswith("data: [DONE]")
    assert len(json.loads(embeddings)["data"][0]["embedding"]) > 0


def test_worker_death_mid_stream_ends_the_stream(fresh_gateway):
    client = fresh_gateway.client()
    stream = client.chat.completions.create(
        model="mock-local", stream=True, messages=[{"role": "user", "content": "#chunks=400 #delay=25"}])
    got = 0
    started = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got += 1
            request_id = chunk.id.removeprefix("chatcmpl-")
            if got == 3:
                fresh_gateway.kill_worker()
    assert "silent" in str(info.value)
    assert time.monotonic() - started < 8  # noticed within a few missed pings, not the 10 s of the stream
    # The dead worker never metered the stream; the front door did, for what the client received.
    deadline = time.monotonic() + 5
    events = []
    while time.monotonic() < deadline and not events:
        events = [e for e in fresh_gateway.usage_events() if e["properties"]["request_id"] == request_id]
        time.sleep(0.1)
    assert len(events) == 1
    assert events[0]["properties"]["status"] == "worker_lost" and events[0]["properties"]["tokens_out"] >= 1
    # health reports the dead worker once its heartbeat lapses, and a new worker takes over
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and httpx.get(f"{fresh_gateway.base_url}/health").status_code != 503:
        time.sleep(0.1)
    assert httpx.get(f"{fresh_gateway.base_url}/health").status_code == 503
    fresh_gateway.start_worker()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and httpx.get(f"{fresh_gateway.base_url}/health").status_code != 200:
        time.sleep(0.1)
    completion = client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "back"}])
    assert completion.choices[0].message.content == "Hello from mock: back"
