"""The extension seam through real processes: an extension from a module outside the package, the
region router, and the quota holding across two front doors."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from shared.extensions import RequestInfo
from shared.regions import RegionRouter, RegionSettings
from shared.wire import Target

from .gateway_proc import RunningGateway

OUTSIDE_MODULE = '''
from shared.errors import QuotaExceeded
from shared.extensions import Extension


class FreeTierCap(Extension):
    name = "free-tier-cap"

    def __init__(self, cap):
        self.cap = cap

    async def check_quota(self, request):
        if request.claims.get("tier") == "free" and (request.max_tokens or 0) > self.cap:
            raise QuotaExceeded(f"The free tier allows max_tokens up to {self.cap}.")

    async def route(self, request, candidates):
        seen.append((request.user_id, request.headers.get("x-team"), [t.model_id for t in candidates]))
        return candidates


seen = []


def make(settings):
    return FreeTierCap(100)
'''


@pytest.fixture
def outside_gateway(tmp_path, redis_url, openrouter_mock, local_mock):
    extensions_dir = tmp_path / "site"
    extensions_dir.mkdir()
    (extensions_dir / "team_gateway_ext.py").write_text(OUTSIDE_MODULE)
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra='extensions = ["team_gateway_ext:make"]')
    gw.env["PYTHONPATH"] = f"{gw.env['PYTHONPATH']}:{extensions_dir}"
    gw.start()
    yield gw
    gw.stop()


def test_an_extension_from_outside_the_package_can_refuse(outside_gateway) -> None:
    free = outside_gateway.client("u-free", claims={"tier": "free"})
    paid = outside_gateway.client("u-paid", claims={"tier": "paid"})

    with pytest.raises(openai.RateLimitError) as info:
        free.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    assert info.value.body["code"] == "quota_exceeded"
    assert "up to 100" in info.value.body["message"]
    assert free.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=50).choices[0].message.content
    assert paid.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=500).choices[0].message.content


def test_a_bad_extension_path_stops_start_up_naming_it(tmp_path, redis_url, openrouter_mock, local_mock) -> None:
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra='extensions = ["no_such_module_here:make"]')
    with pytest.raises(RuntimeError) as info:
        gw.start()
    assert "gateway.extensions" in str(info.value) and "no_such_module_here" in str(info.value)


# --- the region router ----------------------------------------------------------------------------

TARGETS = [Target("m", "openrouter", "x/m"), Target("m", "bedrock-eu", "m-eu"), Target("m", "bedrock-us", "m-us")]
ROUTER = RegionRouter(RegionSettings(claim="data_region", header="x-data-region",
                                     providers={"openrouter": "us", "bedrock-eu": "eu-central-1",
                                                "bedrock-us": "us-east-1"},
                                     allowed={"eu": ["eu-central-1"], "us": ["us", "us-east-1"]}))


def _info(claims: dict, headers: dict | None = None) -> RequestInfo:
    return RequestInfo(request_id="r", user_id="u", claims=claims, headers=headers or {}, kind="chat", model="m",
                       prompt_tokens=1)


def test_region_router_keeps_a_caller_in_their_regions() -> None:
    route = lambda info: [t.provider for t in asyncio.run(ROUTER.route(info, TARGETS))]  # noqa: E731

    assert route(_info({"data_region": "eu"})) == ["bedrock-eu"]
    assert route(_info({"data_region": "us"})) == ["openrouter", "bedrock-us"]
    assert route(_info({})) == ["openrouter", "bedrock-eu", "bedrock-us"]
    assert route(_info({"data_region": "mars"})) == []
    # A header may narrow to the token's own residency, never move a caller elsewhere.
    assert route(_info({"data_region": "eu"}, {"x-data-region": "us"})) == ["bedrock-eu"]
    assert route(_info({}, {"x-data-region": "eu"})) == ["bedrock-eu"]


def test_region_router_refuses_rather_than_leaving_the_region(tmp_path, redis_url, openrouter_mock,
                                                              local_mock) -> None:
    extra = textwrap.dedent('''
        [gateway.regions]
        claim = "data_region"
        [gateway.regions.providers]
        local = "eu-central-1"
        openrouter = "us"
        [gateway.regions.allowed]
        eu = ["eu-central-1"]
    ''')
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra=extra)
    gw.start()
    try:
        eu = gw.client("u-eu", claims={"data_region": "eu"})
        assert eu.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as info:
            eu.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["code"] == "no_route"
    finally:
        gw.stop()


# --- the quota across two front doors ------------------------------------------------------------------


def test_quota_holds_exactly_across_two_replicas(tmp_path, redis_url, openrouter_mock, local_mock) -> None:
    extra = "[gateway.quota]\nrequests_per_minute = 25\n"
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra=extra)
    gw.start()
    try:
        second = gw.extra_api()
        token = gw.token("u-quota")

        def ask(i: int) -> httpx.Response:
            base = gw.base_url if i % 2 else second
            return httpx.post(f"{base}/chat/completions", headers={"Authorization": f"Bearer {token}"},
                              json={"model": "mock-local", "messages": [{"role": "user", "content": f"q{i}"}]},
                              timeout=30)

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(ask, range(80)))

        admitted = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(admitted) == 25, [a.status_code for a in answers]
        assert len(refused) == 55
        assert all(r.json()["error"]["code"] == "quota_exceeded" and r.headers.get("retry-after") for r in refused)
        assert all(r.headers.get("x-ratelimit-limit-requests") == "25" for r in refused)
        assert {a.headers.get("x-ratelimit-limit-requests") for a in admitted} == {"25"}
        # Another user is not affected.
        other = httpx.post(f"{second}/chat/completions", headers={"Authorization": f"Bearer {gw.token('u-other')}"},
                           json={"model": "mock-local", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert other.status_code == 200
    finally:
        gw.stop()
