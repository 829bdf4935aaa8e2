"""The embedded Identity against a real gateway: sign-in, rotating refresh tokens, sign-out, one
error for every failed sign-in, rate limits shared by two front doors, argon2id hashes, JWKS."""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
import openai
import pytest
from argon2 import PasswordHasher
from redis.asyncio import Redis as AsyncRedis

import api.identity as identity
from api.app import create_app
from api.identity import Passwords, Users
from shared.config import Settings
from shared.keys import Keys

from .gateway_proc import RunningGateway

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    """A gateway of this module's own: its failure counters and users must not meet other tests'."""
    gateway = RunningGateway(tmp_path_factory.mktemp("identity"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def no_failures(gw):
    """Every test starts with no failed sign-ins counted (they all come from 127.0.0.1)."""
    keys = Keys(gw.prefix)
    for pattern in (keys.identity_failures_email("*"), keys.identity_failures_address("*")):
        for key in gw.redis.scan_iter(match=pattern):
            gw.redis.delete(key)


def users(gw: RunningGateway, action: Callable[[Users], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client = AsyncRedis.from_url(gw.redis_url)
        try:
            return await action(Users(client, Keys(gw.prefix)))
        finally:
            await client.aclose()

    return asyncio.run(run())


def new_user(gw: RunningGateway, password: str = PASSWORD) -> tuple[str, str]:
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    user = users(gw, lambda u: u.create(email, password))
    return email, user.id


def auth(base: str) -> str:
    """The Identity API of a front door, from its root or its /ai/v1 base URL."""
    return base.removesuffix("/ai/v1") + "/auth/v1"


def sign_in(base: str, email: str, password: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{auth(base)}/token", params={"grant_type": "password"},
                      json={"email": email, "password": password}, timeout=10, **kwargs)


def refresh(base: str, token: str) -> httpx.Response:
    return httpx.post(f"{auth(base)}/token", params={"grant_type": "refresh_token"}, json={"refresh_token": token},
                      timeout=10)


def tokens(gw: RunningGateway, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = sign_in(gw.url, email, password)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- sign-in and what the token is good for -------------------------------------------------------


def test_signed_in_token_works_on_the_gateway_and_with_the_openai_sdk(gw):
    email, user_id = new_user(gw)

    response = sign_in(gw.url, email.upper(), PASSWORD)  # emails are matched lower-cased

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == identity.ACCESS_TOKEN_TTL_S == 900
    assert abs(answer["expires_at"] - (time.time() + 900)) < 5
    assert answer["user"] == {"id": user_id, "email": email}
    assert user_id.startswith("user_") and len(user_id) == len("user_") + 26
    assert answer["refresh_token"] and "." not in answer["refresh_token"]  # opaque, not a JWT
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user_id and claims["email"] == email
    assert claims["exp"] - claims["iat"] == 900

    models = httpx.get(f"{gw.base_url}/models", headers=bearer(answer["access_token"]), timeout=10)
    assert models.status_code == 200 and any(m["id"] == "mock-local" for m in models.json()["data"])
    client = openai.OpenAI(base_url=gw.base_url, api_key=answer["access_token"], max_retries=0, timeout=20)
    completion = client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "signed in"}])
    assert completion.choices[0].message.content == "Hello from mock: signed in"
    # Usage is metered for the signed-in user.
    deadline = time.monotonic() + 5
    while not any(e["properties"]["user_id"] == user_id for e in gw.usage_events()):
        assert time.monotonic() < deadline, gw.usage_events()
        time.sleep(0.1)


def test_jwks_serves_the_key_that_verifies_access_tokens(gw):
    email, user_id = new_user(gw)
    access = tokens(gw, email)["access_token"]

    response = httpx.get(f"{auth(gw.url)}/.well-known/jwks.json", timeout=10)

    assert response.status_code == 200
    (jwk,) = response.json()["keys"]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA" and "d" not in jwk
    assert jwk["kid"] == jwt.get_unverified_header(access)["kid"]
    claims = jwt.decode(access, jwt.PyJWK(jwk).key, algorithms=["EdDSA"])
    assert claims["sub"] == user_id
    # The key is the gateway's local key: the one `reactor auth token` mints with too.
    assert jwk["kid"] == jwt.get_unverified_header(gw.token())["kid"]


def test_user_endpoint(gw):
    email, user_id = new_user(gw)
    access = tokens(gw, email)["access_token"]

    me = httpx.get(f"{auth(gw.url)}/user", headers=bearer(access), timeout=10)
    assert me.status_code == 200 and me.json()["id"] == user_id and me.json()["email"] == email

    # A script token of `reactor auth token` names a user id only.
    script = httpx.get(f"{auth(gw.url)}/user", headers=bearer(gw.token("user_script")), timeout=10)
    assert script.json() == {"id": "user_script", "email": None}

    assert httpx.get(f"{auth(gw.url)}/user", timeout=10).status_code == 401
    users(gw, lambda u: u.set_disabled(email, True))
    refused = httpx.get(f"{auth(gw.url)}/user", headers=bearer(access), timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


# --- refresh tokens -------------------------------------------------------------------------------


def test_refresh_rotates_and_a_reused_token_revokes_its_session(gw):
    email, user_id = new_user(gw)
    first = tokens(gw, email)
    other_session = tokens(gw, email)

    second = refresh(gw.url, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user"] == {"id": user_id, "email": email}
    assert jwt.decode(second["access_token"], options={"verify_signature": False})["sub"] == user_id
    assert httpx.get(f"{gw.base_url}/models", headers=bearer(second["access_token"]), timeout=10).status_code == 200

    # The spent token is refused, and presenting it ends the session: its successor is refused too.
    reused = refresh(gw.url, first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "invalid_grant"
    after = refresh(gw.url, second["refresh_token"])
    assert after.status_code == 401 and after.json() == reused.json()
    # Another sign-in of the same user is another session, untouched.
    assert refresh(gw.url, other_session["refresh_token"]).status_code == 200


def test_concurrent_use_of_one_refresh_token_lets_one_through_and_ends_the_session(gw):
    email, _ = new_user(gw)
    token = tokens(gw, email)["refresh_token"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: refresh(gw.url, token), range(4)))

    winners = [r.json() for r in results if r.status_code == 200]
    assert len(winners) == 1 and sorted(r.status_code for r in results) == [200, 401, 401, 401]
    assert refresh(gw.url, winners[0]["refresh_token"]).status_code == 401


def test_unknown_refresh_tokens_are_refused(gw):
    for token in ("nonsense", "x" * 43):
        response = refresh(gw.url, token)
        assert response.status_code == 401
        assert response.json()["error"] == {"message": identity.INVALID_GRANT, "type": "invalid_request_error",
                                             "param": None, "code": "invalid_grant"}


def test_logout_revokes_the_session(gw):
    email, _ = new_user(gw)
    session = tokens(gw, email)

    response = httpx.post(f"{auth(gw.url)}/logout", headers=bearer(session["access_token"]),
                          json={"refresh_token": session["refresh_token"]}, timeout=10)

    assert response.status_code == 204
    assert refresh(gw.url, session["refresh_token"]).status_code == 401


def test_logout_with_the_access_token_or_the_refresh_token_alone(gw):
    email, _ = new_user(gw)
    by_access, by_refresh, kept = tokens(gw, email), tokens(gw, email), tokens(gw, email)

    assert httpx.post(f"{auth(gw.url)}/logout", headers=bearer(by_access["access_token"]),
                      timeout=10).status_code == 204
    # An expired access token is no obstacle: the refresh token is enough.
    assert httpx.post(f"{auth(gw.url)}/logout", headers=bearer(gw.token(ttl=-3600)),
                      json={"refresh_token": by_refresh["refresh_token"]}, timeout=10).status_code == 204

    assert refresh(gw.url, by_access["refresh_token"]).status_code == 401
    assert refresh(gw.url, by_refresh["refresh_token"]).status_code == 401
    assert refresh(gw.url, kept["refresh_token"]).status_code == 200
    # Neither token: nothing to sign out of.
    refused = httpx.post(f"{auth(gw.url)}/logout", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_another_users_refresh_token_is_not_revoked_by_my_logout(gw):
    mine, theirs = tokens(gw, new_user(gw)[0]), tokens(gw, new_user(gw)[0])

    httpx.post(f"{auth(gw.url)}/logout", headers=bearer(mine["access_token"]),
               json={"refresh_token": theirs["refresh_token"]}, timeout=10)

    assert refresh(gw.url, theirs["refresh_token"]).status_code == 200


def test_disabling_or_removing_a_user_ends_their_sessions(gw):
    disabled, _ = new_user(gw)
    removed, _ = new_user(gw)
    session_d, session_r = tokens(gw, disabled), tokens(gw, removed)

    users(gw, lambda u: u.set_disabled(disabled, True))
    users(gw, lambda u: u.remove(removed))

    assert refresh(gw.url, session_d["refresh_token"]).status_code == 401
    assert refresh(gw.url, session_r["refresh_token"]).status_code == 401
    users(gw, lambda u: u.set_disabled(disabled, False))
    assert sign_in(gw.url, disabled, PASSWORD).status_code == 200


# --- failed sign-ins ------------------------------------------------------------------------------


def test_every_failed_sign_in_gives_the_same_answer(gw):
    email, _ = new_user(gw)
    disabled, _ = new_user(gw)
    users(gw, lambda u: u.set_disabled(disabled, True))

    answers = [sign_in(gw.url, email, "wrong password"),
               sign_in(gw.url, f"nobody-{uuid.uuid4().hex[:6]}@example.com", PASSWORD),
               sign_in(gw.url, disabled, PASSWORD)]

    for answer in answers:
        assert answer.status_code == 400
        assert answer.content == answers[0].content
        assert answer.headers.get("retry-after") is None
    assert answers[0].json() == {"error": {"message": "Invalid email or password.", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_credentials"}}


def test_an_unknown_email_costs_a_password_check_too(gw):
    email, _ = new_user(gw)

    def timed(address: str) -> float:
        start = time.perf_counter()
        assert sign_in(gw.url, address, "wrong password").status_code == 400
        return time.perf_counter() - start

    known = statistics.median(timed(email) for _ in range(3))
    unknown = statistics.median(timed(f"ghost-{i}@example.com") for i in range(3))
    # Without the dummy hash an unknown email would answer in about a millisecond.
    assert unknown > known * 0.4, (known, unknown)


def test_failures_per_account_are_limited_across_front_doors(gw):
    email, _ = new_user(gw)
    other, _ = new_user(gw)
    second = gw.extra_api()

    for base in (gw.url, second, gw.url, second, gw.url):
        assert sign_in(base, email, "wrong password").status_code == 400

    for base in (second, gw.url):
        limited = sign_in(base, email, PASSWORD)  # even the right password waits out the window
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "too_many_attempts"
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert 0 < int(limited.headers["retry-after"]) <= identity.FAILURE_WINDOW_S
    # Other accounts are not affected.
    assert sign_in(second, other, PASSWORD).status_code == 200


def test_a_success_resets_the_account_count(gw):
    email, _ = new_user(gw)

    for _ in range(identity.MAX_FAILURES_PER_ACCOUNT - 1):
        assert sign_in(gw.url, email, "wrong password").status_code == 400
    assert sign_in(gw.url, email, PASSWORD).status_code == 200
    for _ in range(identity.MAX_FAILURES_PER_ACCOUNT - 1):
        assert sign_in(gw.url, email, "wrong password").status_code == 400
    assert sign_in(gw.url, email, PASSWORD).status_code == 200


def test_failures_per_address_are_limited_across_front_doors(gw):
    email, _ = new_user(gw)
    second = gw.extra_api()
    # uvicorn takes the client address from X-Forwarded-For when the proxy (here 127.0.0.1) is trusted.
    spraying = {"X-Forwarded-For": "203.0.113.7"}

    for i in range(identity.MAX_FAILURES_PER_ADDRESS):
        base = (gw.url, second)[i % 2]
        assert sign_in(base, f"spray-{i}@example.com", "password1", headers=spraying).status_code == 400

    limited = sign_in(gw.url, email, PASSWORD, headers=spraying)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert sign_in(second, email, PASSWORD, headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 200


def test_bad_token_requests(gw):
    url = f"{auth(gw.url)}/token"

    bad_grant = httpx.post(url, params={"grant_type": "client_credentials"}, json={}, timeout=10)
    assert bad_grant.status_code == 400 and bad_grant.json()["error"]["code"] == "unsupported_grant_type"
    missing = httpx.post(url, params={"grant_type": "password"}, json={"email": "a@example.com"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "password"
    not_json = httpx.post(url, params={"grant_type": "password"}, content=b"{nope",
                          headers={"Content-Type": "application/json"}, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_request_error"
    assert httpx.get(url, timeout=10).status_code == 405


def test_form_encoded_sign_in(gw):
    email, user_id = new_user(gw)

    response = httpx.post(f"{auth(gw.url)}/token", data={"grant_type": "password", "email": email,
                                                         "password": PASSWORD}, timeout=10)

    assert response.status_code == 200 and response.json()["user"]["id"] == user_id


# --- what is stored -------------------------------------------------------------------------------


def test_passwords_are_argon2id_and_no_secret_is_stored_in_clear(gw):
    email, user_id = new_user(gw)
    session = tokens(gw, email)
    rotated = refresh(gw.url, session["refresh_token"]).json()
    keys = Keys(gw.prefix)

    stored = gw.redis.hget(keys.identity_user(user_id), "password").decode()

    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, PASSWORD)
    secrets = [PASSWORD.encode(), session["refresh_token"].encode(), rotated["refresh_token"].encode(),
               session["access_token"].encode()]
    for key in gw.redis.scan_iter(match=f"{gw.prefix}identity:*"):
        kind = gw.redis.type(key)
        if kind == b"hash":
            values = [*gw.redis.hgetall(key).keys(), *gw.redis.hgetall(key).values()]
        elif kind == b"set":
            values = list(gw.redis.smembers(key))
        else:
            values = [gw.redis.get(key) or b""]
        for value in values:
            assert not any(secret in value for secret in secrets), key
    # The refresh token is found by its sha256.
    assert gw.redis.exists(keys.identity_refresh(identity.sha256(rotated["refresh_token"])))


def test_an_outdated_hash_is_replaced_at_sign_in(gw):
    email, user_id = new_user(gw)
    key = Keys(gw.prefix).identity_user(user_id)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    gw.redis.hset(key, "password", weak)

    assert sign_in(gw.url, email, PASSWORD).status_code == 200

    stored = gw.redis.hget(key, "password").decode()
    assert stored != weak and stored.startswith("$argon2id$")
    assert not PasswordHasher().check_needs_rehash(stored)


# --- users ----------------------------------------------------------------------------------------


def test_users_store(gw):
    email = f"Mixed-{uuid.uuid4().hex[:6]}@Example.COM"

    created = users(gw, lambda u: u.create(email, PASSWORD))

    assert created.email == email.lower()
    with pytest.raises(identity.UserError, match="already exists"):
        users(gw, lambda u: u.create(email.lower(), PASSWORD))
    with pytest.raises(identity.UserError, match="at least 8"):
        users(gw, lambda u: u.create("short@example.com", "1234567"))
    with pytest.raises(identity.UserError, match="not an email"):
        users(gw, lambda u: u.create("not an email", PASSWORD))
    listed = users(gw, lambda u: u.all())
    assert created.id in [u.id for u in listed]
    assert all(u.password_hash.startswith("$argon2id$") for u in listed)
    users(gw, lambda u: u.set_password(email, "a new password"))
    assert sign_in(gw.url, email, PASSWORD).status_code == 400
    assert sign_in(gw.url, email, "a new password").status_code == 200
    users(gw, lambda u: u.remove(email))
    assert created.id not in [u.id for u in users(gw, lambda u: u.all())]
    with pytest.raises(identity.UserError, match="no user"):
        users(gw, lambda u: u.remove(email))


def test_password_hashing_runs_off_the_event_loop():
    passwords = Passwords(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))

    async def run() -> tuple[bool, bool, int]:
        hashed = await passwords.hash("hunter22")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        ok = await passwords.verify(hashed, "hunter22")
        bad = await passwords.verify(hashed, "hunter23")
        ticker.cancel()
        return ok, bad, ticks

    ok, bad, ticks = asyncio.run(run())
    assert ok and not bad and ticks > 1
    assert not Passwords()._verify("not a hash", "x")


def test_identity_routes_are_mounted_only_without_an_external_identity(tmp_path):
    def paths(settings: Settings) -> set[str]:
        return {route.path for route in create_app(settings).routes}

    embedded = paths(Settings(data_dir=tmp_path))
    external = paths(Settings(data_dir=tmp_path, auth_url="https://identity.example"))

    expected = {"/auth/v1/token", "/auth/v1/logout", "/auth/v1/user", "/auth/v1/.well-known/jwks.json"}
    assert expected <= embedded
    assert not any(path.startswith("/auth/") for path in external)
