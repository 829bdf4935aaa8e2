import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import uuid4

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.keys import Keys
from shared.usage import (
    SEEN_TTL_S,
    Tokens,
    UsageProperties,
    UsageRecorder,
    cost_usd,
    estimate_tokens,
    tokens_from_usage,
)

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RETENTION_DAYS = 3
NEW_YEAR = 1_735_689_600.25  # 2025-01-01T00:00:00.25Z

T = TypeVar("T")


def with_redis(test: Callable[[Redis, Keys], Awaitable[T]]) -> T:
    """Run `test` against the real Redis under a prefix of its own, and delete that prefix afterwards."""
    keys = Keys(prefix=f"utest-{uuid4().hex[:8]}:")

    async def run() -> T:
        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            return await test(redis, keys)
        finally:
            leftovers = [key async for key in redis.scan_iter(match=f"{keys.prefix}*", count=500)]
            if leftovers:
                await redis.delete(*leftovers)
            await redis.aclose()

    return asyncio.run(run())


def props(**overrides: Any) -> UsageProperties:
    fields: dict[str, Any] = {
        "model_id": "gpt-4o-mini",
        "user_id": "user-1",
        "tokens_in": 1200,
        "tokens_out": 340,
        "request_id": "req-1",
        "provider": "openrouter",
        "timestamp": NEW_YEAR,
        "latency_ms": 812.5,
        "cost_usd": 0.000369,
        "status": "partial",
        "alias": "team/cheap",
        "cached_tokens": 200,
        "reasoning_tokens": 12,
        "estimated": True,
    }
    fields.update(overrides)
    return UsageProperties(**fields)


# --- UsageRecorder --------------------------------------------------------------------------------


def test_record_writes_counters_index_and_one_event() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)

        assert await recorder.record(props()) is True

        counters = keys.usage_counters("2025-01-01", "user-1", "gpt-4o-mini")
        assert counters == f"{keys.prefix}usage:2025-01-01:user-1:gpt-4o-mini"
        assert await redis.hgetall(counters) == {
            "requests": "1", "tokens_in": "1200", "tokens_out": "340", "cost_usd": "0.000369",
        }
        assert RETENTION_DAYS * 86_400 - 5 <= await redis.ttl(counters) <= RETENTION_DAYS * 86_400
        index = keys.usage_index("2025-01-01")
        assert await redis.smembers(index) == {"user-1\tgpt-4o-mini"}
        assert RETENTION_DAYS * 86_400 - 5 <= await redis.ttl(index) <= RETENTION_DAYS * 86_400
        seen = keys.usage_seen("req-1")
        assert SEEN_TTL_S - 5 <= await redis.ttl(seen) <= SEEN_TTL_S

        entries = await redis.xrange(keys.usage_events)
        assert len(entries) == 1
        _, fields = entries[0]
        assert set(fields) == {"event", "data"}
        assert fields["event"] == "ai.usage"
        assert json.loads(fields["data"]) == {
            "event": "ai.usage",
            "properties": {
                "model_id": "gpt-4o-mini",
                "user_id": "user-1",
                "tokens_in": 1200,
                "tokens_out": 340,
                "request_id": "req-1",
                "provider": "openrouter",
                "timestamp": NEW_YEAR,
                "latency_ms": 812.5,
                "cost_usd": 0.000369,
                "status": "partial",
                "alias": "team/cheap",
                "cached_tokens": 200,
                "reasoning_tokens": 12,
                "estimated": True,
                "cache_write_tokens": 0,
                "attempts": 1,
                "surface": "chat",
            },
        }

    with_redis(test)


def test_event_with_default_extras_keeps_the_required_fields() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)
        plain = props(status="ok", alias=None, cached_tokens=0, reasoning_tokens=0, estimated=False)

        assert await recorder.record(plain) is True

        (_, fields), = await redis.xrange(keys.usage_events)
        event = json.loads(fields["data"])
        assert set(event) == {"event", "properties"}
        assert event["event"] == "ai.usage"
        assert {k: event["properties"][k] for k in ("model_id", "user_id", "tokens_in", "tokens_out")} == {
            "model_id": "gpt-4o-mini", "user_id": "user-1", "tokens_in": 1200, "tokens_out": 340,
        }
        assert msgspec.convert(event["properties"], UsageProperties) == plain

    with_redis(test)


def test_recording_a_request_twice_counts_it_once() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)
        counters = keys.usage_counters("2025-01-01", "user-1", "gpt-4o-mini")

        assert await recorder.record(props()) is True
        before = (await redis.hgetall(counters), await redis.xlen(keys.usage_events),
                  await redis.smembers(keys.usage_index("2025-01-01")))
        # A retried job reports the same request with different numbers: still ignored.
        assert await recorder.record(props(tokens_in=9999, tokens_out=1, cost_usd=5.0)) is False
        after = (await redis.hgetall(counters), await redis.xlen(keys.usage_events),
                 await redis.smembers(keys.usage_index("2025-01-01")))

        assert after == before
        assert before[1] == 1

    with_redis(test)


def test_requests_accumulate_per_user_model_and_day() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)

        assert await recorder.record(props(request_id="a", tokens_in=100, tokens_out=10, cost_usd=0.25))
        assert await recorder.record(props(request_id="b", tokens_in=50, tokens_out=5, cost_usd=3.75e-06))
        assert await recorder.record(props(request_id="c", user_id="user-2"))
        assert await recorder.record(props(request_id="d", timestamp=NEW_YEAR - 1.0))  # 2024-12-31T23:59:59Z

        counters = await redis.hgetall(keys.usage_counters("2025-01-01", "user-1", "gpt-4o-mini"))
        assert {k: counters[k] for k in ("requests", "tokens_in", "tokens_out")} == {
            "requests": "2", "tokens_in": "150", "tokens_out": "15",
        }
        assert float(counters["cost_usd"]) == pytest.approx(0.25000375, abs=1e-12)
        assert await redis.smembers(keys.usage_index("2025-01-01")) == {
            "user-1\tgpt-4o-mini", "user-2\tgpt-4o-mini",
        }
        assert await redis.hget(keys.usage_counters("2024-12-31", "user-1", "gpt-4o-mini"), "requests") == "1"
        assert await redis.smembers(keys.usage_index("2024-12-31")) == {"user-1\tgpt-4o-mini"}
        assert await redis.xlen(keys.usage_events) == 4

    with_redis(test)


def test_record_retries_a_lost_connection() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)
        real_script = recorder._script
        failures = [RedisConnectionError("reset"), OSError("broken pipe")]

        async def flaky(**kwargs: Any) -> Any:
            if failures:
                raise failures.pop(0)
            return await real_script(**kwargs)

        recorder._script = flaky  # type: ignore[assignment]
        assert await recorder.record(props(), attempts=3) is True
        assert await redis.xlen(keys.usage_events) == 1

        failures.extend([RedisConnectionError("down")] * 2)
        with pytest.raises(RedisConnectionError):
            await recorder.record(props(request_id="req-2"), attempts=2)
        assert await redis.xlen(keys.usage_events) == 1

    with_redis(test)


# --- cost_usd -------------------------------------------------------------------------------------


def test_cost_with_a_cached_price() -> None:
    tokens = Tokens(tokens_in=1_000_000, tokens_out=500_000, cached_tokens=400_000)

    # 600k fresh at 2.50 + 400k cached at 1.25 + 500k out at 10.00
    assert cost_usd(tokens, 2.50, 10.00, 1.25) == 7.0


def test_cost_without_a_cached_price_bills_cached_tokens_as_input() -> None:
    tokens = Tokens(tokens_in=1_000_000, tokens_out=500_000, cached_tokens=400_000)

    assert cost_usd(tokens, 2.50, 10.00, None) == 7.5


def test_cost_clamps_cached_tokens_to_tokens_in() -> None:
    assert cost_usd(Tokens(tokens_in=100, tokens_out=0, cached_tokens=500), 1.0, 2.0, 0.5) == 0.00005


def test_cost_small_and_zero() -> None:
    assert cost_usd(Tokens(1, 0), 0.15, 0.60, 0.075) == 1.5e-07
    assert cost_usd(Tokens(1200, 340, cached_tokens=200), 0.15, 0.60, 0.075) == 0.000369
    assert cost_usd(Tokens(0, 0), 30.0, 60.0, None) == 0.0
    assert cost_usd(Tokens(123, 45), 0.0, 0.0, None) == 0.0


# --- tokens_from_usage ----------------------------------------------------------------------------


def test_tokens_from_usage_with_details() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "total_tokens": 1540,
        "prompt_tokens_details": {"cached_tokens": 200, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }

    assert tokens_from_usage(usage) == Tokens(1200, 340, cached_tokens=200, reasoning_tokens=12)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 8}, Tokens(8, 0)),  # embeddings report no completion tokens
        ({"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": None,
          "completion_tokens_details": None}, Tokens(8, 2)),
        ({"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": {}}, Tokens(8, 2)),
        ({"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": "3"},
          "completion_tokens_details": {"reasoning_tokens": 1.5}}, Tokens(8, 2)),
        ({"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": None}}, Tokens(8, 2)),
    ],
)
def test_tokens_from_usage_missing_details(usage: dict[str, Any], expected: Tokens) -> None:
    assert tokens_from_usage(usage) == expected


@pytest.mark.parametrize(
    "usage",
    [None, [], "usage", 3, {}, {"completion_tokens": 2}, {"prompt_tokens": "8", "completion_tokens": 2},
     {"prompt_tokens": 8.0, "completion_tokens": 2}, {"prompt_tokens": 8, "completion_tokens": None}],
)
def test_tokens_from_usage_unusable(usage: Any) -> None:
    assert tokens_from_usage(usage) is None


def test_tokens_from_usage_tolerates_non_object_details() -> None:
    usage = {"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": [{"cached_tokens": 3}],
             "completion_tokens_details": "n/a"}

    assert tokens_from_usage(usage) == Tokens(8, 2)


# --- estimate_tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(("chars", "tokens"), [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (400, 100), (401, 101)])
def test_estimate_tokens(chars: int, tokens: int) -> None:
    assert estimate_tokens(chars) == tokens


def test_unreachable_redis_spools_and_replay_records_once(tmp_path) -> None:
    spool = tmp_path / "usage-spool.jsonl"

    async def spool_while_down() -> None:
        down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        recorder = UsageRecorder(down, Keys("utest-down:"), RETENTION_DAYS, spool)
        assert await recorder.record(props(request_id="spooled-1"), attempts=1) is True
        assert await recorder.record(props(request_id="spooled-2"), attempts=1) is True
        await down.aclose()

    asyncio.run(spool_while_down())
    assert len(spool.read_bytes().splitlines()) == 2

    async def replay(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, RETENTION_DAYS, spool)
        await recorder.record(props(request_id="spooled-1"))  # the original made it after all
        assert await recorder.replay_spool() == 1
        assert not spool.exists() or spool.stat().st_size == 0
        entries = await redis.xrange(keys.usage_events)
        ids = sorted(json.loads(fields["data"])["properties"]["request_id"] for _, fields in entries)
        assert ids == ["spooled-1", "spooled-2"]  # counted once each
        assert await recorder.replay_spool() == 0

    with_redis(replay)


def test_without_a_spool_an_unreachable_redis_raises() -> None:
    async def run() -> None:
        down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        recorder = UsageRecorder(down, Keys("utest-down:"), RETENTION_DAYS)
        with pytest.raises(RedisConnectionError):
            await recorder.record(props(), attempts=1)
        await down.aclose()

    asyncio.run(run())


def test_records_of_one_loop_turn_share_one_pipeline() -> None:
    async def test(redis: Redis, keys: Keys) -> None:
        recorder = UsageRecorder(redis, keys, retention_days=RETENTION_DAYS)
        real_send, batches = recorder._batch._send, []

        async def counting_send(batch):
            batches.append(len(batch))
            return await real_send(batch)

        recorder._batch._send = counting_send  # type: ignore[method-assign]
        results = await asyncio.gather(*(recorder.record(props(request_id=f"r-{i}")) for i in range(200)))
        assert results == [True] * 200
        assert batches == [200]
        assert await redis.xlen(keys.usage_events) == 200
        # A repeat in the same batch is still counted once.
        again = await asyncio.gather(recorder.record(props(request_id="r-0")), recorder.record(props(request_id="new")))
        assert again == [False, True]
        assert await redis.xlen(keys.usage_events) == 201

    with_redis(test)


def test_cost_prices_cache_writes_apart_and_counts_each_token_once() -> None:
    # 1,000 prompt tokens: 600 read from the cache, 300 written to it, 100 fresh.
    tokens = Tokens(tokens_in=1000, tokens_out=10, cached_tokens=600, cache_write_tokens=300)

    assert cost_usd(tokens, 3.0, 15.0, 0.30, 3.75) == round((100 * 3.0 + 600 * 0.30 + 300 * 3.75 + 10 * 15.0) / 1e6, 10)
    # Without a write price, writes are ordinary input; never billed twice.
    assert cost_usd(tokens, 3.0, 15.0, 0.30) == round((400 * 3.0 + 600 * 0.30 + 10 * 15.0) / 1e6, 10)
    # Writes beyond what is left of the prompt are clamped, as cached reads are.
    assert cost_usd(Tokens(100, 0, cached_tokens=80, cache_write_tokens=500), 1.0, 2.0, 0.5, 1.25) == round(
        (80 * 0.5 + 20 * 1.25) / 1e6, 10)


def test_cache_writes_read_from_usage() -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 5,
             "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 30}}

    assert tokens_from_usage(usage) == Tokens(50, 5, cached_tokens=10, cache_write_tokens=30)
