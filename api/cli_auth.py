"""``reactor auth …``: tokens for scripts, and (with the embedded Identity) users and sign-in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from shared.config import Settings


def cmd_auth_token(args: argparse.Namespace, settings: Settings) -> int:
    from .auth import LocalKey

    if settings.auth_url:
        print("This gateway verifies tokens from the Identity service at REACTOR_AI_AUTH_URL; "
              "get a token there.", file=sys.stderr)
        return 2
    key = LocalKey.load_or_create(settings.data_dir)
    print(key.mint(args.user_id, args.ttl, settings.auth_issuer, settings.auth_audience))
    return 0


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    auth = sub.add_parser("auth", help="tokens, users and sign-in")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    token = auth_sub.add_parser("token", help="mint a token for USER_ID with the single-box key")
    common(token)
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default: one day)")
    token.set_defaults(handler=cmd_auth_token)
