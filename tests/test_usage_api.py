"""``GET /ai/v1/usage`` and ``reactor ai usage`` against a real gateway: what the counters answer
equals what the usage events add up to, per day, model, user and provider; a caller sees only
their own usage unless their token carries the admin claim."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import date, timedelta

import httpx
import pytest

from api.usage_api import ADMIN_CLAIM, COST_DECIMALS, MAX_DAYS

from .gateway_proc import RunningGateway
from .test_cli_ai import client_env, reactor

USERS = ("usage_alice", "usage_bob")
MODELS = ("mock-local", "gpt-4o-mini")
# Requests per (user, model): different counts so that a wrong grouping cannot add up by chance.
PLAN = {("usage_alice", "mock-local"): 2, ("usage_alice", "gpt-4o-mini"): 1,
        ("usage_bob", "mock-local"): 1, ("usage_bob", "gpt-4o-mini"): 3}
EVENTS_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30


@pytest.fixture(scope="module")
def metered(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    """A gateway of its own (so no other test's usage counts), after the requests of :data:`PLAN`;
    yields it with the usage events those requests left."""
    gw = RunningGateway(tmp_path_factory.mktemp("usage-api"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                        openrouter_mock.url, local_mock.url)
    gw.start()
    try:
        for (user, model), count in PLAN.items():
            client = gw.client(user)
            for i in range(count):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"count me {i}"}])
        expected = sum(PLAN.values())
        deadline = time.monotonic() + EVENTS_TIMEOUT
        while len(gw.usage_events()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [e["properties"] for e in gw.usage_events()]
        assert len(events) == expected, gw.logs()
        yield gw, events
    finally:
        gw.stop()


def sums(events: list[dict]) -> dict:
    return {"requests": len(events), "tokens_in": sum(e["tokens_in"] for e in events),
            "tokens_out": sum(e["tokens_out"] for e in events),
            "cost_usd": round(sum(e["cost_usd"] for e in events), COST_DECIMALS)}


def day_of(event: dict) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(event["timestamp"]))


def grouped(events: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        groups[key(event)].append(event)
    return {name: sums(members) for name, members in groups.items()}


def span(events: list[dict]) -> dict[str, str]:
    days = sorted(day_of(e) for e in events)
    return {"since": days[0], "until": days[-1]}


def get_usage(gw: RunningGateway, token: str, **params) -> httpx.Response:
    return httpx.get(f"{gw.base_url}/usage", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def as_groups(answer: dict) -> dict[str, dict]:
    by = answer["by"]
    return {g[by]: {k: v for k, v in g.items() if k != by} for g in answer["groups"]}


def test_admin_totals_and_groups_equal_the_events(metered):
    gw, events = metered
    admin = gw.token("usage_admin", **{ADMIN_CLAIM: True})
    for by, key in (("day", day_of), ("model", lambda e: e["model_id"]), ("user", lambda e: e["user_id"])):
        response = get_usage(gw, admin, by=by, **span(events))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["object"] == "usage" and answer["by"] == by and answer["user"] is None
        assert answer["totals"] == sums(events)
        assert as_groups(answer) == grouped(events, key)
    # The defaults: the last 30 days, by day, today included.
    answer = get_usage(gw, admin).json()
    assert answer["by"] == "day" and answer["until"] >= max(day_of(e) for e in events)
    assert answer["totals"] == sums(events)


def test_provider_grouping_follows_the_registry_routes(metered):
    gw, events = metered
    listing = httpx.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {gw.token()}"}).json()["data"]
    providers = {m["id"]: "+".join(m["providers"]) for m in listing if not m.get("alias")}
    assert providers["mock-local"] == "local"
    answer = get_usage(gw, gw.token("usage_admin", **{ADMIN_CLAIM: True}), by="provider", **span(events)).json()
    assert as_groups(answer) == grouped(events, lambda e: providers[e["model_id"]])


def test_a_plain_caller_sees_only_their_own_usage(metered):
    gw, events = metered
    alice = gw.token("usage_alice")
    mine = [e for e in events if e["user_id"] == "usage_alice"]
    answer = get_usage(gw, alice, by="model", **span(events)).json()
    assert answer["user"] == "usage_alice"
    assert answer["totals"] == sums(mine)
    assert as_groups(answer) == grouped(mine, lambda e: e["model_id"])
    assert get_usage(gw, alice, user="usage_alice", **span(events)).json()["totals"] == sums(mine)
    # by=user shows one group: the caller.
    assert list(as_groups(get_usage(gw, alice, by="user", **span(events)).json())) == ["usage_alice"]

    refused = get_usage(gw, alice, user="usage_bob")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "forbidden" and error["param"] == "user" and ADMIN_CLAIM in error["message"]
    # A claim that is merely truthy is not the admin claim.
    assert get_usage(gw, gw.token("usage_alice", **{ADMIN_CLAIM: "yes"}), user="usage_bob").status_code == 403


def test_an_admin_reads_anyone_and_filters_by_model(metered):
    gw, events = metered
    admin = gw.token("usage_admin", **{ADMIN_CLAIM: True})
    bobs = [e for e in events if e["user_id"] == "usage_bob"]
    assert get_usage(gw, admin, user="usage_bob", **span(events)).json()["totals"] == sums(bobs)
    local = [e for e in events if e["model_id"] == "mock-local"]
    answer = get_usage(gw, admin, model="mock-local", by="user", **span(events)).json()
    assert answer["totals"] == sums(local)
    assert as_groups(answer) == grouped(local, lambda e: e["user_id"])
    # One user and one model are read without the day's index.
    both = [e for e in bobs if e["model_id"] == "gpt-4o-mini"]
    assert get_usage(gw, admin, user="usage_bob", model="gpt-4o-mini", **span(events)).json()["totals"] == sums(both)
    nobody = get_usage(gw, admin, user="nobody", **span(events)).json()
    assert nobody["totals"] == {"requests": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}
    assert nobody["groups"] == []


@pytest.mark.parametrize("params, param", [
    ({"by": "week"}, "by"),
    ({"since": "2025-02-30"}, "since"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2025-03-02", "until": "2025-03-01"}, "since"),
    ({"since": "2020-01-01", "until": "2025-01-01"}, "since"),
    ({"from": "2025-01-01"}, "from"),
])
def test_bad_parameters_are_400s(metered, params, param):
    gw, _ = metered
    response = get_usage(gw, gw.token("usage_alice"), **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_range_is_bounded_and_a_token_is_required(metered):
    gw, _ = metered
    token = gw.token("usage_alice")
    assert get_usage(gw, token, since="2024-01-01", until="2024-01-01").status_code == 200
    first = date(2024, 1, 1)
    longest = {"since": first.isoformat(), "until": (first + timedelta(days=MAX_DAYS - 1)).isoformat()}
    assert get_usage(gw, token, **longest).status_code == 200
    longer = {**longest, "until": (first + timedelta(days=MAX_DAYS)).isoformat()}
    assert get_usage(gw, token, **longer).status_code == 400
    assert httpx.get(f"{gw.base_url}/usage").status_code == 401


def test_the_cli_prints_the_same_numbers(metered, tmp_path):
    gw, events = metered
    minted = subprocess.run([sys.executable, "-m", "api.cli", "auth", "token", "usage_admin", "--admin",
                             "--config", str(gw.config)], env=gw.env, cwd=gw.workdir, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    assert minted.returncode == 0, minted.stderr
    admin = minted.stdout.strip()
    env = client_env(gw.url, admin, tmp_path)
    window = span(events)
    for by in ("day", "model", "user"):
        result = reactor(env, "ai", "usage", "--by", by, "--since", window["since"], "--until", window["until"], "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == get_usage(gw, admin, by=by, **window).json()
    result = reactor(env, "ai", "usage", "--user", "usage_bob", "--model", "mock-local", "--json", "--since",
                     window["since"], "--until", window["until"])
    bob_local = [e for e in events if e["user_id"] == "usage_bob" and e["model_id"] == "mock-local"]
    assert json.loads(result.stdout)["totals"] == sums(bob_local)

    # Piped, it is plain text: a totals line, then one row per group.
    result = reactor(env, "ai", "usage", "--by", "user", "--since", window["since"], "--until", window["until"])
    assert result.returncode == 0, result.stderr
    total = sums(events)
    assert f"requests {total['requests']:,} · tokens in {total['tokens_in']:,}, out {total['tokens_out']:,}" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("usage_")}
    for user, counts in grouped(events, lambda e: e["user_id"]).items():
        assert rows[user][:3] == [f"{counts['requests']:,}", f"{counts['tokens_in']:,}", f"{counts['tokens_out']:,}"]

    # Another user's usage without the admin claim: one line, non-zero exit.
    plain = client_env(gw.url, gw.token("usage_alice"), tmp_path)
    refused = reactor(plain, "ai", "usage", "--user", "usage_bob")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("reactor: forbidden")
