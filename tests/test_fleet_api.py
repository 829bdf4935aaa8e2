"""``GET /ai/v1/fleet``: pools, workers, queues and cooling routes as an operator (and the console) sees them."""

from __future__ import annotations

import httpx


def test_fleet_shows_each_pool_to_an_admin_only(gateway) -> None:
    admin = {"Authorization": f"Bearer {gateway.token('ops', reactor_admin=True)}"}
    plain = {"Authorization": f"Bearer {gateway.token('someone')}"}
    gateway.redis.set(f"{gateway.prefix}route:local:mock/local-model:cooldown", "1", ex=30)
    try:
        body = httpx.get(f"{gateway.base_url}/fleet", headers=admin, timeout=5).json()
    finally:
        gateway.redis.delete(f"{gateway.prefix}route:local:mock/local-model:cooldown")

    pools = {p["provider"]: p for p in body["pools"]}
    assert pools["openrouter"]["live_workers"] == 1 and pools["local"]["live_workers"] == 1
    assert pools["idle"]["live_workers"] == 0 and pools["idle"]["slots"] == 0
    assert pools["local"]["slots"] > 0
    assert pools["local"]["cooling_routes"] == ["mock/local-model"]
    assert pools["openrouter"]["cooling_routes"] == []
    assert body["registry"]["version"] >= 1 and body["registry"]["last_error"] is None

    refused = httpx.get(f"{gateway.base_url}/fleet", headers=plain, timeout=5)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert httpx.get(f"{gateway.base_url}/fleet", timeout=5).status_code == 401
