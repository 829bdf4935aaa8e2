"""``reactor auth …`` as a user runs it: users managed on the gateway's Redis, then login, whoami
and logout against a real gateway, each command its own process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest
import redis

from api.client import Credentials

from .gateway_proc import REPO, RunningGateway, free_port

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gateway = RunningGateway(tmp_path_factory.mktemp("cli-auth"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def home(tmp_path) -> Path:
    """An XDG_CONFIG_HOME of the test's own, for the credentials file."""
    path = tmp_path / "config"
    path.mkdir()
    return path


def reactor(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "REDIS_URL", "OPENROUTER_"))}
    # A session of its own: no terminal, so password prompts read standard input.
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=cwd,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})}, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


def server(gw: RunningGateway, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """A server-side command against the test gateway's Redis and reactor.toml."""
    return reactor(*args, "--config", str(gw.config), cwd=gw.workdir, env={"REDIS_URL": gw.redis_url}, stdin=stdin)


def client(gw: RunningGateway, home: Path, *args: str, env: dict[str, str] | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    """A client command, from a directory whose reactor.toml is broken: client commands never read it."""
    cwd = home.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    (cwd / "reactor.toml").write_text("[gateway\n")
    return reactor(*args, cwd=cwd, env={"XDG_CONFIG_HOME": str(home), "REACTOR_URL": gw.url, **(env or {})},
                   stdin=stdin)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def add_user(gw: RunningGateway) -> tuple[str, str]:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    result = server(gw, "auth", "users", "add", email, "--password", PASSWORD, "--json")
    assert result.returncode == 0, result.stderr
    return email, json.loads(result.stdout)["id"]


def credentials_file(home: Path) -> Path:
    return home / "reactor" / "credentials.json"


def stored(home: Path) -> Credentials:
    return msgspec.json.decode(credentials_file(home).read_bytes(), type=Credentials)


def refresh_status(gw: RunningGateway, token: str) -> int:
    return httpx.post(f"{gw.url}/auth/v1/token", params={"grant_type": "refresh_token"},
                      json={"refresh_token": token}, timeout=10).status_code


# --- users ----------------------------------------------------------------------------------------


def test_users_add_list_disable_remove(gw):
    email = f"Admin-{uuid.uuid4().hex[:6]}@Example.com"
    piped = f"piped-{uuid.uuid4().hex[:6]}@example.com"

    added = server(gw, "auth", "users", "add", email, "--password", PASSWORD)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"Added {email.lower()} (user_")
    assert server(gw, "auth", "users", "add", piped, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0

    table = server(gw, "auth", "users", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "EMAIL", "STATUS", "CREATED"]
    assert any(email.lower() in row and "active" in row for row in rows)
    listing = json.loads(server(gw, "auth", "users", "list", "--json").stdout)
    mine = {u["email"]: u for u in listing}
    assert {email.lower(), piped} <= mine.keys()
    assert set(mine[piped]) == {"id", "email", "disabled", "created_at"}  # never the hash

    assert server(gw, "auth", "users", "disable", piped).returncode == 0
    listing = json.loads(server(gw, "auth", "users", "list", "--json").stdout)
    assert [u["disabled"] for u in listing if u["email"] == piped] == [True]
    assert httpx.post(f"{gw.url}/auth/v1/token", params={"grant_type": "password"},
                      json={"email": piped, "password": PASSWORD}, timeout=10).status_code == 400
    assert server(gw, "auth", "users", "enable", piped).returncode == 0

    removed = server(gw, "auth", "users", "remove", email)
    assert removed.returncode == 0 and "Removed" in removed.stdout
    assert email.lower() not in server(gw, "auth", "users", "list").stdout
    assert one_line_error(server(gw, "auth", "users", "remove", email)) == \
        f"reactor: no user with the email {email.lower()}"


def test_users_add_refuses_bad_input(gw):
    email = f"bad-{uuid.uuid4().hex[:6]}@example.com"

    assert "at least 8 characters" in one_line_error(server(gw, "auth", "users", "add", email, "--password", "short"))
    assert "a password is needed" in one_line_error(server(gw, "auth", "users", "add", email, "--password", ""))
    assert "not an email" in one_line_error(server(gw, "auth", "users", "add", "nobody", "--password", PASSWORD))
    # Prompted twice (no terminal here, so from standard input): they must match.
    mismatch = server(gw, "auth", "users", "add", email, stdin="first password\nsecond password\n")
    assert mismatch.returncode == 1 and "do not match" in mismatch.stderr
    prompted = server(gw, "auth", "users", "add", email, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.returncode == 0, prompted.stderr
    assert "already exists" in one_line_error(server(gw, "auth", "users", "add", email, "--password", PASSWORD))


def test_users_with_the_private_redis_of_reactor_serve(tmp_path):
    """Without REDIS_URL the users live in the data directory's private Redis, started for the
    command when no `reactor serve` runs it, and kept on disk between runs."""
    env = {"REACTOR_DATA_DIR": str(tmp_path / "data")}

    added = reactor("auth", "users", "add", "solo@example.com", "--password", PASSWORD, cwd=tmp_path, env=env)
    assert added.returncode == 0, added.stderr
    listed = reactor("auth", "users", "list", "--json", cwd=tmp_path, env=env)

    assert listed.returncode == 0, listed.stderr
    assert [u["email"] for u in json.loads(listed.stdout)] == ["solo@example.com"]
    socket_path = tmp_path / "data" / "redis" / "redis.sock"
    try:
        redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
        pytest.fail("the private Redis started for the command was left running")
    except redis.ConnectionError:
        pass


def test_users_commands_refuse_with_an_external_identity(tmp_path):
    result = reactor("auth", "users", "list", cwd=tmp_path,
                     env={"REACTOR_AI_AUTH_URL": "https://identity.example", "REDIS_URL": "redis://127.0.0.1:1/0"})

    assert result.returncode == 2 and "REACTOR_AI_AUTH_URL" in one_line_error(result)


# --- sign-in --------------------------------------------------------------------------------------


def test_login_whoami_logout(gw, home):
    email, user_id = add_user(gw)

    login = client(gw, home, "auth", "login", email, "--password", PASSWORD)

    assert login.returncode == 0, login.stderr
    assert f"Signed in to {gw.url} as {email} ({user_id})" in login.stdout
    path = credentials_file(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = stored(home)
    assert (saved.url, saved.email, saved.user_id) == (gw.url, email, user_id)
    assert saved.access_token not in login.stdout and saved.refresh_token not in login.stdout

    whoami = client(gw, home, "auth", "whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.splitlines()[0] == f"{email} ({user_id}) at {gw.url}"
    assert "expires" in whoami.stdout and "(in 1" in whoami.stdout  # 15 minutes, give or take
    as_json = json.loads(client(gw, home, "auth", "whoami", "--json").stdout)
    assert as_json["id"] == user_id and as_json["email"] == email
    assert abs(as_json["expires_at"] - saved.expires_at) <= 1

    # The stored token works on the gateway itself.
    models = httpx.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {saved.access_token}"}, timeout=10)
    assert models.status_code == 200

    logout = client(gw, home, "auth", "logout")
    assert logout.returncode == 0, logout.stderr
    assert logout.stdout.strip() == f"Signed out {email}." and not logout.stderr
    assert not path.exists()
    assert refresh_status(gw, saved.refresh_token) == 401  # revoked at the server

    after = client(gw, home, "auth", "whoami")
    assert one_line_error(after) == ("unauthorized: not signed in "
                                     "(sign in with `reactor auth login EMAIL`, or set REACTOR_TOKEN)")
    assert client(gw, home, "auth", "logout").stdout.strip() == "Not signed in."


def test_login_prompts_for_the_password_and_speaks_json(gw, home):
    email, user_id = add_user(gw)

    login = client(gw, home, "auth", "login", email, "--json", stdin=PASSWORD + "\n")

    assert login.returncode == 0, login.stderr
    answer = json.loads(login.stdout)
    assert answer["user"] == {"id": user_id, "email": email}
    assert answer["credentials"] == str(credentials_file(home))
    assert "token" not in login.stdout  # no secret in the output
    logout = client(gw, home, "auth", "logout", "--json")
    assert json.loads(logout.stdout) == {"signed_out": True, "revoked": True, "email": email}


def test_failed_login_is_one_line(gw, home):
    email, _ = add_user(gw)

    wrong = client(gw, home, "auth", "login", email, "--password", "wrong password")
    unknown = client(gw, home, "auth", "login", "nobody@example.com", "--password", PASSWORD)

    expected = "invalid_credentials: Invalid email or password. (check the email and password)"
    assert one_line_error(wrong) == expected
    assert one_line_error(unknown) == expected
    assert not credentials_file(home).exists()
    unreachable = client(gw, home, "auth", "login", email, "--password", PASSWORD,
                         env={"REACTOR_URL": f"http://127.0.0.1:{free_port()}"})
    assert one_line_error(unreachable).startswith("cannot reach the Identity service at http://127.0.0.1:")


def test_an_expired_access_token_is_refreshed_transparently(gw, home):
    email, user_id = add_user(gw)
    assert client(gw, home, "auth", "login", email, "--password", PASSWORD).returncode == 0
    first = stored(home)
    expired = msgspec.structs.replace(first, access_token=gw.token(user_id, ttl=-3600, email=email),
                                      expires_at=time.time() - 60)
    credentials_file(home).write_bytes(msgspec.json.encode(expired))

    whoami = client(gw, home, "auth", "whoami")

    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.startswith(f"{email} ({user_id})")
    fresh = stored(home)
    assert fresh.access_token != expired.access_token and fresh.refresh_token != first.refresh_token
    assert fresh.expires_at > time.time() + 600
    assert stat.S_IMODE(credentials_file(home).stat().st_mode) == 0o600
    assert refresh_status(gw, first.refresh_token) == 401  # spent by the rotation


def test_a_session_ended_at_the_server_asks_to_sign_in_again(gw, home):
    email, _ = add_user(gw)
    assert client(gw, home, "auth", "login", email, "--password", PASSWORD).returncode == 0
    saved = stored(home)
    httpx.post(f"{gw.url}/auth/v1/logout", json={"refresh_token": saved.refresh_token}, timeout=10)
    credentials_file(home).write_bytes(msgspec.json.encode(msgspec.structs.replace(saved, expires_at=time.time() - 60)))

    result = client(gw, home, "auth", "whoami")

    assert one_line_error(result).startswith("unauthorized: the session has ended; sign in again")


def test_whoami_with_reactor_token(gw, home):
    result = client(gw, home, "auth", "whoami", env={"REACTOR_TOKEN": gw.token("user_script")})

    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"(no email) (user_script) at {gw.url}"
    assert second.startswith("access token from REACTOR_TOKEN, expires ")


def test_logout_forgets_the_session_even_when_the_gateway_is_gone(gw, home):
    email, _ = add_user(gw)
    assert client(gw, home, "auth", "login", email, "--password", PASSWORD).returncode == 0
    saved = stored(home)
    dead = f"http://127.0.0.1:{free_port()}"
    credentials_file(home).write_bytes(msgspec.json.encode(msgspec.structs.replace(saved, url=dead)))

    # Without REACTOR_URL, logout goes to the gateway the session came from.
    result = reactor("auth", "logout", cwd=home, env={"XDG_CONFIG_HOME": str(home)})

    assert result.returncode == 0
    assert result.stderr.startswith(f"warning: the session was not revoked at the server (cannot reach the Identity "
                                    f"service at {dead}/auth/v1/logout")
    assert not credentials_file(home).exists()
    assert refresh_status(gw, saved.refresh_token) == 200  # the server never heard of it
