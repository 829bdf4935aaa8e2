"""Redis beyond one box: the ``redis+sentinel://`` URL, a gateway following a Sentinel failover,
and the gateway's Lua scripts on a real Redis Cluster."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
import redis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job_raw
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from api.embedded_redis import find_redis_server
from shared.config import ConfigError
from shared.keys import Keys
from shared.queue import Admission, Enqueuer, job_deserializer
from shared.redis_client import SentinelURL, parse_sentinel_url
from shared.wire import Job
from workers.worker import _CLAIM, _END

from .gateway_proc import RunningGateway, free_port

# Every wait for a server process is bounded by this.
START_WAIT_S = 10.0
SERVICE = "mymaster"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s (last error {last!r})")


# -- the URL ---------------------------------------------------------------------------------------

def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/2") == SentinelURL(
        [("10.0.0.1", 26379), ("10.0.0.2", 26380)], "mymaster", 2)
    assert parse_sentinel_url("redis+sentinel://:s3cr%40t@sentinel/cache") == SentinelURL(
        [("sentinel", 26379)], "cache", 0, None, "s3cr@t")
    assert parse_sentinel_url("redis+sentinel://app:pw@[::1]:5000/svc") == SentinelURL(
        [("::1", 5000)], "svc", 0, "app", "pw")
    for bad in ("redis+sentinel://host:26379", "redis+sentinel://host:26379/svc/x",
                "redis+sentinel://host:port/svc", "redis+sentinel://,host/svc", "redis+sentinel://host/a/1/2"):
        with pytest.raises(ConfigError, match="service_name"):
            parse_sentinel_url(bad)


# -- Sentinel ----------------------------------------------------------------------------------------

class Server:
    """One redis-server process (a data node or a Sentinel) in a directory of its own."""

    def __init__(self, workdir: Path, name: str, args: list[str], config: str = "") -> None:
        self.port = free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        conf = self.dir / "redis.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nsave \"\"\nappendonly no\n{config}")
        self.proc = subprocess.Popen([find_redis_server(), str(conf), *args], cwd=self.dir,
                                     stdout=open(self.dir / "out.log", "wb"), stderr=subprocess.STDOUT)
        self.client = redis.Redis(port=self.port, socket_timeout=2)
        wait_for(self.client.ping, START_WAIT_S, f"{name} on port {self.port} to answer")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return (self.dir / "out.log").read_text()[-3000:]


@pytest.fixture
def sentinel_set(tmp_path):
    """A primary, one replica and one Sentinel that fails the primary over a second after it dies."""
    servers: list[Server] = []
    try:
        primary = Server(tmp_path, "primary", [])
        servers.append(primary)
        replica = Server(tmp_path, "replica", [], f"replicaof 127.0.0.1 {primary.port}\n")
        servers.append(replica)
        wait_for(lambda: replica.client.info("replication")["master_link_status"] == "up", START_WAIT_S,
                 "the replica to sync")
        sentinel = Server(tmp_path, "sentinel", ["--sentinel"],
                          f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
                          f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                          f"sentinel failover-timeout {SERVICE} 10000\n")
        servers.append(sentinel)
        wait_for(lambda: any(r["port"] == replica.port for r in sentinel.client.sentinel_slaves(SERVICE)),
                 START_WAIT_S, "the Sentinel to find the replica")
        yield primary, replica, sentinel
    finally:
        for server in servers:
            server.kill()


def test_gateway_follows_a_sentinel_failover(tmp_path, sentinel_set, openrouter_mock, local_mock) -> None:
    """API and worker on a ``redis+sentinel://`` URL: the primary dies, Sentinel promotes the
    replica, and the gateway carries on against the new primary by itself. Requests while no
    primary is known may get 503 (never another error, never a hang); every request answered
    200 has exactly one usage record in the new primary's stream."""
    primary, replica, sentinel = sentinel_set
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}"
    gw = RunningGateway(tmp_path / "gw", f"redis://127.0.0.1:{primary.port}/0", f"rha-{uuid.uuid4().hex[:6]}:",
                        openrouter_mock.url, local_mock.url, "redis_timeout = 2", env={"REDIS_URL": url})
    gw.start()
    ok: list[str] = []
    failed: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        client = gw.client(timeout=15.0)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                answer = client.chat.completions.create(model="mock-local",
                                                        messages=[{"role": "user", "content": f"ha {n}"}])
                ok.append(answer.id.removeprefix("chatcmpl-"))
            except openai.APIStatusError as exc:
                failed.append(exc.status_code)
                time.sleep(0.05)
            except openai.APIError as exc:  # a hang or a dropped connection: never expected
                failed.append(-1)
                raise AssertionError(repr(exc)) from exc

    loader = threading.Thread(target=traffic, daemon=True)
    try:
        loader.start()
        wait_for(lambda: len(ok) >= 5, 15, "requests before the failover")
        before = len(ok)
        primary.kill()
        new_port = wait_for(
            lambda: (port := int(sentinel.client.sentinel_get_master_addr_by_name(SERVICE)[1])) != primary.port
            and port, 20, "the Sentinel to promote the replica")
        assert new_port == replica.port
        gw.redis = replica.client  # the test's own reads (and the clean-up) go to the new primary
        wait_for(lambda: len(ok) >= before + 10, 30, "requests served after the failover")
        stop.set()
        loader.join(20)
        assert not loader.is_alive()
        assert set(failed) <= {503}, (failed, gw.logs())
        deadline = time.monotonic() + 10
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = {}
            for event in gw.usage_events():
                rid = event["properties"]["request_id"]
                counts[rid] = counts.get(rid, 0) + 1
            if all(r in counts for r in ok):
                break
            time.sleep(0.2)
        assert [r for r in ok if counts.get(r) != 1] == [], (counts, gw.logs())
    finally:
        stop.set()
        loader.join(20)
        gw.stop()


# -- Cluster -------------------------------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path):
    """Three primaries (no replicas) sharing the 16384 slots; yields one node's port."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is needed to create a cluster")
    nodes: list[Server] = []
    try:
        for i in range(3):
            # The bus port is the data port + 10000 unless set: too high for most free ports.
            nodes.append(Server(tmp_path, f"node{i}", [], "cluster-enabled yes\ncluster-config-file nodes.conf\n"
                                                          f"cluster-port {free_port()}\n"))
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=START_WAIT_S)
        for node in nodes:
            wait_for(lambda: node.client.cluster("info")["cluster_state"] == "ok", START_WAIT_S,
                     f"node {node.port} to see the cluster ok")
        yield nodes[0].port
    finally:
        for node in nodes:
            node.kill()


def test_queue_scripts_run_on_a_cluster(cluster) -> None:
    """Admission, claim and end, with the production key builders, on a real three-node cluster:
    arq's per-job keys carry the queue's hash tag (``Keys.job_id``), so each call touches one slot."""
    keys = Keys(f"rcl-{uuid.uuid4().hex[:6]}:")
    providers = ["openrouter", "local", "bedrock", "azure"]

    def job(i: int) -> Job:
        return Job(request_id=f"req-{i}", kind="chat", reply_channel="r", user_id="u", targets=[], alias=None,
                   body=b"{}")

    async def run() -> None:
        client = RedisCluster(host="127.0.0.1", port=cluster, socket_timeout=2)
        try:
            # The queues land on different nodes: the test means something only if they spread.
            assert len({key_slot(keys.queue(p).encode()) for p in providers}) == len(providers)
            enqueuer = Enqueuer(client, keys)
            claim, end = client.register_script(_CLAIM), client.register_script(_END)
            for n, provider in enumerate(providers):
                # One provider's jobs in one loop turn: one admission script call.
                # With the user's share counted too: its key carries the queue's tag as well.
                admitted = await asyncio.gather(*(enqueuer.enqueue(job(10 * n + i), provider, 30, limit=2,
                                                                   user_limit=2) for i in range(3)))
                assert admitted == [Admission.ADMITTED, Admission.ADMITTED, Admission.POOL_FULL]
                owner = keys.queue_user_jobs(provider, "u")
                assert key_slot(owner.encode()) == key_slot(keys.queue(provider).encode())
                assert await client.zcard(owner) == 2
                queue = keys.queue(provider)
                claimed = await claim(keys=[queue], args=[int(time.time() * 1000), 60_000, in_progress_key_prefix,
                                                          job_key_prefix, retry_key_prefix, 10])
                ids = [claimed[i].decode() for i in range(0, len(claimed), 3)]
                assert ids == [keys.job_id(provider, job(10 * n + i).request_id) for i in range(2)]
                for i in range(0, len(claimed), 3):
                    name, args, *_ = deserialize_job_raw(claimed[i + 1], deserializer=job_deserializer)
                    assert name == "chat" and args
                    assert int(claimed[i + 2]) == 1  # first try
                assert await end(keys=[queue, *(owner for _ in ids)],
                                 args=[in_progress_key_prefix, job_key_prefix, retry_key_prefix, *ids]) == 2
                assert await client.zcard(queue) == 0
                assert await client.zcard(owner) == 0
                assert not await client.exists(*(p + i for i in ids for p in (in_progress_key_prefix,
                                                                              job_key_prefix, retry_key_prefix)))
        finally:
            await client.aclose()

    asyncio.run(run())
