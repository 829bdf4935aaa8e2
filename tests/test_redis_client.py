"""The connection factory's pool against a real Redis: commands written in the caller's step, and
a pooled connection that holds stale data or was closed by the server replaced before use."""

from __future__ import annotations

import asyncio
import time
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


def test_write_now_writes_in_the_callers_step_and_reads_the_reply_in_a_task(redis_url) -> None:
    import redis as sync_redis

    from shared.redis_client import write_now

    key = f"rc-{uuid.uuid4().hex[:8]}"
    watcher = sync_redis.Redis.from_url(redis_url)

    async def main():
        client = open_redis(redis_url, timeout=5)
        try:
            await client.ping()  # a connection in the pool, ready
            reply = write_now(client, "SET", key, "written")
            assert reply is not None
            # Still in this step, the loop blocked: Redis has the command all the same.
            seen = None
            for _ in range(200):
                if (seen := watcher.get(key)) is not None:
                    break
                time.sleep(0.005)
            answer = await reply
            return seen, answer, await client.get(key)
        finally:
            await client.delete(key)
            await client.aclose()

    try:
        seen, answer, after = asyncio.run(main())
    finally:
        watcher.close()
    assert seen == b"written" and answer in (b"OK", "OK", True) and after == b"written"


def test_write_now_without_a_ready_connection_leaves_it_to_the_usual_way(redis_url) -> None:
    from shared.redis_client import write_now

    async def main():
        fresh = open_redis(redis_url, timeout=5)  # no connection made yet
        stock = Redis(connection_pool=ConnectionPool.from_url(redis_url))
        try:
            await stock.ping()
            return write_now(fresh, "PING"), write_now(stock, "PING"), await fresh.ping()
        finally:
            await fresh.aclose()
            await stock.aclose()

    assert asyncio.run(main()) == (None, None, True)


def test_write_now_raises_an_error_reply_and_keeps_the_connection(redis_url) -> None:
    from redis.exceptions import NoScriptError

    from shared.redis_client import write_now

    async def main():
        client = open_redis(redis_url, timeout=5, max_connections=1)
        try:
            before = await client.client_id()
            reply = write_now(client, "EVALSHA", "0" * 40, 0)
            assert reply is not None
            try:
                await reply
            except NoScriptError:
                raised = True
            else:
                raised = False
            return raised, before, await client.client_id()
        finally:
            await client.aclose()

    raised, before, after = asyncio.run(main())
    assert raised and before == after
