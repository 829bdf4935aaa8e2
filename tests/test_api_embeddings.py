"""Embeddings through the gateway with the openai SDK."""

from __future__ import annotations

import base64
import math
import struct

import httpx


def test_embeddings_float(gateway, openrouter_mock):
    result = gateway.client().embeddings.create(model="text-embedding-3-small", input=["Hello", "World"],
                                                encoding_format="float")
    assert result.model == "text-embedding-3-small"
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == openrouter_mock.received[-1].usage["prompt_tokens"]
    assert openrouter_mock.received[-1].body["model"] == "openai/text-embedding-3-small"


def test_embeddings_base64_is_little_endian_float32(gateway, local_mock):
    # The SDK asks for base64 when the caller names no format, and decodes it itself.
    via_sdk = gateway.client().embeddings.create(model="mock-embed", input="Hello world")
    raw = httpx.post(f"{gateway.base_url}/embeddings", headers={"Authorization": f"Bearer {gateway.token()}"},
                     json={"model": "mock-embed", "input": "Hello world", "encoding_format": "base64"}).json()
    floats = httpx.post(f"{gateway.base_url}/embeddings", headers={"Authorization": f"Bearer {gateway.token()}"},
                        json={"model": "mock-embed", "input": "Hello world"}).json()
    encoded = raw["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    expected = floats["data"][0]["embedding"]
    assert len(decoded) == len(expected) == len(via_sdk.data[0].embedding)
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, expected))
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(via_sdk.data[0].embedding, expected))


def test_embeddings_dimensions_and_token_input(gateway):
    result = gateway.client().embeddings.create(model="mock-embed", input=[[1, 2, 3], [4, 5]], dimensions=4,
                                                encoding_format="float")
    assert len(result.data) == 2
    for item in result.data:
        assert len(item.embedding) == 4
        assert math.isclose(math.sqrt(sum(v * v for v in item.embedding)), 1.0, rel_tol=1e-6)
