"""The connection factory's pool against a real Redis: commands written in the caller's step, and
a pooled connection that holds stale data or was closed by the server replaced before use."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import ConnectionPool, Redis

from shared.redis_client import open_redis


def _tasks_made_by(make_redis, key: str) -> int:
    """How many tasks the event loop created while 50 GETs ran on a client ``make_redis`` gives
    (connected beforehand: connecting may make tasks of its own)."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        made = 0

        def factory(loop, coro, **kwargs):
            nonlocal made
            made += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        redis = make_redis()
        try:
            await redis.get(key)
            loop.set_task_factory(factory)
            try:
                for _ in range(50):
                    await redis.get(key)
            finally:
                loop.set_task_factory(None)
        finally:
            await redis.aclose()
        return made

    return asyncio.run(main())


def test_commands_go_out_without_a_task_per_write(redis_url) -> None:
    key = f"rc-{uuid.uuid4().hex[:8]}"
    stock = _tasks_made_by(lambda: Redis(connection_pool=ConnectionPool.from_url(redis_url, socket_timeout=5)), key)
    assert stock >= 50  # redis-py's wait_for: a task per write, which this pool avoids
    assert _tasks_made_by(lambda: open_redis(redis_url, timeout=5), key) == 0


def test_a_pooled_connection_holding_an_unread_reply_is_replaced(redis_url) -> None:
    key = f"rc-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        redis = open_redis(redis_url, timeout=5, max_connections=1)
        try:
            await redis.set(key, "right")
            pool = redis.connection_pool
            connection = await pool.get_connection()
            await connection.send_command("ECHO", "stale")  # its reply is never read
            await asyncio.sleep(0.05)
            await pool.release(connection)
            assert await redis.get(key) == b"right"
            assert await redis.echo("fresh") == b"fresh"
        finally:
            await redis.delete(key)
            await redis.aclose()

    asyncio.run(main())


def test_a_pooled_connection_the_server_closed_is_replaced(redis_url) -> None:
    key = f"rc-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        redis = open_redis(redis_url, timeout=5, max_connections=1)
        admin = open_redis(redis_url, timeout=5)
        try:
            await redis.set(key, "v")
            client_id = await redis.client_id()
            await admin.execute_command("CLIENT", "KILL", "ID", client_id)
            await asyncio.sleep(0.05)
            assert await redis.get(key) == b"v"
            assert await redis.client_id() != client_id
        finally:
            await admin.delete(key)
            await admin.aclose()
            await redis.aclose()

    asyncio.run(main())
