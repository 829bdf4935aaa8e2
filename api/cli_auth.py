"""``reactor auth …``: tokens for scripts, and (with the embedded Identity) users and sign-in.

Two kinds of command live here. ``token`` and ``users …`` are server-side: they read
reactor.toml and act on the data directory's key or on the users in Redis directly (``REDIS_URL``,
or ``reactor serve``'s private Redis, started for the command when no gateway runs it).
``login``, ``logout`` and ``whoami`` are client commands: they talk to a gateway's Identity API
over HTTP (``api/client.py``), need no reactor.toml, and print a failure as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from shared.config import Settings

T = TypeVar("T")

EXTERNAL_IDENTITY = "This gateway uses the Identity service at REACTOR_AI_AUTH_URL; {what} there."


def cmd_auth_token(args: argparse.Namespace, settings: Settings) -> int:
    from .auth import LocalKey

    if settings.auth_url:
        print("This gateway verifies tokens from the Identity service at REACTOR_AI_AUTH_URL; "
              "get a token there.", file=sys.stderr)
        return 2
    key = LocalKey.load_or_create(settings.data_dir)
    from .auth import ADMIN_CLAIM

    print(key.mint(args.user_id, args.ttl, settings.auth_issuer, settings.auth_audience,
                   extra={ADMIN_CLAIM: True} if args.admin else None))
    return 0


# -- passwords ---------------------------------------------------------------------------------------


class NoPassword(Exception):
    pass


def read_password(args: argparse.Namespace, confirm: bool) -> str:
    """``--password``, else one line of standard input with ``--password-stdin``, else a prompt
    (twice when ``confirm``)."""
    if args.password is not None:
        return args.password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    try:
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password again: ") != password:
            raise NoPassword("the passwords do not match")
    except EOFError:
        raise NoPassword("no password given (use --password-stdin to pipe one)") from None
    return password


def _password_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password", help="the password (visible to other users of this machine; "
                                          "without it you are prompted)")
    group.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


# -- users (server side) -----------------------------------------------------------------------------


@contextlib.contextmanager
def _store_url(settings: Settings) -> Iterator[tuple[str, bool]]:
    """The Redis holding the users, and whether it is the data directory's private one.

    ``REDIS_URL`` (or ``gateway.redis_url``) when set; otherwise the private Redis of ``reactor
    serve``: the running one, or one started for this command and stopped after it (it saves its
    data on the way out, as under ``reactor serve``).
    """
    import redis

    from .embedded_redis import EmbeddedRedis

    if settings.redis_url:
        yield settings.redis_url, False
        return
    embedded = EmbeddedRedis(settings.data_dir)
    try:
        redis.Redis(unix_socket_path=str(embedded.socket), socket_timeout=1).ping()
        running = True
    except redis.ConnectionError:
        running = False
    if running:
        yield embedded.url, True
        return
    url = embedded.start()
    try:
        yield url, True
    finally:
        embedded.stop()


def _with_users(settings: Settings, action: Callable[[Any], Awaitable[T]], changes: bool) -> T:
    from redis.exceptions import ResponseError

    from shared.keys import Keys
    from shared.redis_client import open_redis

    from .identity import Users

    async def run(url: str, private: bool) -> T:
        client = open_redis(url, timeout=settings.redis_timeout)
        try:
            result = await action(Users(client, Keys(settings.key_prefix)))
            if changes and private:
                # The private Redis snapshots only now and then: keep an account change on disk now.
                with contextlib.suppress(ResponseError):
                    await client.bgsave()
            return result
        finally:
            await client.aclose()

    with _store_url(settings) as (url, private):
        return asyncio.run(run(url, private))


def _users_command(handler: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace, Settings], int]:
    """Refuse with an external Identity; print a failed operation as one line."""

    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        from .identity import UserError

        if settings.auth_url:
            print(EXTERNAL_IDENTITY.format(what="manage users"), file=sys.stderr)
            return 2
        try:
            return handler(args, settings)
        except (UserError, NoPassword) as exc:
            print(f"reactor: {exc}", file=sys.stderr)
            return 1

    return wrapped


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


@_users_command
def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from .client import as_json
    from .identity import check_email, check_password

    email = check_email(args.email)  # before asking for a password
    password = check_password(read_password(args, confirm=True))
    user = _with_users(settings, lambda users: users.create(email, password, admin=args.admin), changes=True)
    print(as_json(user.public()) if args.json else
          f"Added {user.email} ({user.id}){' as an administrator' if user.admin else ''}.")
    return 0


@_users_command
def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from .client import as_json

    users = _with_users(settings, lambda users: users.all(), changes=False)
    if args.json:
        print(as_json([user.public() for user in users]))
        return 0
    if not users:
        print("No users yet: add one with `reactor auth users add EMAIL`.")
        return 0
    rows = [("ID", "EMAIL", "STATUS", "CREATED")] + [
        (u.id, u.email, ("disabled" if u.disabled else "active") + (", admin" if u.admin else ""), _when(u.created_at))
        for u in users]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


@_users_command
def cmd_users_remove(args: argparse.Namespace, settings: Settings) -> int:
    from .client import as_json

    user = _with_users(settings, lambda users: users.remove(args.email), changes=True)
    print(as_json(user.public()) if args.json else f"Removed {user.email} ({user.id}); their sessions have ended.")
    return 0


def _set_disabled(disabled: bool) -> Callable[[argparse.Namespace, Settings], int]:
    @_users_command
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        from .client import as_json

        user = _with_users(settings, lambda users: users.set_disabled(args.email, disabled), changes=True)
        if args.json:
            print(as_json(user.public()))
        elif disabled:
            print(f"Disabled {user.email} ({user.id}): they cannot sign in, and their sessions have ended.")
        else:
            print(f"Enabled {user.email} ({user.id}).")
        return 0

    return handler


@_users_command
def cmd_users_password(args: argparse.Namespace, settings: Settings) -> int:
    from .client import as_json
    from .identity import check_password

    password = check_password(read_password(args, confirm=True))
    user = _with_users(settings, lambda users: users.set_password(args.email, password), changes=True)
    print(as_json(user.public()) if args.json else f"New password set for {user.email}; their sessions have ended.")
    return 0


# -- sign-in (client side) ---------------------------------------------------------------------------


def _client_command(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A failure is one line on stderr and exit status 1."""

    def wrapped(args: argparse.Namespace) -> int:
        from .client import ClientError

        try:
            return handler(args)
        except NoPassword as exc:
            print(ClientError(str(exc)).line(), file=sys.stderr)
        except ClientError as exc:
            print(exc.line(), file=sys.stderr)
        return 1

    return wrapped


def _env_for(credentials: Any) -> Mapping[str, str]:
    """The environment, with the stored session's gateway when ``REACTOR_URL`` does not name one."""
    env = dict(os.environ)
    if credentials is not None and not env.get("REACTOR_URL"):
        env["REACTOR_URL"] = credentials.url
    return env


def _call(method: str, url: str, **kwargs: Any) -> Any:
    import httpx

    from .client import TIMEOUT, ClientError

    try:
        return httpx.request(method, url, timeout=TIMEOUT, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the Identity service at {url}: {exc}") from None


def _answer(response: Any) -> dict[str, Any]:
    from .client import ClientError, error_from

    if response.status_code != 200:
        raise error_from(response)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(f"unexpected answer from {response.request.url}")
    return answer


def _until(expires_at: float | None) -> str:
    if expires_at is None:
        return "no expiry"
    minutes = round((expires_at - time.time()) / 60)
    return f"{_when(expires_at)} (in {minutes} min)" if minutes >= 0 else f"{_when(expires_at)} (expired)"


@_client_command
def cmd_login(args: argparse.Namespace) -> int:
    from . import client

    env = os.environ
    password = read_password(args, confirm=False)
    auth = client.auth_url(env)
    response = _call("POST", f"{auth}/token", params={"grant_type": "password"},
                     json={"email": args.email, "password": password})
    try:
        credentials = client.credentials_from(_answer(response), client.gateway_url(env))
    except (KeyError, TypeError, ValueError):
        raise client.ClientError(f"unexpected answer from {auth}/token") from None
    path = client.save_credentials(credentials, env)
    if args.json:
        print(client.as_json({"user": {"id": credentials.user_id, "email": credentials.email},
                              "url": credentials.url, "expires_at": credentials.expires_at,
                              "credentials": str(path)}))
    else:
        print(f"Signed in to {credentials.url} as {credentials.email} ({credentials.user_id}).")
        print(f"Access token valid until {_until(credentials.expires_at)}, renewed automatically; "
              f"credentials in {path}")
    return 0


@_client_command
def cmd_logout(args: argparse.Namespace) -> int:
    from . import client

    credentials = client.load_credentials()
    if credentials is None:
        print(client.as_json({"signed_out": False}) if args.json else "Not signed in.")
        return 0
    env = _env_for(credentials)
    auth = client.auth_url(env)
    problem = None
    try:
        response = _call("POST", f"{auth}/logout", headers={"Authorization": f"Bearer {credentials.access_token}"},
                         json={"refresh_token": credentials.refresh_token} if credentials.refresh_token else {})
        if response.status_code not in (200, 204):
            problem = client.error_from(response).line()
    except client.ClientError as exc:
        problem = exc.line()
    client.clear_credentials(env)
    if problem:
        print(f"warning: the session was not revoked at the server ({problem}); it ends when it expires",
              file=sys.stderr)
    if args.json:
        print(client.as_json({"signed_out": True, "revoked": problem is None, "email": credentials.email}))
    else:
        print(f"Signed out{' ' + credentials.email if credentials.email else ''}.")
    return 0


@_client_command
def cmd_whoami(args: argparse.Namespace) -> int:
    import jwt

    from . import client

    env = _env_for(client.load_credentials())
    token = client.access_token(env)  # refreshed first when it has expired
    user = _answer(_call("GET", f"{client.auth_url(env)}/user", headers={"Authorization": f"Bearer {token}"}))
    try:
        expires_at = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        expires_at = None
    source = "REACTOR_TOKEN" if env.get("REACTOR_TOKEN") else str(client.credentials_path(env))
    if args.json:
        print(client.as_json({"id": user.get("id"), "email": user.get("email"), "url": client.gateway_url(env),
                              "expires_at": expires_at, "token_from": source}))
        return 0
    print(f"{user.get('email') or '(no email)'} ({user.get('id')}) at {client.gateway_url(env)}")
    print(f"access token from {source}, expires {_until(expires_at)}")
    return 0


# -- the parser --------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    auth = sub.add_parser("auth", help="tokens, users and sign-in")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    token = auth_sub.add_parser("token", help="mint a token for USER_ID with the single-box key")
    common(token)
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default: one day)")
    token.add_argument("--admin", action="store_true", help="add the admin claim: the token reads every user's usage")
    token.set_defaults(handler=cmd_auth_token)

    login = auth_sub.add_parser("login", help="sign in to the gateway at $REACTOR_URL and keep the session")
    login.add_argument("email")
    _password_options(login)
    login.add_argument("--json", action="store_true", help="print the result as JSON")
    login.set_defaults(handler=cmd_login, client=True)

    logout = auth_sub.add_parser("logout", help="end the stored session and forget it")
    logout.add_argument("--json", action="store_true", help="print the result as JSON")
    logout.set_defaults(handler=cmd_logout, client=True)

    whoami = auth_sub.add_parser("whoami", help="who the stored session (or REACTOR_TOKEN) signs in as")
    whoami.add_argument("--json", action="store_true", help="print the result as JSON")
    whoami.set_defaults(handler=cmd_whoami, client=True)

    users = auth_sub.add_parser("users", help="the embedded Identity's users (acts on Redis directly)")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    def users_parser(name: str, help: str, handler: Callable[..., int], email: bool = True) -> argparse.ArgumentParser:
        parser = users_sub.add_parser(name, help=help)
        common(parser)
        if email:
            parser.add_argument("email")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.set_defaults(handler=handler)
        return parser

    add = users_parser("add", "add a user (prompts for the password)", cmd_users_add)
    _password_options(add)
    add.add_argument("--admin", action="store_true",
                     help="an administrator: their access tokens carry the admin claim (fleet view, everyone's usage)")
    users_parser("list", "list the users", cmd_users_list, email=False)
    users_parser("remove", "remove a user and end their sessions", cmd_users_remove)
    users_parser("disable", "stop a user from signing in and end their sessions", _set_disabled(True))
    users_parser("enable", "let a disabled user sign in again", _set_disabled(False))
    _password_options(users_parser("password", "set a user's password and end their sessions", cmd_users_password))
