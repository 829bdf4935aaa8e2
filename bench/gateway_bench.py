#!/usr/bin/env python3
"""The gateway end to end against the shared fast mock: what it adds over the upstream alone.

Starts ``../shared/bench/mock_upstream.py``, then the gateway (``reactor api`` plus
``--workers`` × ``reactor worker``, or ``reactor serve`` with ``--serve``) pointed at it with a
fresh ``reactor.toml``, a fresh signing key and a unique Redis key prefix, mints a token, and
drives ``../shared/bench/loadgen.py`` through the cases (non-stream/stream at c=1 and c=32 by
default), first against the mock directly, then through the gateway.

The table gives rps, latency and TTFT percentiles, errors, the gateway's additions over the
mock for the same case, and the CPU each party used. ``other`` is the machine's busy time
minus ours (Redis, other people's work): read a row as contended when it is large.

``--floor`` (on with ``--slow-streams``) also runs ``bench/floor_proxy.py`` through the cases: one
aiohttp process relaying the mock's bytes and nothing else, the least any Python gateway process
costs on this machine; its row says which targets the machine allows at all.

``--peer`` runs the shared side-by-side (``../shared/bench/peer_bench.sh``) instead, with
this gateway as its ``GATEWAY_CMD`` (``bench/launch_gateway.sh``) and ``--litellm`` passed
through, so LiteLLM and Reactor are measured in one run against one mock.

Every child runs in its own session and is stopped by process group; every wait is bounded;
the run's Redis keys (by prefix) are deleted on exit. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_BENCH = (REPO / ".." / "shared" / "bench").resolve()
CLK = os.sysconf("SC_CLK_TCK")
MODEL = "gpt-4o-mini"
UPSTREAM_KEY = "sk-mock-upstream"

def parse_case(case: str) -> tuple[bool, int] | None:
    """``ns32`` → (False, 32), ``s1000`` → (True, 1000); None when it is neither."""
    kind, digits = (case[:2], case[2:]) if case.startswith("ns") else (case[:1], case[1:])
    if kind not in ("ns", "s") or not digits.isdigit() or int(digits) < 1:
        return None
    return kind == "s", int(digits)


def case_name(case: str) -> str:
    stream, conc = parse_case(case)
    return f"{'stream' if stream else 'non-stream'} c={conc}"


# ------------------------------------------------------------------------------------------
# Processes


class Child:
    """A process in its own session, logged to a file, stopped by process group."""

    live: list["Child"] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 tee: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        out = subprocess.PIPE if tee else self._log
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        Child.live.append(self)

    def relay(self, deadline: float) -> None:
        """Copy a ``tee`` child's output to our stdout and its log until it exits or ``deadline``."""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                self._log.write(chunk)
            elif chunk == b"" and not self.alive():
                return
            else:
                time.sleep(0.2)

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.alive() or group_pids(self.pgid)):
                time.sleep(0.1)
            if not self.alive() and not group_pids(self.pgid):
                break
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        if self in Child.live:
            Child.live.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for child in reversed(list(cls.live)):
            child.stop(grace=5.0)


def _proc_stat(pid: int | str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2:].split()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _proc_stat(d)) and st[0] != b"Z" and int(st[2]) == pgid:
            pids.append(int(d))
    return pids


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        if st := _proc_stat(pid):
            total += int(st[11]) + int(st[12])
    return total / CLK


def system_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user + nice + system: irq time (loopback TCP) is charged to no process either way.
    return (v[0] + v[1] + v[2]) / CLK


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, token: str | None = None, procs: tuple[Child, ...] = ()) -> float:
    """Poll ``url`` until it answers 200; fail early if one of ``procs`` died."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        for child in procs:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited (rc={child.proc.returncode}); see {child.log_path}")
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except Exception as e:  # noqa: BLE001 - not up yet, whatever the reason
            last = type(e).__name__
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f}s: {url} ({last})")


# ------------------------------------------------------------------------------------------
# Redis housekeeping (redis-py comes with the gateway)


def redis_pid(url: str) -> int | None:
    import redis

    try:
        r = redis.Redis.from_url(url, socket_timeout=5)
        pid = int(r.info("server")["process_id"])
        r.close()
    except Exception:  # noqa: BLE001 - a remote or unreachable Redis just has no CPU column
        return None
    return pid if _proc_stat(pid) else None


def delete_prefix(url: str, prefix: str) -> int:
    import redis

    r = redis.Redis.from_url(url, socket_timeout=10)
    try:
        found = list(r.scan_iter(match=f"{prefix}*", count=1000))
        return sum(r.delete(*found[i:i + 500]) for i in range(0, len(found), 500))
    finally:
        r.close()


# ------------------------------------------------------------------------------------------
# The gateway under test


def reactor_exe() -> str:
    beside = Path(sys.executable).parent / "reactor"
    if beside.exists():
        return str(beside)
    venv = REPO / ".venv" / "bin" / "reactor"
    if venv.exists():
        return str(venv)
    found = shutil.which("reactor")
    if not found:
        raise SystemExit("cannot find the `reactor` command; run with the repo's .venv/bin/python")
    return found


def write_config(run_dir: Path, prefix: str, mock_url: str, settings: list[str] = ()) -> Path:
    """A fresh ``reactor.toml``; ``settings`` are extra ``key = value`` lines for ``[gateway]``."""
    path = run_dir / "reactor.toml"
    path.write_text(
        "[gateway]\n"
        f'data_dir = "{run_dir / "data"}"\n'
        f'key_prefix = "{prefix}"\n'
        + "".join(f"{line}\n" for line in settings) +
        "[gateway.providers.openrouter]\n"
        f'base_url = "{mock_url}"\n'
    )
    return path


def gateway_env(redis_url: str, port: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REACTOR_CONFIG", "REACTOR_DATA_DIR", "REACTOR_AI_AUTH_URL", "REACTOR_AI_BIND")}
    env.update(REDIS_URL=redis_url, OPENROUTER_API_KEY=UPSTREAM_KEY)
    if port is not None:
        env["REACTOR_AI_BIND"] = f"127.0.0.1:{port}"
    return env


def mint_token(reactor: str, config: Path, env: dict[str, str]) -> str:
    cp = subprocess.run([reactor, "auth", "token", "bench-user", "--config", str(config)], env=env,
                        capture_output=True, text=True, timeout=60)
    if cp.returncode != 0 or not cp.stdout.strip():
        raise RuntimeError(f"reactor auth token failed (rc={cp.returncode}): {cp.stderr[-500:]}")
    return cp.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------
# Load


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    """The largest summed RSS of some processes, sampled every half second until stopped."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.start_mb = pids, 0.0, rss_mb(pids)
        self.samples: list[float] = []  # one every 5 s: memory over a long case, to see it stay flat
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.wait(0.5):
            now = rss_mb(self.pids)
            self.peak = max(self.peak, now)
            n += 1
            if n % 10 == 0:
                self.samples.append(round(now, 1))

    def stop(self) -> float:
        self._stop_event.set()
        self.join(2)
        return self.peak


def profile_children(a: argparse.Namespace, watch: dict[str, list[int]], label: str) -> list[subprocess.Popen]:
    """py-spy on every gateway process for the measured part of a case (after the warmup)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(a.out_dir) / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for part in ("api", "worker"):
        for pid in watch.get(part, []):
            path = out / f"{label.replace('/', '-')}-{part}-{pid}.txt"
            procs.append(subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--duration", str(int(a.duration)), "--format", "raw",
                 "--rate", "200", "--nonblocking", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    return procs


def run_load(a: argparse.Namespace, url: str, token: str | None, case: str, watch: dict[str, list[int]],
             label: str) -> dict:
    """One loadgen run, with the CPU each watched group (by pids) used meanwhile."""
    stream, conc = parse_case(case)
    generator = [str(HERE / "spread_load.py"), "--spread", str(a.spread),
                 "--stream-s", str(a.chunks * a.chunk_delay_ms / 1000 + 0.5)] if a.spread else \
        [str(SHARED_BENCH / "loadgen.py")]
    cmd = [a.python, *generator, "--url", url, "--model", MODEL, "--concurrency", str(conc),
           "--duration", str(a.duration), "--warmup", str(a.warmup), "--timeout", str(a.request_timeout),
           "--label", label]
    if token:
        cmd += ["--token", token]
    if stream:
        cmd.append("--stream")
    gw_pids = watch.get("api", []) + watch.get("worker", [])
    sampler = RssSampler(gw_pids)
    sampler.start()
    cpu0 = {k: cpu_s(v) for k, v in watch.items()}
    sys0 = system_busy_s()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    loadgen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spies = []
    if a.profile and gw_pids:
        time.sleep(a.warmup + 0.5)
        spies = profile_children(a, watch, label)
    try:
        stdout, stderr = loadgen.communicate(timeout=a.duration + a.warmup + a.request_timeout + 30)
    except subprocess.TimeoutExpired:
        loadgen.kill()
        sampler.stop()
        return {"error": "loadgen timed out"}
    finally:
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
    cp = subprocess.CompletedProcess(cmd, loadgen.returncode, stdout, stderr)
    wall = time.monotonic() - t0
    peak = sampler.stop()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = {k: cpu_s(v) for k, v in watch.items()}
    sys1 = system_busy_s()
    try:
        res = json.loads(cp.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"loadgen failed rc={cp.returncode}: {cp.stderr[-500:]}"}
    used = {k: cpu1[k] - cpu0[k] for k in cpu0}
    used["loadgen"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    # The window includes warmup and loadgen start-up: cores are averages over all of it.
    res["cpu_cores"] = {k: round(v / wall, 2) for k, v in used.items()}
    res["cpu_cores"]["other"] = round(max(0.0, sys1 - sys0 - sum(used.values())) / wall, 2)
    res["loadavg_after"] = loadavg()
    if gw_pids:
        res["gateway_rss_mb"] = {"before": round(sampler.start_mb, 1), "peak": round(peak, 1),
                                 "after": round(rss_mb(gw_pids), 1), "samples": sampler.samples}
    return res


def g(res: dict, *path):
    for k in path:
        if not isinstance(res, dict) or res.get(k) is None:
            return None
        res = res[k]
    return res


def fmt(v, nd: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def delta(v, base) -> str:
    return "-" if v is None or base is None else f"{v - base:+.2f}"


CPU_PARTS = ("api", "worker", "mock", "loadgen", "redis", "other")


def table(results: list[dict]) -> str:
    direct = {r["case"]: r["res"] for r in results if r["target"] == "mock"}
    hdr = ["target", "case", "rps", "p50 ms", "p99 ms", "TTFT p50", "TTFT p99", "err", "rps % of mock",
           "+p50 ms", "+p99 ms", "+TTFT p50", "+TTFT p99", "gw CPU ms/req", "gw CPU µs/event", "gw peak RSS MB",
           "CPU cores " + "/".join(CPU_PARTS)]
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|"]
    for r in results:
        res, d, gw = r["res"], direct.get(r["case"], {}), r["target"] != "mock"
        rps = g(res, "rps")
        cpu = res.get("cpu_cores") or {}
        gw_cores = (cpu.get("api") or 0) + (cpu.get("worker") or 0)
        out.append("| " + " | ".join([
            r["target"], case_name(r["case"]), fmt(rps, 0),
            fmt(g(res, "latency_ms", "p50")), fmt(g(res, "latency_ms", "p99")),
            fmt(g(res, "ttft_ms", "p50")), fmt(g(res, "ttft_ms", "p99")),
            fmt(res.get("errors", res.get("error"))),
            f"{100.0 * rps / d['rps']:.1f}%" if gw and rps and g(d, "rps") else "-",
            delta(g(res, "latency_ms", "p50"), g(d, "latency_ms", "p50")) if gw else "-",
            delta(g(res, "latency_ms", "p99"), g(d, "latency_ms", "p99")) if gw else "-",
            delta(g(res, "ttft_ms", "p50"), g(d, "ttft_ms", "p50")) if gw else "-",
            delta(g(res, "ttft_ms", "p99"), g(d, "ttft_ms", "p99")) if gw else "-",
            fmt(gw_cores * 1000.0 / rps) if gw and rps else "-",
            fmt(gw_cores * 1e6 / (rps * g(res, "chunks", "mean")), 0)
            if gw and rps and g(res, "chunks", "mean") else "-",
            fmt(g(res, "gateway_rss_mb", "peak"), 0),
            "/".join(fmt(cpu.get(k)) for k in CPU_PARTS),
        ]) + " |")
    return "\n".join(out)


def added_at_c1(results: list[dict]) -> str:
    """The headline: what the gateway adds at c=1 over the mock alone."""
    by = {(r["target"], r["case"]): r["res"] for r in results}
    parts = []
    for target in sorted({r["target"] for r in results} - {"mock"}):
        ns, ns_m = by.get((target, "ns1")), by.get(("mock", "ns1"))
        s, s_m = by.get((target, "s1")), by.get(("mock", "s1"))
        if ns and ns_m and g(ns, "latency_ms", "p50") is not None:
            parts.append(f"{target} non-stream c=1: +{g(ns, 'latency_ms', 'p50') - g(ns_m, 'latency_ms', 'p50'):.2f} ms p50, "
                         f"+{g(ns, 'latency_ms', 'p99') - g(ns_m, 'latency_ms', 'p99'):.2f} ms p99")
        if s and s_m and g(s, "ttft_ms", "p50") is not None:
            parts.append(f"{target} stream c=1: TTFT +{g(s, 'ttft_ms', 'p50') - g(s_m, 'ttft_ms', 'p50'):.2f} ms p50, "
                         f"+{g(s, 'ttft_ms', 'p99') - g(s_m, 'ttft_ms', 'p99'):.2f} ms p99")
    return "Added over the mock alone: " + ("; ".join(parts) if parts else "n/a")


# ------------------------------------------------------------------------------------------
# Modes


def run_direct_and_gateway(a: argparse.Namespace, run_dir: Path, prefix: str, stamp: str, meta: dict) -> int:
    reactor = reactor_exe()
    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    mock = Child("mock", [a.python, str(SHARED_BENCH / "mock_upstream.py"), "--port", str(mock_port),
                          "--chunks", str(a.chunks), "--chunk-delay-ms", str(a.chunk_delay_ms)],
                 run_dir / "mock.log")
    wait_http(f"{mock_url}/models", 20, procs=(mock,))

    port = free_port()
    config = write_config(run_dir, prefix, mock_url, a.set)
    env = gateway_env(a.redis_url, port)
    token = mint_token(reactor, config, env)
    common = ["--config", str(config), "--log-level", a.log_level]
    if a.serve:
        serve = [reactor, "serve", *common] + (["--workers", str(a.workers)] if a.workers > 1 else [])
        gateway = [Child("reactor serve", serve, run_dir / "serve.log", env)]
        api, workers = gateway, []
    else:
        api = [Child("reactor api", [reactor, "api", *common], run_dir / "api.log", env)]
        workers = [Child(f"reactor worker {i}", [reactor, "worker", *common], run_dir / f"worker{i}.log", env)
                   for i in range(a.workers)]
        gateway = api + workers
    base = f"http://127.0.0.1:{port}/ai/v1"
    mode = (f"serve --workers {a.workers}" if a.workers > 1 else "serve") if a.serve else f"api + {a.workers} worker(s)"
    meta["gateway"] = {"mode": mode, "url": base,
                       "key_prefix": prefix, "config": str(config)}
    meta["gateway"]["ready_s"] = round(wait_http(f"{base}/health", a.start_timeout, procs=tuple(gateway)), 2)
    wait_http(f"{base}/models", 10, token=token, procs=tuple(gateway))
    print(f"## gateway {meta['gateway']['mode']} at {base} (ready in {meta['gateway']['ready_s']} s), "
          f"mock at {mock_url}", flush=True)

    rpid = redis_pid(a.redis_url)
    targets = [("mock", mock_url, None)] if not a.skip_direct else []
    floor = None
    if a.floor:
        floor_port = free_port()
        floor = Child("floor", [a.python, str(HERE / "floor_proxy.py"), "--port", str(floor_port),
                                "--upstream", mock_url, "--upstream-key", UPSTREAM_KEY], run_dir / "floor.log")
        floor_url = f"http://127.0.0.1:{floor_port}/v1"
        wait_http(f"{floor_url}/models", 20, procs=(floor,))
        targets.append(("floor", floor_url, None))
    targets.append(("reactor", base, token))
    results = []
    for target, url, tok in targets:
        for case in a.cases:
            # Pids are re-read per case: `reactor serve` has a worker child in its group.
            watch = {"mock": group_pids(mock.pgid)}
            if target == "floor":
                assert floor is not None
                watch["api"] = group_pids(floor.pgid)
            elif target != "mock":
                if a.serve:
                    pids = group_pids(api[0].pgid)
                    watch["api"], watch["worker"] = [api[0].pgid], [p for p in pids if p != api[0].pgid]
                else:
                    watch["api"] = group_pids(api[0].pgid)
                    watch["worker"] = [p for w in workers for p in group_pids(w.pgid)]
            if rpid:
                watch["redis"] = [rpid]
            res = run_load(a, url, tok, case, watch, f"{target}/{case}")
            results.append({"target": target, "case": case, "res": res})
            print(f"   {target:8s} {case_name(case):16s} rps={res.get('rps')} p50={g(res, 'latency_ms', 'p50')} "
                  f"p99={g(res, 'latency_ms', 'p99')} ttft50={g(res, 'ttft_ms', 'p50')} "
                  f"err={res.get('errors', res.get('error'))} cpu={res.get('cpu_cores')}", flush=True)
            if res.get("error_samples"):
                print(f"      errors: {res['error_samples']}", flush=True)
        for child in gateway if target != "mock" else ():
            if not child.alive():
                print(f"!! {child.name} died during the run; see {child.log_path}", flush=True)
    Child.stop_all()

    meta["loadavg_after"] = loadavg()
    header = (f"date {meta['date']} | {meta['cpus']} CPUs | loadavg before {meta['loadavg_before']} after "
              f"{meta['loadavg_after']} | {a.duration:g} s per case (+{a.warmup:g} s warmup) | stream = "
              f"{a.chunks} content chunks, {a.chunk_delay_ms:g} ms/chunk | "
              f"{f'starts spread over {a.spread:g} s' if a.spread else 'all streams start at once'} | "
              f"gateway: {meta['gateway']['mode']}")
    md = f"{header}\n\n{table(results)}\n\n{added_at_c1(results)}\n"
    print()
    print(md)
    out = Path(a.out_dir) / f"gateway_bench-{stamp}"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(f"saved {out}.{{json,md}}")
    return 0 if all(not r["res"].get("error") and not r["res"].get("errors") for r in results) else 1


def run_peer(a: argparse.Namespace, run_dir: Path, prefix: str, meta: dict) -> int:
    """``peer_bench.sh`` with this gateway as GATEWAY_CMD; LiteLLM per ``--litellm``."""
    reactor = reactor_exe()
    port = free_port()
    # The token must be signed by the key the launched gateway will load: same data_dir.
    config = write_config(run_dir, prefix, "http://127.0.0.1:9/v1")
    env = gateway_env(a.redis_url, None)
    token = mint_token(reactor, config, env)
    base = f"http://127.0.0.1:{port}/ai/v1"
    env.update(
        GATEWAY_CMD=f"{HERE / 'launch_gateway.sh'} {{mock_url}} {port}",
        GATEWAY_URL=base, GATEWAY_TOKEN=token, GATEWAY_NAME=a.gateway_name, GATEWAY_MODEL=MODEL,
        # 200 only once a worker's heartbeat is in Redis, i.e. the gateway can serve.
        GATEWAY_READY_URL=f"{base}/health",
        REACTOR_BENCH_RUN_DIR=str(run_dir), REACTOR_BENCH_KEY_PREFIX=prefix, REACTOR=reactor,
    )
    if a.python_explicit:
        env["BENCH_PYTHON"] = a.python
    cmd = [str(SHARED_BENCH / "peer_bench.sh"), "--litellm", a.litellm, "--duration", str(a.duration),
           "--warmup", str(a.warmup), "--cases", ",".join(a.cases), "--chunks", str(a.chunks),
           "--chunk-delay-ms", str(a.chunk_delay_ms), "--out-dir", a.out_dir,
           "--request-timeout", str(a.request_timeout), "--start-timeout", str(a.start_timeout)]
    if a.only:
        cmd += ["--only", a.only]
    n_targets = 2 + len([x for x in a.litellm.split(",") if x.strip()])
    budget = n_targets * (len(a.cases) * (a.duration + a.warmup + 5) + a.start_timeout + 15) + 120
    meta["peer"] = {"cmd": cmd, "gateway_cmd": env["GATEWAY_CMD"], "budget_s": round(budget)}
    print(f"# peer mode: {' '.join(cmd)}\n#   GATEWAY_CMD={env['GATEWAY_CMD']}  (bounded to {budget:.0f} s)",
          flush=True)
    peer = Child("peer_bench", cmd, run_dir / "peer_bench.log", env, tee=True)
    deadline = time.monotonic() + budget
    try:
        peer.relay(deadline)
        if peer.alive():
            print(f"!! peer_bench exceeded {budget:.0f} s; stopping it", flush=True)
    finally:
        # peer_bench stops its own targets (each in its own session) when it gets SIGTERM.
        peer.stop(grace=40.0)
    rc = peer.proc.returncode
    meta["loadavg_after"] = loadavg()
    print(f"# peer_bench rc={rc}  loadavg after: {meta['loadavg_after']}", flush=True)
    return 0 if rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    p.add_argument("--warmup", type=float, default=1.5, help="unrecorded seconds per case, same concurrency")
    p.add_argument("--cases", default="ns1,ns32,s1,s32",
                   help="ns/s = non-stream/stream + concurrency (ns32, s500, s1000)")
    p.add_argument("--chunks", type=int, default=20, help="content chunks per mock stream")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    p.add_argument("--python", default=None,
                   help="interpreter with aiohttp (+uvloop) for mock and loadgen (default: $BENCH_PYTHON, "
                        "else this one; --peer: peer_bench.sh's own venv)")
    p.add_argument("--redis-url", default=env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--workers", type=int, default=1, help="reactor worker processes beside `reactor api`")
    p.add_argument("--serve", action="store_true",
                   help="run `reactor serve` (API + --workers worker children) instead")
    p.add_argument("--slow-streams", action="store_true",
                   help="the real-traffic case: `reactor serve`, streams of 20 chunks 100 ms apart at 100, 500 "
                        "and 1,000 concurrent, beside the floor (--floor; --cases overrides the concurrencies)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--skip-direct", action="store_true", help="do not measure the mock directly")
    p.add_argument("--floor", action="store_true",
                   help="also measure bench/floor_proxy.py (one aiohttp process relaying bytes, nothing else): "
                        "what any Python gateway process costs on this machine")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--peer", action="store_true", help="run ../shared/bench/peer_bench.sh with this gateway")
    p.add_argument("--litellm", default="prod:1", help='--peer: LiteLLM profile:workers list ("" skips it)')
    p.add_argument("--only", default="", help="--peer: target names to run (passed through)")
    p.add_argument("--gateway-name", default="reactor", help="--peer: row label")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a [gateway] setting for the gateway under test, as a TOML line "
                        "(e.g. --set 'worker_concurrency = 2000'); repeatable")
    p.add_argument("--spread", type=float, default=0.0, metavar="SECONDS",
                   help="streams only: spread the streams' starts over SECONDS (bench/spread_load.py) instead of "
                        "starting them all at once, so requests arrive steadily rather than in lockstep waves")
    p.add_argument("--profile", action="store_true",
                   help="record each gateway process with py-spy during each case; the top frames go "
                        "next to the results")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)
    a.python_explicit = bool(a.python or env("BENCH_PYTHON"))
    a.python = a.python or env("BENCH_PYTHON") or sys.executable
    if a.slow_streams:
        a.serve = True
        a.chunk_delay_ms = a.chunk_delay_ms or 100.0
        if a.cases == p.get_default("cases"):
            a.cases = "s100,s500,s1000"
        a.warmup = max(a.warmup, 3.0)
        a.floor = True
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for c in a.cases:
        if parse_case(c) is None:
            p.error(f"unknown case {c!r} (ns or s, then a concurrency: ns32, s1000)")
    if a.workers < 1:
        p.error("--workers must be at least 1")
    if not (SHARED_BENCH / "loadgen.py").exists():
        p.error(f"the shared harness is not at {SHARED_BENCH}")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    run_dir = Path(f"/tmp/gateway_bench-{stamp}-{uuid.uuid4().hex[:4]}")
    run_dir.mkdir(parents=True)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "loadavg_before": loadavg(), "logs": str(run_dir),
            "key_prefix": prefix, "duration_s": a.duration, "warmup_s": a.warmup, "cases": a.cases,
            "chunks": a.chunks, "chunk_delay_ms": a.chunk_delay_ms, "spread_s": a.spread, "loadgen_python": a.python}
    print(f"# gateway_bench {meta['date']}  loadavg before: {meta['loadavg_before']}  logs: {run_dir}  "
          f"redis prefix: {prefix}", flush=True)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        if a.peer:
            return run_peer(a, run_dir, prefix, meta)
        return run_direct_and_gateway(a, run_dir, prefix, stamp, meta)
    finally:
        Child.stop_all()
        try:
            n = delete_prefix(a.redis_url, prefix)
            print(f"# deleted {n} Redis keys under {prefix}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report, do not mask the run's own outcome
            print(f"!! could not delete Redis keys under {prefix}: {exc!r}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
