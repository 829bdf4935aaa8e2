import asyncio
import hashlib
import hmac
import http.server
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.utils import base64url_encode

import api.auth
from api.auth import (KEY_FILE, Identity, JWKSVerifier, LocalKey, LocalVerifier, Verifier, bearer_token,
                      refuse_query_token)
from shared.errors import Unauthorized, Unavailable


def b64json(value: dict[str, Any]) -> str:
    return base64url_encode(json.dumps(value).encode()).decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for headers no honest library would write."""
    return f"{b64json(header)}.{b64json(claims)}.{base64url_encode(signature).decode()}"


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64url_encode(signature).decode()}"


def fresh_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "iat": now, "exp": now + 3600, **extra}


def verify(verifier: Verifier, token: str) -> Identity:
    return asyncio.run(verifier.verify(token))


def rejection(verifier: Verifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        verify(verifier, token)
    assert info.value.status == 401
    assert info.value.code == "unauthorized"
    return info.value.message


@pytest.fixture
def key(tmp_path: Path) -> LocalKey:
    return LocalKey.load_or_create(tmp_path / "data")


# --- bearer_token ---------------------------------------------------------------------------------


def test_bearer_token_parses_the_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def.ghi  ") == "abc.def.ghi"
    assert bearer_token("BEARER t") == "t"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "Missing bearer token"),
        ("", "Missing bearer token"),
        ("Basic dXNlcjpwYXNz", "Malformed Authorization header"),
        ("Bearer ", "Malformed Authorization header"),
        ("Bearer    ", "Malformed Authorization header"),
        ("Bearer", "Malformed Authorization header"),
        ("Token abc", "Malformed Authorization header"),
    ],
)
def test_bearer_token_rejects(header: str | None, expected: str) -> None:
    with pytest.raises(Unauthorized, match=expected) as info:
        bearer_token(header)
    assert info.value.status == 401


@pytest.mark.parametrize("query", [{"access_token": "t"}, {"token": "t"}, {"api_key": "t"}, {"key": "t"},
                                   {"model": "m", "KEY": ""}, {"Api_Key": "t"}])
def test_credentials_in_the_query_string_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(Unauthorized, match="Authorization: Bearer") as info:
        refuse_query_token(query)
    assert info.value.status == 401
    assert f"{list(query)[-1]!r}" in info.value.message  # names the parameter


@pytest.mark.parametrize("query", [{}, {"model": "m"}, {"keys": "1", "tokens": "2", "by": "model"}])
def test_other_query_parameters_pass(query: dict[str, str]) -> None:
    refuse_query_token(query)


# --- LocalKey -------------------------------------------------------------------------------------


def test_local_key_is_created_once_and_reloaded(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"

    first = LocalKey.load_or_create(data_dir)
    path = data_dir / KEY_FILE
    pem = path.read_bytes()
    second = LocalKey.load_or_create(data_dir)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert path.read_bytes() == pem
    assert second.kid == first.kid
    assert second.public_jwk == first.public_jwk
    assert first.public_jwk["alg"] == "EdDSA"
    assert first.public_jwk["kty"] == "OKP"
    assert first.public_jwk["use"] == "sig"
    assert "d" not in first.public_jwk  # the private part never leaves the file
    # A token minted before the reload verifies against the reloaded key.
    assert verify(LocalVerifier(second), first.mint("u-1")).user_id == "u-1"


def test_different_data_dirs_give_different_keys(tmp_path: Path) -> None:
    assert LocalKey.load_or_create(tmp_path / "a").kid != LocalKey.load_or_create(tmp_path / "b").kid


def test_mint_then_verify(key: LocalKey) -> None:
    before = int(time.time())
    identity = verify(LocalVerifier(key), key.mint("user-42", ttl_s=120))

    assert identity.user_id == "user-42"
    assert identity.claims["sub"] == "user-42"
    assert identity.claims["nbf"] == identity.claims["iat"]
    assert before <= identity.claims["iat"] <= before + 2
    assert identity.claims["exp"] == identity.claims["iat"] + 120
    assert jwt.get_unverified_header(key.mint("x"))["kid"] == key.kid


def test_mint_with_issuer_and_audience(key: LocalKey) -> None:
    verifier = LocalVerifier(key, issuer="https://id.example", audience="reactor")

    identity = verify(verifier, key.mint("u", issuer="https://id.example", audience="reactor"))

    assert identity.claims["iss"] == "https://id.example"
    assert identity.claims["aud"] == "reactor"


# --- LocalVerifier rejections ---------------------------------------------------------------------


def test_expired_token(key: LocalKey) -> None:
    assert "expired" in rejection(LocalVerifier(key), key.mint("u", ttl_s=-60))


def test_expiry_within_leeway_is_accepted(key: LocalKey) -> None:
    assert api.auth.LEEWAY_S == 10
    assert verify(LocalVerifier(key), key.mint("u", ttl_s=-5)).user_id == "u"


def test_not_yet_valid(key: LocalKey) -> None:
    now = int(time.time())
    token = jwt.encode(fresh_claims(nbf=now + 600), key.private, algorithm="EdDSA", headers={"kid": key.kid})

    assert "not yet valid" in rejection(LocalVerifier(key), token)


def test_wrong_issuer(key: LocalKey) -> None:
    verifier = LocalVerifier(key, issuer="https://id.example")

    assert "issuer not accepted" in rejection(verifier, key.mint("u", issuer="https://evil.example"))
    assert "lacks the 'iss' claim" in rejection(verifier, key.mint("u"))


def test_wrong_audience(key: LocalKey) -> None:
    verifier = LocalVerifier(key, audience="reactor")

    assert "audience not accepted" in rejection(verifier, key.mint("u", audience="billing"))
    assert "lacks the 'aud' claim" in rejection(verifier, key.mint("u"))


def test_audience_is_ignored_when_not_required(key: LocalKey) -> None:
    assert verify(LocalVerifier(key), key.mint("u", audience="anything")).user_id == "u"


def test_token_from_another_key(key: LocalKey, tmp_path: Path) -> None:
    other = LocalKey.load_or_create(tmp_path / "other")
    verifier = LocalVerifier(key)

    assert "unknown key" in rejection(verifier, other.mint("u"))
    # Same kid as ours, other key's signature.
    forged = jwt.encode(fresh_claims(), other.private, algorithm="EdDSA", headers={"kid": key.kid})
    assert "signature is invalid" in rejection(verifier, forged)


def test_alg_none_is_rejected(key: LocalKey) -> None:
    verifier = LocalVerifier(key)

    assert "algorithm not accepted" in rejection(verifier, forge({"alg": "none", "kid": key.kid}, fresh_claims()))
    assert "algorithm not accepted" in rejection(verifier, forge({"alg": "None", "kid": key.kid}, fresh_claims()))
    assert "unknown key" in rejection(verifier, forge({"alg": "none"}, fresh_claims()))


def test_hs256_with_the_public_key_as_secret_is_rejected(key: LocalKey) -> None:
    public = key.private.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = LocalVerifier(key)

    for secret in (raw, pem, key.public_jwk["x"].encode()):
        token = hs256({"alg": "HS256", "typ": "JWT", "kid": key.kid}, fresh_claims(), secret)
        assert "algorithm not accepted" in rejection(verifier, token)


def test_missing_required_claims(key: LocalKey) -> None:
    verifier = LocalVerifier(key)
    now = int(time.time())

    no_exp = jwt.encode({"sub": "u", "iat": now}, key.private, algorithm="EdDSA", headers={"kid": key.kid})
    no_sub = jwt.encode({"exp": now + 60}, key.private, algorithm="EdDSA", headers={"kid": key.kid})
    empty_sub = jwt.encode({"sub": "", "exp": now + 60}, key.private, algorithm="EdDSA", headers={"kid": key.kid})

    assert "lacks the 'exp' claim" in rejection(verifier, no_exp)
    assert "lacks the 'sub' claim" in rejection(verifier, no_sub)
    assert "'sub'" in rejection(verifier, empty_sub)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "abc.def", "...."])
def test_malformed_tokens(key: LocalKey, token: str) -> None:
    assert "Malformed token" in rejection(LocalVerifier(key), token)


def test_tampered_payload(key: LocalKey) -> None:
    header, _, signature = key.mint("alice").split(".")
    tampered = f"{header}.{b64json(fresh_claims(sub='admin'))}.{signature}"

    assert "signature is invalid" in rejection(LocalVerifier(key), tampered)


def test_non_string_kid_is_unauthorized(key: LocalKey) -> None:
    token = forge({"alg": "EdDSA", "kid": 5}, fresh_claims(), b"x" * 64)

    assert "Malformed token" in rejection(LocalVerifier(key), token)


# --- JWKSVerifier ---------------------------------------------------------------------------------


class JWKSServer:
    """Serves ``/.well-known/jwks.json`` from ``self.jwks`` and counts the fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                owner.fetches += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> "JWKSServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(private: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    # No "alg": PyJWK infers RS256 from kty, as Identity services commonly omit it.
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def ec_jwk(private: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "alg": "ES256"}


def verify_jwks(server_url: str, *tokens: str, **kwargs: Any) -> list[Identity | str]:
    """Verify tokens in order with one JWKSVerifier; each result is an Identity or the rejection message."""

    async def run() -> list[Identity | str]:
        results: list[Identity | str] = []
        async with httpx.AsyncClient() as http:
            verifier = JWKSVerifier(server_url + "/", http, **kwargs)
            assert verifier.url == server_url + "/.well-known/jwks.json"
            for token in tokens:
                try:
                    results.append(await verifier.verify(token))
                except Unauthorized as exc:
                    results.append(exc.message)
        return results

    return asyncio.run(run())


def test_jwks_verifies_rs256_and_es256(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]}
    rs = jwt.encode(fresh_claims(sub="rs-user"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(fresh_claims(sub="es-user"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})

    results = verify_jwks(jwks_server.url, rs, es, rs)

    assert [r.user_id for r in results if isinstance(r, Identity)] == ["rs-user", "es-user", "rs-user"]
    assert jwks_server.fetches == 1  # cached for JWKS_TTL_S


def test_jwks_checks_issuer_and_audience(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    good = jwt.encode(fresh_claims(iss="https://id", aud="reactor"), rsa_key, algorithm="RS256",
                      headers={"kid": "rsa-1"})
    bad = jwt.encode(fresh_claims(iss="https://id", aud="other"), rsa_key, algorithm="RS256",
                     headers={"kid": "rsa-1"})

    ok, refused = verify_jwks(jwks_server.url, good, bad, issuer="https://id", audience="reactor")

    assert isinstance(ok, Identity) and ok.user_id == "user-1"
    assert refused == "Token audience not accepted."


def test_jwks_skips_encryption_keys(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.jwks = {"keys": [{**rsa_jwk(rsa_key, "rsa-1"), "use": "enc"}, {"kty": "weird", "kid": "w"}]}
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    assert verify_jwks(jwks_server.url, token) == ["Token signed by an unknown key."]


def test_unknown_kid_refetches_after_rotation(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api.auth, "JWKS_MIN_REFETCH_S", 0)
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    old = jwt.encode(fresh_claims(sub="before"), rsa_key, algorithm="RS256", headers={"kid": "old"})
    new = jwt.encode(fresh_claims(sub="after"), ec_key, algorithm="ES256", headers={"kid": "new"})

    async def run() -> list[Identity | str]:
        async with httpx.AsyncClient() as http:
            verifier = JWKSVerifier(jwks_server.url, http)
            first = await verifier.verify(old)
            jwks_server.jwks = {"keys": [ec_jwk(ec_key, "new")]}  # Identity rotates
            second = await verifier.verify(new)
            try:
                await verifier.verify(old)
            except Unauthorized as exc:
                return [first, second, exc.message]
            return [first, second, "accepted"]

    first, second, retired = asyncio.run(run())

    assert isinstance(first, Identity) and first.user_id == "before"
    assert isinstance(second, Identity) and second.user_id == "after"
    assert retired == "Token signed by an unknown key."
    assert jwks_server.fetches == 3  # initial, rotation, and the retired kid's own refetch


def test_unknown_kid_refetch_is_rate_limited(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert api.auth.JWKS_MIN_REFETCH_S == 30
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "old")]}
    old = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "old"})
    junk = [jwt.encode(fresh_claims(), ec_key, algorithm="ES256", headers={"kid": f"junk-{i}"}) for i in range(5)]

    results = verify_jwks(jwks_server.url, old, *junk)

    assert isinstance(results[0], Identity)
    assert results[1:] == ["Token signed by an unknown key."] * 5
    assert jwks_server.fetches == 1


def test_identity_outage_keeps_the_keys(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.auth, "JWKS_MIN_REFETCH_S", 0)
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    unknown = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-2"})
    # Another token for the same key: the first one would be answered from the verified-token cache.
    another = jwt.encode({**fresh_claims(), "jti": "another"}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    async def run() -> list[str]:
        async with httpx.AsyncClient() as http:
            verifier = JWKSVerifier(jwks_server.url, http)
            await verifier.verify(token)
            jwks_server.status = 500
            with pytest.raises(Unauthorized):
                await verifier.verify(unknown)  # forces a refetch, which fails
            return [(await verifier.verify(another)).user_id]

    assert asyncio.run(run()) == ["user-1"]
    # After a failed fetch the next try waits JWKS_MIN_REFETCH_S (0 here), so the last verify retried too.
    assert jwks_server.fetches == 3


def test_rs256_key_with_hs256_header_is_rejected(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, fresh_claims(), pem)
    relabelled = ".".join(
        [b64json({"alg": "HS256", "kid": "rsa-1"})]
        + jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}).split(".")[1:]
    )
    rs512 = jwt.encode(fresh_claims(), rsa_key, algorithm="RS512", headers={"kid": "rsa-1"})

    assert verify_jwks(jwks_server.url, confused, relabelled, rs512) == [
        "Token algorithm not accepted for its key."
    ] * 3


def test_verified_tokens_are_cached_until_they_expire(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    key = LocalKey.load_or_create(tmp_path)
    verifier = LocalVerifier(key)
    token = key.mint("user-cached", ttl_s=60)
    calls = []
    real = jwt.decode
    monkeypatch.setattr(api.auth.jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert asyncio.run(verifier.verify(token)).user_id == "user-cached"
    assert asyncio.run(verifier.verify(token)).user_id == "user-cached"
    assert len(calls) == 1
    # Past its exp the cached entry is dropped and the token checked again (PyJWT reads its own clock).
    now = time.time()
    monkeypatch.setattr(api.auth.time, "time", lambda: now + 61)
    asyncio.run(verifier.verify(token))
    assert len(calls) == 2


def outcome(server_url: str, token: str) -> Any:
    """What a fresh JWKSVerifier makes of ``token``: an Identity, or the refusal's
    ``(status, code, message, headers)``."""

    async def run() -> Any:
        async with httpx.AsyncClient() as http:
            try:
                return await JWKSVerifier(server_url, http).verify(token)
            except (Unauthorized, Unavailable) as exc:
                return exc.status, exc.code, exc.message, exc.headers

    return asyncio.run(run())


@pytest.mark.parametrize("outage", ["status 500", "status 404", "a list", "not json", "keys not a list"])
def test_no_keys_because_identity_is_down_is_503(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, outage: str
) -> None:
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    if outage.startswith("status"):
        jwks_server.status = int(outage.split()[1])
    elif outage == "a list":
        jwks_server.jwks = [rsa_jwk(rsa_key, "rsa-1")]
    elif outage == "not json":
        jwks_server.jwks = "<html>"  # served as the JSON string "<html>": still not a key set
    else:
        jwks_server.jwks = {"keys": "rsa-1"}
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    status, code, message, headers = outcome(jwks_server.url, token)

    assert (status, code) == (503, "service_unavailable")
    assert "JWKS" in message
    assert headers["Retry-After"] == str(api.auth.JWKS_RETRY_AFTER_S)


def test_identity_unreachable_with_no_keys_is_503(rsa_key: rsa.RSAPrivateKey) -> None:
    with JWKSServer() as server:
        url = server.url  # nothing listens there once it is closed
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    assert outcome(url, token)[:2] == (503, "service_unavailable")


def test_an_empty_key_set_is_a_bad_token_not_an_outage(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.jwks = {"keys": []}
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    assert outcome(jwks_server.url, token)[:3] == (401, "unauthorized", "Token signed by an unknown key.")


def test_junk_entries_in_the_key_set_are_skipped(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.jwks = {"keys": ["junk", 5, None, rsa_jwk(rsa_key, "rsa-1")]}
    token = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    identity = outcome(jwks_server.url, token)

    assert isinstance(identity, Identity) and identity.user_id == "user-1"


def test_an_outage_after_keys_were_fetched_keeps_unknown_kids_at_401(
    jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.auth, "JWKS_MIN_REFETCH_S", 0)
    jwks_server.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1")]}
    good = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    unknown = jwt.encode(fresh_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"})

    async def run() -> tuple[int, int]:
        async with httpx.AsyncClient() as http:
            verifier = JWKSVerifier(jwks_server.url, http)
            await verifier.verify(good)
            jwks_server.status = 500
            with pytest.raises(Unauthorized) as refused:
                await verifier.verify(unknown)
            return refused.value.status, jwks_server.fetches

    assert asyncio.run(run()) == (401, 2)
