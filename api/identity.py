"""The embedded Identity service: users, password sign-in and rotating refresh tokens.

A single box, or a small fleet, should be able to sign people in without running a separate
Identity service, so unless ``REACTOR_AI_AUTH_URL`` names one, the front door serves the Identity
HTTP API itself under ``/auth/v1`` (the contract is in ``api/client.py``). Everything it keeps is
in Redis, so every replica sees the same users, sessions and failure counters. Access tokens are
signed by the data directory's local key (``api/auth.py``), the key the gateway's verifier
already trusts: an access token from here works on ``/ai/v1`` with no further wiring, and the
JWKS route publishes that key for anything else that verifies them (for instance another gateway
whose ``REACTOR_AI_AUTH_URL`` points here). Replicas must share that key file.

The choices, and why:

- **Passwords** are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory
  profile), in a thread so the event loop keeps serving, at most ``HASH_CONCURRENCY`` at a time
  because each hash takes 64 MiB. A stored hash made with older parameters is replaced at the
  next successful sign-in.
- **One error** for a wrong password, an unknown email and a disabled account, and an unknown
  email is checked against a dummy hash so it takes as long: a sign-in form must not tell which
  emails have accounts.
- **Failed sign-ins are limited** per account and per client address with counters in Redis, so
  the limit holds across replicas. An attempt is counted before its password is checked (a
  success takes its count back and clears the account's), so guesses sent at once to several
  replicas cannot slip past the limit.
- **Access tokens are short-lived** (``ACCESS_TOKEN_TTL_S``) and stateless: signing out ends the
  session, and tokens already issued run out by themselves.
- **Refresh tokens** are opaque random strings stored only as their sha256, and rotate: each
  works once and is answered with a new one. A spent token presented again means it was copied,
  so the whole session (every token descended from the same sign-in) is revoked, as the OAuth 2.0
  security best current practice recommends for public clients.
- **Administrators** are users with the ``admin`` flag (``reactor auth users add --admin``): their
  access tokens carry the admin claim (``reactor_admin: true``) that the fleet and usage views
  check, so an operator signs in to the console with a password like anyone else. The flag is
  read at every sign-in and refresh, so a change reaches the next access token.
- Passwords and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.config import Settings
from shared.errors import GatewayError, InvalidRequest, PayloadTooLarge, Unauthorized, Unavailable
from shared.keys import Keys
from shared.wire import decode_json

from .auth import Identity, LocalKey, Verifier, bearer_token
from .client import AUTH_PATH
from .auth import ADMIN_CLAIM

logger = logging.getLogger("reactor.identity")

ACCESS_TOKEN_TTL_S = 15 * 60
REFRESH_TOKEN_TTL_S = 30 * 86_400          # renewed at every rotation: a session lasts while it is used
REFRESH_TOKEN_BYTES = 32
SESSION_ID_BYTES = 16
MIN_PASSWORD_CHARS = 8
MAX_EMAIL_CHARS = 254
USER_ID_PREFIX = "user_"
FAILURE_WINDOW_S = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20
HASH_CONCURRENCY = 2                      # argon2id hashes at once per process (64 MiB each)
MAX_BODY_BYTES = 16 * 1024
# A user's list of sessions is pruned of expired ones at sign-in once it holds this many.
SESSION_PRUNE_AT = 32
JWKS_MAX_AGE_S = 300

INVALID_CREDENTIALS = "Invalid email or password."
INVALID_GRANT = "The refresh token is invalid, expired or revoked; sign in again."
UNAVAILABLE = "The user store (Redis) is unreachable; try again shortly."


class InvalidCredentials(GatewayError):
    """Every failed password sign-in, whatever the reason."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_credentials"


class InvalidGrant(GatewayError):
    """Every failed refresh: unknown, expired, spent or revoked token, or a user who can no longer sign in."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_grant"


class TooManyAttempts(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_attempts"


class UserError(ValueError):
    """A user-management request that cannot be done (bad email, short password, no such user)."""


# -- users -------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_user_id() -> str:
    """``user_`` and a ULID: 48 bits of milliseconds, 80 random bits, so ids sort by creation."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return USER_ID_PREFIX + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str) -> str:
    """The normalised email, or :class:`UserError` when it cannot be an address."""
    email = normalise_email(email)
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL_CHARS or any(c.isspace() for c in email):
        raise UserError(f"not an email address: {email!r}")
    return email


def check_password(password: str) -> str:
    if not password:
        raise UserError("a password is needed")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"passwords must be at least {MIN_PASSWORD_CHARS} characters")
    return password


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    email: str
    created_at: float
    disabled: bool = False
    admin: bool = False
    password_hash: str = ""

    @classmethod
    def from_hash(cls, fields: dict[Any, Any]) -> "User":
        data = {_text(k): _text(v) for k, v in fields.items()}
        return cls(id=data["id"], email=data["email"], created_at=float(data.get("created_at") or 0),
                   disabled=data.get("disabled") == "1", admin=data.get("admin") == "1",
                   password_hash=data.get("password", ""))

    def public(self) -> dict[str, Any]:
        shown = {"id": self.id, "email": self.email, "disabled": self.disabled, "created_at": self.created_at}
        return {**shown, "admin": True} if self.admin else shown


class Passwords:
    """argon2id hashing off the event loop.

    :param hasher: argon2-cffi's hasher; its defaults (argon2id, RFC 9106 low-memory) when None.
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(HASH_CONCURRENCY)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True


# Adds a user unless the email is taken. KEYS: emails hash, user hash.
# ARGV: email, user id, password hash, created_at, admin ('1' or '0'). Returns 1 when added, 0 when
# the email is taken.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'email', ARGV[1], 'password', ARGV[3], 'disabled', '0',
           'created_at', ARGV[4], 'admin', ARGV[5])
return 1
"""


class Users:
    """The user records, shared by the Identity routes and ``reactor auth users``.

    :param redis: any pool (bytes or decoded replies).
    :param keys: the key names.
    :param passwords: the hasher; argon2-cffi's defaults when None.
    """

    def __init__(self, redis: Redis, keys: Keys, passwords: Passwords | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.passwords = passwords or Passwords()
        self._create = redis.register_script(_CREATE)

    async def create(self, email: str, password: str, admin: bool = False) -> User:
        """A new user; ``admin`` puts the admin claim into their access tokens."""
        email = check_email(email)
        password_hash = await self.passwords.hash(check_password(password))
        user = User(id=new_user_id(), email=email, created_at=round(time.time(), 3), admin=admin)
        added = await self._create(keys=[self.keys.identity_emails, self.keys.identity_user(user.id)],
                                   args=[email, user.id, password_hash, repr(user.created_at), "1" if admin else "0"])
        if not int(added):
            raise UserError(f"a user with the email {email} already exists")
        return user

    async def get(self, user_id: str) -> User | None:
        fields = await self.redis.hgetall(self.keys.identity_user(user_id))
        return User.from_hash(fields) if fields else None

    async def by_email(self, email: str) -> User | None:
        user_id = await self.redis.hget(self.keys.identity_emails, normalise_email(email))
        return await self.get(_text(user_id)) if user_id else None

    async def need(self, email: str) -> User:
        user = await self.by_email(email)
        if user is None:
            raise UserError(f"no user with the email {normalise_email(email)}")
        return user

    async def all(self) -> list[User]:
        ids = [_text(v) for v in (await self.redis.hgetall(self.keys.identity_emails)).values()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in ids:
                pipe.hgetall(self.keys.identity_user(user_id))
            records = await pipe.execute()
        return sorted((User.from_hash(r) for r in records if r), key=lambda u: (u.created_at, u.email))

    async def remove(self, email: str) -> User:
        user = await self.need(email)
        await self.end_sessions(user.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.identity_emails, user.email)
            pipe.delete(self.keys.identity_user(user.id), self.keys.identity_user_sessions(user.id))
            await pipe.execute()
        return user

    async def set_disabled(self, email: str, disabled: bool) -> User:
        user = await self.need(email)
        await self.redis.hset(self.keys.identity_user(user.id), "disabled", "1" if disabled else "0")
        if disabled:
            await self.end_sessions(user.id)
        return msgspec.structs.replace(user, disabled=disabled)

    async def set_password(self, email: str, password: str) -> User:
        """A new password; every session of the user ends, so a leaked one stops working."""
        user = await self.need(email)
        password_hash = await self.passwords.hash(check_password(password))
        await self.store_hash(user.id, password_hash)
        await self.end_sessions(user.id)
        return user

    async def store_hash(self, user_id: str, password_hash: str) -> None:
        await self.redis.hset(self.keys.identity_user(user_id), "password", password_hash)

    async def end_sessions(self, user_id: str) -> int:
        """Revoke every refresh-token session of a user; returns how many there were."""
        members = [_text(m) for m in await self.redis.smembers(self.keys.identity_user_sessions(user_id))]
        async with self.redis.pipeline(transaction=True) as pipe:
            for session_id in members:
                pipe.delete(self.keys.identity_session(session_id))
            pipe.delete(self.keys.identity_user_sessions(user_id))
            await pipe.execute()
        return len(members)


# -- sign-in -----------------------------------------------------------------------------------------

# Counts one sign-in attempt for an account and a client address. KEYS: account counter, address
# counter. ARGV: window s, account limit, address limit. Returns 0 when the attempt may go on, else
# the seconds until the exceeded window ends.
_ATTEMPT = """
local wait = 0
for i = 1, 2 do
  local n = redis.call('INCR', KEYS[i])
  local ttl = redis.call('TTL', KEYS[i])
  if ttl < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    ttl = tonumber(ARGV[1])
  end
  if n > tonumber(ARGV[i + 1]) and ttl > wait then wait = ttl end
end
return wait
"""

# A successful sign-in: the account's count is cleared and the address's own attempt taken back.
# KEYS: account counter, address counter.
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
if redis.call('DECR', KEYS[2]) <= 0 then redis.call('DEL', KEYS[2]) end
return 1
"""

# Spends a refresh token and stores its successor. KEYS: the token's record, its session, the new
# token's record, the user, the user's session set. ARGV: the token's sha256, the new one's, TTL s,
# session id, user id. Returns {'ok', email, admin flag}, {'reused'} (the session is now revoked) or
# {'invalid'}.
_ROTATE = """
local rec = redis.call('HMGET', KEYS[1], 'user', 'session')
if not rec[1] or rec[1] ~= ARGV[5] or rec[2] ~= ARGV[4] then return {'invalid'} end
local current = redis.call('HGET', KEYS[2], 'current')
if not current then return {'invalid'} end
if current ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[5], ARGV[4])
  return {'reused'}
end
local user = redis.call('HMGET', KEYS[4], 'email', 'disabled', 'admin')
if not user[1] or user[2] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[5], ARGV[4])
  return {'invalid'}
end
redis.call('HSET', KEYS[2], 'current', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'user', ARGV[5], 'session', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[3])
return {'ok', user[1], user[3] or '0'}
"""


class IdentityService:
    """Sign-in, refresh and sign-out over :class:`Users`.

    :param settings: the gateway settings (key prefix; ``auth_issuer``/``auth_audience`` go into
        the access tokens so the gateway's verifier accepts them).
    :param redis: the front door's pool.
    :param key: the local signing key.
    :param verifier: checks the bearer tokens of ``/user`` and ``/logout``.
    :param passwords: the hasher; argon2-cffi's defaults when None.
    """

    def __init__(self, settings: Settings, redis: Redis, key: LocalKey, verifier: Verifier,
                 passwords: Passwords | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.key = key
        self.verifier = verifier
        self.users = Users(redis, self.keys, passwords)
        self.passwords = self.users.passwords
        # Unknown emails are checked against this, so they cost what a real account costs.
        self._dummy_hash = self.passwords.hasher.hash(secrets.token_urlsafe(16))
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)
        self._rotate = redis.register_script(_ROTATE)

    def _counters(self, email: str, address: str) -> list[str]:
        return [self.keys.identity_failures_email(email), self.keys.identity_failures_address(address)]

    async def sign_in(self, email: str, password: str, address: str) -> dict[str, Any]:
        """A token answer for the right password of an enabled user.

        :raises TooManyAttempts: too many failures for this account or address in the window.
        :raises InvalidCredentials: anything else that is wrong, without saying what.
        """
        email = normalise_email(email)
        counters = self._counters(email, address)
        wait = int(await self._attempt(keys=counters, args=[FAILURE_WINDOW_S, MAX_FAILURES_PER_ACCOUNT,
                                                            MAX_FAILURES_PER_ADDRESS]))
        if wait:
            logger.warning("sign-in attempts limited for an account or the address %s", address)
            raise TooManyAttempts(f"Too many failed sign-in attempts; try again in {wait} seconds.",
                                  headers={"Retry-After": str(wait)})
        user = await self.users.by_email(email)
        matched = await self.passwords.verify(user.password_hash if user else self._dummy_hash, password)
        if not matched or user is None or user.disabled:
            raise InvalidCredentials(INVALID_CREDENTIALS)
        await self._succeeded(keys=counters)
        if self.passwords.needs_rehash(user.password_hash):
            await self.users.store_hash(user.id, await self.passwords.hash(password))
        return await self._start_session(user)

    async def _start_session(self, user: User) -> dict[str, Any]:
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        refresh_token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
        digest = sha256(refresh_token)
        sessions = self.keys.identity_user_sessions(user.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.identity_session(session_id), mapping={"user": user.id, "current": digest})
            pipe.expire(self.keys.identity_session(session_id), REFRESH_TOKEN_TTL_S)
            pipe.hset(self.keys.identity_refresh(digest), mapping={"user": user.id, "session": session_id})
            pipe.expire(self.keys.identity_refresh(digest), REFRESH_TOKEN_TTL_S)
            pipe.sadd(sessions, session_id)
            pipe.expire(sessions, REFRESH_TOKEN_TTL_S)
            pipe.scard(sessions)
            count = (await pipe.execute())[-1]
        if int(count) >= SESSION_PRUNE_AT:
            await self._prune_sessions(user.id)
        return self._answer(user.id, user.email, session_id, refresh_token, user.admin)

    async def _prune_sessions(self, user_id: str) -> None:
        sessions = self.keys.identity_user_sessions(user_id)
        members = [_text(m) for m in await self.redis.smembers(sessions)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in members:
                pipe.exists(self.keys.identity_session(session_id))
            alive = await pipe.execute()
        gone = [m for m, live in zip(members, alive) if not live]
        if gone:
            await self.redis.srem(sessions, *gone)

    def _answer(self, user_id: str, email: str, session_id: str, refresh_token: str,
                admin: bool = False) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"email": email, "sid": session_id}
        if admin:
            claims[ADMIN_CLAIM] = True
        access = self.key.mint(user_id, ACCESS_TOKEN_TTL_S, self.settings.auth_issuer, self.settings.auth_audience,
                               extra=claims)
        return {"access_token": access, "token_type": "bearer", "expires_in": ACCESS_TOKEN_TTL_S,
                "expires_at": now + ACCESS_TOKEN_TTL_S, "refresh_token": refresh_token,
                "user": {"id": user_id, "email": email}}

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """A new access token and a new refresh token for a refresh token that was never used.

        :raises InvalidGrant: unknown, expired, spent (which also revokes its session) or revoked
            token, or a user who was removed or disabled.
        """
        digest = sha256(refresh_token)
        user_id, session_id = await self.redis.hmget(self.keys.identity_refresh(digest), "user", "session")
        if not user_id or not session_id:
            raise InvalidGrant(INVALID_GRANT)
        user_id, session_id = _text(user_id), _text(session_id)
        fresh = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
        keys = [self.keys.identity_refresh(digest), self.keys.identity_session(session_id),
                self.keys.identity_refresh(sha256(fresh)), self.keys.identity_user(user_id),
                self.keys.identity_user_sessions(user_id)]
        result = await self._rotate(keys=keys, args=[digest, sha256(fresh), REFRESH_TOKEN_TTL_S, session_id, user_id])
        outcome = _text(result[0])
        if outcome == "reused":
            logger.warning("a spent refresh token was presented again; session of %s revoked", user_id)
        if outcome != "ok":
            raise InvalidGrant(INVALID_GRANT)
        return self._answer(user_id, _text(result[1]), session_id, fresh, admin=_text(result[2]) == "1")

    async def sign_out(self, identity: Identity | None, refresh_token: str | None) -> None:
        """End the session the access token was issued in and the one ``refresh_token`` belongs to
        (when it is the same user's). Unknown or spent tokens change nothing."""
        ended: set[tuple[str, str]] = set()
        if identity is not None and isinstance(identity.claims.get("sid"), str):
            ended.add((identity.user_id, identity.claims["sid"]))
        if refresh_token:
            user_id, session_id = await self.redis.hmget(self.keys.identity_refresh(sha256(refresh_token)),
                                                         "user", "session")
            if user_id and session_id and (identity is None or _text(user_id) == identity.user_id):
                ended.add((_text(user_id), _text(session_id)))
        if not ended:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for user_id, session_id in ended:
                pipe.delete(self.keys.identity_session(session_id))
                pipe.srem(self.keys.identity_user_sessions(user_id), session_id)
            await pipe.execute()

    async def user_of(self, identity: Identity) -> dict[str, Any]:
        """Who a verified access token belongs to.

        Tokens from ``reactor auth token`` name a user id only and have no record: they are
        answered from their claims. A token issued here whose user was removed, or a disabled
        user's, is refused.
        """
        user = await self.users.get(identity.user_id)
        if user is None:
            if "email" in identity.claims:
                raise Unauthorized("This user no longer exists.")
            return {"id": identity.user_id, "email": None}
        if user.disabled:
            raise Unauthorized("This user is disabled.")
        return {"id": user.id, "email": user.email, "created_at": user.created_at}


# -- routes ------------------------------------------------------------------------------------------

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(value), media_type="application/json", headers=headers)


def _store_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Redis being unreachable is a 503, never a 500."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except (RedisError, OSError) as exc:
            logger.warning("identity store unreachable on %s: %s", request.url.path, exc)
            raise Unavailable(UNAVAILABLE) from None

    return wrapped


def _service(request: Request) -> IdentityService:
    return request.app.state.identity


async def _fields(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or form-encoded as OAuth clients send it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    if not body.strip():
        return {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise InvalidRequest("The form body is not valid UTF-8.") from None
    # The front door's one JSON reader: invalid UTF-8, deep nesting and huge integers are 400s.
    return decode_json(body)


def _string(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a string.", param=name)
    return value


@_store_errors
async def token(request: Request) -> Response:
    """``POST /auth/v1/token?grant_type=password|refresh_token``."""
    fields = await _fields(request)
    grant = request.query_params.get("grant_type") or fields.get("grant_type")
    service = _service(request)
    if grant == "password":
        email, password = _string(fields, "email"), _string(fields, "password")
        address = request.client.host if request.client else "unknown"
        answer = await service.sign_in(email, password, address)
    elif grant == "refresh_token":
        answer = await service.refresh(_string(fields, "refresh_token"))
    else:
        raise InvalidRequest("grant_type must be 'password' or 'refresh_token'.", param="grant_type",
                             code="unsupported_grant_type")
    return _json(answer, _NO_STORE)


@_store_errors
async def logout(request: Request) -> Response:
    """``POST /auth/v1/logout``: the bearer access token's session, and the body's refresh token's.

    The refresh token alone is enough (holding it is what lets one use the session), so a client
    whose access token has expired can still sign out without refreshing first.
    """
    service = _service(request)
    fields = await _fields(request)
    refresh_token = fields.get("refresh_token") if isinstance(fields.get("refresh_token"), str) else None
    identity: Identity | None = None
    try:
        identity = await service.verifier.verify(bearer_token(request.headers.get("authorization")))
    except Unauthorized:
        if not refresh_token:
            raise
    await service.sign_out(identity, refresh_token)
    return Response(status_code=204, headers=_NO_STORE)


@_store_errors
async def user(request: Request) -> Response:
    """``GET /auth/v1/user``."""
    service = _service(request)
    identity = await service.verifier.verify(bearer_token(request.headers.get("authorization")))
    return _json(await service.user_of(identity), _NO_STORE)


async def jwks(request: Request) -> Response:
    """``GET /auth/v1/.well-known/jwks.json``: the public key the access tokens are signed with."""
    return _json(_service(request).key.jwks,
                 {"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"})


ROUTES = [
    Route(f"{AUTH_PATH}/token", token, methods=["POST"]),
    Route(f"{AUTH_PATH}/logout", logout, methods=["POST"]),
    Route(f"{AUTH_PATH}/user", user, methods=["GET"]),
    Route(f"{AUTH_PATH}/.well-known/jwks.json", jwks, methods=["GET"]),
]
