"""Bearer JWT verification.

Two sources of keys: the Identity service's JWKS (``REACTOR_AI_AUTH_URL``), or in single-box
mode a local Ed25519 key kept in the data directory, with which the embedded Identity
(``api/identity.py``) signs its access tokens and ``reactor auth token`` mints tokens for
scripts. Either way a token is accepted only with its key's own algorithm, so ``none`` and
HS/RS confusion are impossible, and ``exp`` is required.

A token travels only in a header: one in the URL's query string ends up in access logs, proxy
logs and browser history, so a request carrying one is refused even when its header is good.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import Unauthorized, Unavailable
from shared.logs import CREDENTIAL_QUERY_PARAMS

LEEWAY_S = 10             # clock skew tolerated on exp/nbf
JWKS_TTL_S = 600          # how long fetched keys are trusted before a refresh
JWKS_MIN_REFETCH_S = 30   # an unknown kid refetches at most this often, so junk tokens cannot hammer Identity
JWKS_TIMEOUT_S = 5.0      # one fetch of the key set; the request waiting on it is held that long at most
# While the gateway has no keys because Identity's JWKS cannot be fetched, clients retry after this.
JWKS_RETRY_AFTER_S = 5
KEY_FILE = "jwt-ed25519.pem"


# The claim that makes a token an operator's: every user's usage, the fleet view. It must be the
# JSON value true (a string such as "yes" does not count).
ADMIN_CLAIM = "reactor_admin"


class Identity(msgspec.Struct, frozen=True):
    user_id: str
    claims: dict[str, Any]

    @property
    def is_admin(self) -> bool:
        return self.claims.get(ADMIN_CLAIM) is True


def refuse_query_token(query: Mapping[str, str]) -> None:
    """Refuse a request that carries a credential in its URL, whatever its headers say.

    :raises Unauthorized: naming the parameter and the header to use instead.
    """
    for name in query:
        if name.lower() in CREDENTIAL_QUERY_PARAMS:
            raise Unauthorized(f"Credentials in the URL are refused (query parameter {name!r}): URLs end up in "
                               "logs. Send the token in a header: 'Authorization: Bearer <JWT>'.")


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <JWT>'.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <JWT>'.")
    return token.strip()


class LocalKey:
    """The single-box signing key, created on first use.

    :param path: the PEM file inside the data directory.
    """

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
        self.kid = jwt.utils.base64url_encode(hashlib.sha256(msgspec.json.encode(jwk)).digest()[:12]).decode()
        self.public_jwk = {**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "LocalKey":
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(serialization.load_pem_private_key(path.read_bytes(), password=None))
        key = Ed25519PrivateKey.generate()
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return cls(key)

    def mint(self, user_id: str, ttl_s: int = 86_400, issuer: str | None = None,
             audience: str | None = None, extra: dict[str, Any] | None = None) -> str:
        """A token for ``user_id``; ``extra`` adds claims (a tier, a data region) that quotas and
        extensions read."""
        now = int(time.time())
        claims: dict[str, Any] = {**(extra or {}), "sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_s}
        if issuer:
            claims["iss"] = issuer
        if audience:
            claims["aud"] = audience
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": self.kid})

    @property
    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK set, as the embedded Identity publishes it."""
        return {"keys": [self.public_jwk]}


class Verifier:
    """Checks tokens against a set of JWKs.

    A client sends the same token with every request, and a signature check costs more than
    the rest of the front door's work on a request; so verified tokens are remembered until
    they expire.

    :param issuer: required ``iss`` when set.
    :param audience: required ``aud`` when set.
    """

    CACHE_SIZE = 10_000

    def __init__(self, issuer: str | None = None, audience: str | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._verified: dict[str, tuple[Identity, float]] = {}

    def _set_keys(self, jwks: dict[str, Any]) -> None:
        # Keys changed: a token verified with a key that is gone must not stay trusted.
        self._verified.clear()
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in jwks.get("keys", ()):
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type this gateway cannot use; others in the set still work
            keys[data.get("kid")] = key
        self._keys = keys

    async def _key_for(self, kid: str | None) -> jwt.PyJWK | None:
        return self._keys.get(kid) or (self._keys.get(None) if kid is None else None)

    async def verify(self, token: str) -> Identity:
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if time.time() < expires:
                return identity
            del self._verified[token]
        identity = await self._verify(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (identity, float(identity.claims["exp"]))
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Malformed token: not a JWT.") from None
        key = await self._key_for(header.get("kid"))
        if key is None:
            raise Unauthorized("Token signed by an unknown key.")
        if header.get("alg") != key.algorithm_name:
            raise Unauthorized("Token algorithm not accepted for its key.")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[key.algorithm_name], audience=self.audience, issuer=self.issuer,
                leeway=LEEWAY_S, options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired: refresh your access token via Identity.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Token not yet valid (nbf).") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Token signature is invalid.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Token lacks the '{exc.claim}' claim.") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Token audience not accepted.") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Token issuer not accepted.") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("Token 'sub' must be a non-empty string.")
        return Identity(sub, claims)


class LocalVerifier(Verifier):
    def __init__(self, key: LocalKey, issuer: str | None = None, audience: str | None = None) -> None:
        super().__init__(issuer, audience)
        self._set_keys(key.jwks)


class JWKSVerifier(Verifier):
    """Keys from ``{auth_url}/.well-known/jwks.json``, cached and refetched on an unknown kid.

    :param http: a client for the Identity service.
    """

    def __init__(self, auth_url: str, http: httpx.AsyncClient, issuer: str | None = None,
                 audience: str | None = None) -> None:
        super().__init__(issuer, audience)
        self.url = auth_url.rstrip("/") + "/.well-known/jwks.json"
        self._http = http
        self._fetched_at = float("-inf")
        # Whether the last fetch failed: with no keys at all that is an outage (503), not a bad token.
        self._fetch_failed = False
        self._lock = asyncio.Lock()

    async def _refresh(self, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age < JWKS_MIN_REFETCH_S or (not force and age < JWKS_TTL_S):
                return
            self._fetched_at = time.monotonic()
            try:
                response = await self._http.get(self.url, timeout=JWKS_TIMEOUT_S)
                response.raise_for_status()
                jwks = response.json()
                if not isinstance(jwks, dict) or not isinstance(jwks.get("keys", []), list):
                    raise ValueError("not a JWK set")
                self._set_keys(jwks)
                self._fetch_failed = False
            except (httpx.HTTPError, ValueError):
                # Keep the keys we had; a blip at Identity must not log everybody out.
                self._fetched_at = time.monotonic() - JWKS_TTL_S + JWKS_MIN_REFETCH_S
                self._fetch_failed = True

    async def _key_for(self, kid: str | None) -> jwt.PyJWK | None:
        await self._refresh(force=False)
        key = await super()._key_for(kid)
        if key is None:
            await self._refresh(force=True)
            key = await super()._key_for(kid)
        if key is None and not self._keys and self._fetch_failed:
            # No key to check anything with: the token may be fine, so this is not the caller's 401.
            raise Unavailable("Identity's signing keys (JWKS) cannot be fetched; try again shortly.",
                              headers={"Retry-After": str(JWKS_RETRY_AFTER_S)})
        return key
