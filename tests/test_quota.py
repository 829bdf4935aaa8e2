"""Per-user quotas against the real Redis: exact under concurrency, reserved then settled, fail closed."""

import asyncio
import logging
import os
import random
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import uuid4

import msgspec
import pytest
from redis.asyncio import Redis

from shared.config import ConfigError, Settings
from shared.errors import QuotaExceeded, Unavailable
from shared.extensions import RequestInfo, Reservation
from shared.keys import Keys
from shared.quota import (
    DAY_TTL_S,
    MINUTE_TTL_S,
    REQUESTS_PER_MINUTE,
    SETTLED_TTL_S,
    TOKENS_PER_DAY,
    TOKENS_PER_MINUTE,
    UNAVAILABLE_MESSAGE,
    USD_PER_DAY,
    QuotaExtension,
    QuotaLimits,
    QuotaSettings,
    make_extension,
)
from shared.usage import UsageProperties

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SOURCE = "reactor.toml"
NOON = 1_735_732_800.0  # 2025-01-01T12:00:00Z, the start of a minute
T0 = NOON + 17.5  # 42.5 s before the next minute, 43 182.5 s before the next UTC day
MINUTE = int(T0 // 60)
DAY = int(T0 // 86_400)
LIMIT_NAMES = "requests_per_minute, tokens_per_minute, tokens_per_day, usd_per_day"

T = TypeVar("T")


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_redis(test: Callable[[Redis, Keys], Awaitable[T]]) -> T:
    """Run ``test`` against the real Redis under a prefix of its own, and delete that prefix afterwards."""
    keys = Keys(prefix=f"qtest-{uuid4().hex[:8]}:")

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


def refused_url() -> str:
    """A Redis URL whose port refuses connections (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def settings(**table: Any) -> QuotaSettings:
    return QuotaSettings.from_table(table, SOURCE)


def request(user: str = "u1", prompt: int = 100, max_tokens: int | None = None, kind: str = "chat",
            claims: dict[str, Any] | None = None) -> RequestInfo:
    return RequestInfo(request_id=f"req-{uuid4().hex[:8]}", user_id=user, claims=claims or {"sub": user},
                       headers={}, kind=kind, model="gpt-4o-mini", prompt_tokens=prompt, max_tokens=max_tokens)


def usage(tokens_in: int, tokens_out: int, cost: float = 0.0, status: str = "ok", user: str = "u1",
          request_id: str | None = None) -> UsageProperties:
    return UsageProperties(model_id="gpt-4o-mini", user_id=user, tokens_in=tokens_in, tokens_out=tokens_out,
                           request_id=request_id or f"req-{uuid4().hex[:8]}", provider="openrouter", timestamp=T0,
                           latency_ms=10.0, cost_usd=cost, status=status)


async def refusal(quota: QuotaExtension, info: RequestInfo) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        await quota.check_quota(info)
    return caught.value


# --- settings -------------------------------------------------------------------------------------


def test_from_table_reads_defaults_claims_users_and_completion_size():
    parsed = QuotaSettings.from_table({
        "requests_per_minute": 60,
        "tokens_per_day": 2_000_000,
        "default_completion_tokens": 512,
        "claims": {"tier": {"free": {"tokens_per_day": 100_000}, "pro": {"usd_per_day": 5}}},
        "users": {"alice": {"usd_per_day": 25.5, "tokens_per_minute": 9000}},
    }, SOURCE)
    assert parsed == QuotaSettings(
        defaults=QuotaLimits(requests_per_minute=60, tokens_per_day=2_000_000),
        claims={"tier": {"free": QuotaLimits(tokens_per_day=100_000), "pro": QuotaLimits(usd_per_day=5.0)}},
        users={"alice": QuotaLimits(usd_per_day=25.5, tokens_per_minute=9000)},
        default_completion_tokens=512,
    )
    assert QuotaSettings.from_table({}, SOURCE) == QuotaSettings()
    assert QuotaSettings().default_completion_tokens == 1024
    assert QuotaSettings().defaults.unlimited


@pytest.mark.parametrize(("table", "message"), [
    ({"users": {"u1": {"tokens_per_day": -5}}},
     'gateway.quota.users."u1".tokens_per_day: expected a whole number of tokens, 0 or more, got -5'),
    ({"users": {"u1": {"tokens_per_day": "lots"}}},
     "gateway.quota.users.\"u1\".tokens_per_day: expected a whole number of tokens, 0 or more, got 'lots'"),
    ({"requests_per_minute": True},
     "gateway.quota.requests_per_minute: expected a whole number of requests, 0 or more, got True"),
    ({"requests_per_minute": 2.5},
     "gateway.quota.requests_per_minute: expected a whole number of requests, 0 or more, got 2.5"),
    ({"usd_per_day": -0.5}, "gateway.quota.usd_per_day: expected a number of US dollars, 0 or more, got -0.5"),
    ({"claims": {"tier": {"free": {"tokens_per_hour": 1}}}},
     f'gateway.quota.claims."tier"."free".tokens_per_hour: unknown setting (expected one of {LIMIT_NAMES})'),
    ({"burst": 3}, f"gateway.quota.burst: unknown setting (expected one of {LIMIT_NAMES}, users, claims, "
                   "default_completion_tokens)"),
    ({"users": ["u1"]}, "gateway.quota.users: expected a table keyed by user id, got ['u1']"),
    ({"users": {"u1": 5}}, f'gateway.quota.users."u1": expected a table of limits ({LIMIT_NAMES}), got 5'),
    ({"claims": {"tier": 3}}, 'gateway.quota.claims."tier": expected a table keyed by claim value, got 3'),
    ({"default_completion_tokens": -1},
     "gateway.quota.default_completion_tokens: expected a whole number of tokens, 0 or more, got -1"),
])
def test_from_table_names_the_bad_key(table, message):
    with pytest.raises(ConfigError) as caught:
        QuotaSettings.from_table(table, SOURCE)
    assert str(caught.value) == f"{SOURCE}: {message}"


def test_limits_for_user_over_claims_over_defaults():
    quota = settings(
        requests_per_minute=10, tokens_per_day=1000,
        claims={"tier": {"free": {"tokens_per_day": 100, "tokens_per_minute": 50}, "2": {"requests_per_minute": 2}},
                "groups": {"ml": {"requests_per_minute": 20, "tokens_per_day": 300}}},
        users={"u1": {"tokens_per_day": 5000}},
    )
    assert quota.limits_for("nobody", {}) == QuotaLimits(requests_per_minute=10, tokens_per_day=1000)
    assert quota.limits_for("nobody", {"tier": "free"}) == QuotaLimits(
        requests_per_minute=10, tokens_per_minute=50, tokens_per_day=100)
    # The user's own limit wins over the claim's; the claim's other limits stay.
    assert quota.limits_for("u1", {"tier": "free"}) == QuotaLimits(
        requests_per_minute=10, tokens_per_minute=50, tokens_per_day=5000)
    assert quota.limits_for("u1", {}) == QuotaLimits(requests_per_minute=10, tokens_per_day=5000)
    # A list claim matches any member; of two matching entries the later one in the table wins.
    assert quota.limits_for("nobody", {"tier": "free", "groups": ["x", "ml"]}) == QuotaLimits(
        requests_per_minute=20, tokens_per_minute=50, tokens_per_day=300)
    # Numbers match their decimal text; booleans, other values and other claims match nothing.
    assert quota.limits_for("nobody", {"tier": 2}).requests_per_minute == 2
    assert quota.limits_for("nobody", {"tier": True}) == quota.defaults
    assert quota.limits_for("nobody", {"tier": "pro", "free": "tier"}) == quota.defaults


def test_estimate_is_prompt_plus_the_completion_it_may_produce():
    quota = settings(default_completion_tokens=700)
    assert quota.estimate(request(prompt=100)) == 800
    assert quota.estimate(request(prompt=100, max_tokens=50)) == 150
    assert quota.estimate(request(prompt=100, max_tokens=0)) == 100
    assert quota.estimate(request(prompt=100, kind="embeddings")) == 100


# --- admission ------------------------------------------------------------------------------------


def test_requests_per_minute_is_exact_across_two_replicas():
    """300 concurrent checks through two replicas, each in its own thread and pool: exactly 50 pass."""
    limit, per_replica = 50, 150
    quota_settings = settings(requests_per_minute=limit)
    barrier = threading.Barrier(2)

    async def test(redis: Redis, keys: Keys) -> None:
        results: list[list[Any]] = [[], []]

        async def replica(out: list[Any]) -> None:
            pool = Redis.from_url(REDIS_URL)
            quota = QuotaExtension(pool, keys, quota_settings, clock=Clock())

            async def one() -> Any:
                # Spread the calls over many loop turns, so both replicas send many script calls.
                await asyncio.sleep(random.random() * 0.05)
                try:
                    return await quota.check_quota(request())
                except QuotaExceeded as exc:
                    return exc

            try:
                barrier.wait()
                out.extend(await asyncio.gather(*(one() for _ in range(per_replica))))
            finally:
                await pool.aclose()

        threads = [threading.Thread(target=asyncio.run, args=(replica(out),)) for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes = results[0] + results[1]
        assert len(outcomes) == 2 * per_replica
        admitted = [r for r in outcomes if isinstance(r, Reservation)]
        refused = [r for r in outcomes if isinstance(r, QuotaExceeded)]
        assert len(admitted) == limit
        assert len(refused) == 2 * per_replica - limit
        # Each admitted request saw a different count: the remaining values are 49 down to 0.
        quota = QuotaExtension(redis, keys, quota_settings, clock=Clock())
        remaining = sorted(int(quota.headers(r)["x-ratelimit-remaining-requests"]) for r in admitted)
        assert remaining == list(range(limit))
        assert {exc.headers["Retry-After"] for exc in refused} == {"43"}
        assert {exc.headers["x-ratelimit-remaining-requests"] for exc in refused} == {"0"}
        assert all(exc.status == 429 and exc.code == "quota_exceeded" for exc in refused)
        assert "requests_per_minute" in refused[0].message
        assert await redis.hget(keys.quota_minute("u1", MINUTE), "requests") == str(limit)

    with_redis(test)


def test_tokens_per_minute_reserve_then_settle():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(tokens_per_minute=1000), clock=Clock())
        minute = keys.quota_minute("u1", MINUTE)
        first = await quota.check_quota(request(prompt=100, max_tokens=200))  # reserves 300
        assert quota.headers(first) == {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "700"}
        second = await quota.check_quota(request(prompt=100, max_tokens=500))  # reserves 600
        assert await redis.hget(minute, "tokens") == "900"

        refused = await refusal(quota, request(prompt=100, max_tokens=200))
        assert refused.headers == {"Retry-After": "43", "x-ratelimit-limit-tokens": "1000",
                                   "x-ratelimit-remaining-tokens": "100"}
        assert refused.message == ("Quota exceeded (tokens_per_minute): 1000 tokens per minute are allowed and "
                                   "this request may use 300. Try again in 43 s.")
        assert await redis.hget(minute, "tokens") == "900"  # a refusal changes nothing

        # It used less than it reserved: the difference comes back at once.
        await quota.after_usage(usage(50, 30), [first])
        assert await redis.hget(minute, "tokens") == "680"
        third = await quota.check_quota(request(prompt=100, max_tokens=200))
        assert quota.headers(third)["x-ratelimit-remaining-tokens"] == "20"
        # It used more than it reserved: all of it is counted.
        await quota.after_usage(usage(100, 900), [second])
        assert await redis.hget(minute, "tokens") == "1380"
        assert "tokens_per_minute" in (await refusal(quota, request(prompt=1, max_tokens=0))).message

    with_redis(test)


def test_settlement_lands_in_the_windows_reserved_in():
    async def test(redis: Redis, keys: Keys) -> None:
        clock = Clock()
        quota = QuotaExtension(redis, keys, settings(tokens_per_minute=1000), clock=clock)
        first = await quota.check_quota(request(prompt=100, max_tokens=200))
        clock.now += 60
        await quota.check_quota(request(prompt=10, max_tokens=0))
        await quota.after_usage(usage(40, 10), [first])
        assert await redis.hget(keys.quota_minute("u1", MINUTE), "tokens") == "50"
        assert await redis.hget(keys.quota_minute("u1", MINUTE + 1), "tokens") == "10"

    with_redis(test)


def test_failed_request_releases_its_tokens_but_counts_as_a_request():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(requests_per_minute=10, tokens_per_minute=1000,
                                                     tokens_per_day=5000), clock=Clock())
        held = await quota.check_quota(request(prompt=100, max_tokens=200))
        minute, day = keys.quota_minute("u1", MINUTE), keys.quota_day("u1", DAY)
        assert await redis.hgetall(minute) == {"requests": "1", "tokens": "300"}
        assert await redis.hgetall(day) == {"tokens": "300"}
        await quota.after_usage(usage(0, 0, status="error"), [held])
        assert await redis.hgetall(minute) == {"requests": "1", "tokens": "0"}
        assert await redis.hgetall(day) == {"tokens": "0"}
        # Released against a counter that holds less than was reserved: it stops at zero.
        second = await quota.check_quota(request(prompt=100, max_tokens=200))
        await redis.hset(minute, "tokens", 100)
        await quota.after_usage(usage(0, 0, status="error"), [second])
        assert await redis.hgetall(minute) == {"requests": "2", "tokens": "0"}
        assert await redis.hgetall(day) == {"tokens": "0"}


def test_only_the_first_settlement_of_a_request_counts():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(tokens_per_minute=10_000, usd_per_day=5), clock=Clock())
        held = await quota.check_quota(request(prompt=100, max_tokens=200))
        # The front door settles for a worker it thought lost; then the slow worker settles too.
        await quota.after_usage(usage(100, 400, cost=0.5, request_id="req-twice"), [held])
        await quota.after_usage(usage(100, 900, cost=0.9, request_id="req-twice"), [held])
        await quota.after_usage(usage(0, 0, status="error", request_id="req-twice"), [held])
        assert await redis.hget(keys.quota_minute("u1", MINUTE), "tokens") == "500"
        assert await redis.hget(keys.quota_day("u1", DAY), "usd") == "0.5"

    with_redis(test)


def test_usd_per_day_blocks_once_settled_spend_reaches_the_limit():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(usd_per_day=1.0), clock=Clock())
        first = await quota.check_quota(request())
        assert quota.headers(first) == {}  # dollars have no x-ratelimit header
        await quota.after_usage(usage(10, 10, cost=0.75), [first])
        second = await quota.check_quota(request())  # $0.75 < $1
        await quota.after_usage(usage(10, 10, cost=0.25), [second])
        assert await redis.hget(keys.quota_day("u1", DAY), "usd") == "1"
        refused = await refusal(quota, request())
        assert refused.headers == {"Retry-After": "43183"}  # the next UTC day
        assert refused.message == ("Quota exceeded (usd_per_day): $1 spent today of $1 allowed per day (UTC). "
                                   "Try again in 43183 s.")
        # Nothing but the spend was written: no token or request counters for a dollar-only user.
        assert await redis.hgetall(keys.quota_day("u1", DAY)) == {"usd": "1"}
        assert await redis.exists(keys.quota_minute("u1", MINUTE)) == 0

    with_redis(test)


def test_windows_roll_over_with_the_clock():
    async def test(redis: Redis, keys: Keys) -> None:
        clock = Clock()
        quota = QuotaExtension(redis, keys, settings(requests_per_minute=2, tokens_per_day=500), clock=clock)
        await quota.check_quota(request(prompt=10, max_tokens=0))
        await quota.check_quota(request(prompt=10, max_tokens=0))
        refused = await refusal(quota, request(prompt=10, max_tokens=0))
        assert refused.headers["Retry-After"] == "43"
        clock.now = NOON + 60  # the next minute
        again = await quota.check_quota(request(prompt=10, max_tokens=0))
        assert quota.headers(again) == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
                                        "x-ratelimit-limit-tokens": "500", "x-ratelimit-remaining-tokens": "470"}

        clock.now = (DAY + 1) * 86_400 - 10  # ten seconds before midnight UTC
        await quota.check_quota(request(prompt=400, max_tokens=0))
        refused = await refusal(quota, request(prompt=100, max_tokens=0))
        assert refused.headers["Retry-After"] == "10"
        assert "tokens_per_day" in refused.message
        clock.now += 10
        tomorrow = await quota.check_quota(request(prompt=100, max_tokens=0))
        assert quota.headers(tomorrow)["x-ratelimit-remaining-tokens"] == "400"

    with_redis(test)


def test_several_failed_limits_wait_for_the_last_window():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(requests_per_minute=1, tokens_per_day=150), clock=Clock())
        await quota.check_quota(request(prompt=100, max_tokens=0))
        refused = await refusal(quota, request(prompt=100, max_tokens=0))
        assert refused.headers["Retry-After"] == "43183"
        assert refused.message.startswith("Quota exceeded (requests_per_minute, tokens_per_day): ")

    with_redis(test)


def test_a_request_that_can_never_fit_has_no_retry_after():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(tokens_per_minute=1000, requests_per_minute=5), clock=Clock())
        refused = await refusal(quota, request(prompt=100, max_tokens=2000))
        assert not refused.retryable
        assert refused.headers == {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "5",
                                   "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "1000"}
        assert refused.message == ("Quota exceeded (tokens_per_minute): this request may use 2100 tokens, more "
                                   "than the 1000 tokens per minute allowed; lower max_tokens or shorten the "
                                   "prompt.")
        assert [key async for key in redis.scan_iter(match=f"{keys.prefix}*")] == []

    with_redis(test)


def test_every_key_written_has_a_ttl():
    async def test(redis: Redis, keys: Keys) -> None:
        clock = Clock()
        all_limits = settings(requests_per_minute=10, tokens_per_minute=1000, tokens_per_day=5000, usd_per_day=5)
        quota = QuotaExtension(redis, keys, all_limits, clock=clock)
        held = await quota.check_quota(request(max_tokens=200))
        await quota.after_usage(usage(100, 20, cost=0.01, request_id="req-1"), [held])
        # A dollar-only user: the settlement itself creates the day's hash.
        dollars = QuotaExtension(redis, keys, settings(usd_per_day=5), clock=clock)
        await dollars.after_usage(usage(1, 1, cost=0.5, user="u2", request_id="req-2"),
                                  [await dollars.check_quota(request("u2"))])
        # A settlement after its minute expired does not bring the minute back, even one that adds.
        late = await quota.check_quota(request("u3", max_tokens=200))
        await redis.delete(keys.quota_minute("u3", MINUTE))
        await quota.after_usage(usage(400, 100, user="u3", request_id="req-3"), [late])

        written = sorted([key async for key in redis.scan_iter(match=f"{keys.prefix}*")])
        settled = [keys.quota_settled(f"req-{i}") for i in (1, 2, 3)]
        assert written == sorted([keys.quota_minute("u1", MINUTE), keys.quota_day("u1", DAY),
                                  keys.quota_day("u2", DAY), keys.quota_day("u3", DAY), *settled])
        for key in written:
            bound = (MINUTE_TTL_S if key.startswith(keys.prefix + "quota:m:")
                     else SETTLED_TTL_S if key in settled else DAY_TTL_S)
            assert 0 < await redis.pttl(key) <= bound * 1000, key
        assert await redis.hgetall(keys.quota_day("u1", DAY)) == {"tokens": "120", "usd": "0.01"}
        assert await redis.hgetall(keys.quota_day("u2", DAY)) == {"usd": "0.5"}
        assert await redis.hgetall(keys.quota_day("u3", DAY)) == {"tokens": "500"}

    with_redis(test)


# --- headers, transport, Redis trouble ------------------------------------------------------------


def test_reservation_survives_msgpack_and_carries_the_headers():
    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(requests_per_minute=10, tokens_per_day=5000), clock=Clock())
        held = await quota.check_quota(request(prompt=100, max_tokens=200))
        assert held.extension == "quota"
        assert held.data == ["u1", MINUTE, DAY, REQUESTS_PER_MINUTE | TOKENS_PER_DAY, 300, 10, 9, 5000, 4700]
        travelled = msgspec.msgpack.decode(msgspec.msgpack.encode(held), type=Reservation)
        assert quota.headers(travelled) == {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9",
                                            "x-ratelimit-limit-tokens": "5000", "x-ratelimit-remaining-tokens": "4700"}
        assert quota.headers(None) == {}
        assert quota.headers(Reservation("other", [1, 2])) == {}
        # Another extension's reservation is not touched; this one's is settled.
        await quota.after_usage(usage(100, 100), [Reservation("other", [1, 2]), travelled])
        assert await redis.hget(keys.quota_day("u1", DAY), "tokens") == "200"

    with_redis(test)


def test_unreachable_redis_fails_closed_and_settling_carries_on(caplog):
    async def test() -> None:
        redis = Redis.from_url(refused_url(), socket_connect_timeout=2)
        try:
            quota = QuotaExtension(redis, Keys("qtest-down:"), settings(requests_per_minute=10), clock=Clock())
            with pytest.raises(Unavailable) as caught:
                await quota.check_quota(request())
            assert caught.value.status == 503
            assert caught.value.message == UNAVAILABLE_MESSAGE
            assert caught.value.message == ("The quota store (Redis) is unreachable; requests are refused until "
                                            "it is back.")
            held = Reservation("quota", ["u1", MINUTE, DAY, TOKENS_PER_MINUTE | USD_PER_DAY, 300, 10, 9, 1000, 700])
            with caplog.at_level(logging.WARNING, logger="reactor.quota"):
                await quota.after_usage(usage(10, 10), [held])
            assert "quota of u1 not settled" in caplog.text
        finally:
            await redis.aclose()

    asyncio.run(test())


def test_a_user_without_limits_never_touches_redis():
    async def unreachable() -> None:
        redis = Redis.from_url(refused_url(), socket_connect_timeout=2)
        try:
            quota = QuotaExtension(redis, Keys("qtest-down:"), settings(users={"u1": {"requests_per_minute": 1}}))
            assert await quota.check_quota(request("u2")) is None
            await quota.after_usage(usage(10, 10, user="u2"), [])
            # With no limits configured at all, nobody is metered.
            assert await QuotaExtension(redis, Keys("qtest-down:"), settings()).check_quota(request()) is None
        finally:
            await redis.aclose()

    asyncio.run(unreachable())

    async def test(redis: Redis, keys: Keys) -> None:
        quota = QuotaExtension(redis, keys, settings(users={"u1": {"requests_per_minute": 1}}))
        assert await quota.check_quota(request("u2")) is None
        assert [key async for key in redis.scan_iter(match=f"{keys.prefix}*")] == []

    with_redis(test)


def test_make_extension_reads_the_gateway_settings():
    prefix = f"qtest-{uuid4().hex[:8]}:"

    async def test() -> None:
        quota = make_extension(Settings(redis_url=REDIS_URL, key_prefix=prefix,
                                        quota={"requests_per_minute": 1}, source=SOURCE))
        try:
            assert quota.settings.defaults == QuotaLimits(requests_per_minute=1)
            assert await quota.check_quota(request()) is not None
        finally:
            redis = Redis.from_url(REDIS_URL)
            leftovers = [key async for key in redis.scan_iter(match=f"{prefix}*")]
            if leftovers:
                await redis.delete(*leftovers)
            await redis.aclose()
            await quota.close()

    asyncio.run(test())
    with pytest.raises(ConfigError) as caught:
        make_extension(Settings(quota={"users": {"u1": {"requests_per_minute": -1}}}, source=SOURCE))
    assert str(caught.value) == (f'{SOURCE}: gateway.quota.users."u1".requests_per_minute: expected a whole '
                                 "number of requests, 0 or more, got -1")
