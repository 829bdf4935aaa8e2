#!/usr/bin/env python3
"""The performance matrix: every target through every scenario, one run, one machine, one mock.

Targets (``--targets``, in this order): the mock alone (``mock``, the floor), ``reactor serve``
(``serve``: the API and one worker), ``reactor api`` with two ``reactor worker`` processes
(``api2w``), and with ``--litellm`` LiteLLM's proxy (``litellm``: the ``prod`` profile of
``../shared/bench/peer_bench.py``, one worker; its venv is set up from PyPI if it is missing).
Every target sits in front of the same mock (``bench/matrix_mock.py``, the shared mock's wire
format), which the driver reshapes before each scenario.

Scenarios (``--scenarios``): non-stream chat at c=1, 32, 128 (``ns1``, ``ns32``, ``ns128``);
streams of 50 chunks at c=1, 32, 128 (``s1``, ``s32``, ``s128``); embeddings at c=32 (``emb32``);
a 1,000-chunk stream at c=1 (``long1``: the cost per chunk); a realistic upstream, first token
after 200 ms then a chunk every 20 ms, 256 streams whose starts are spread over one stream's
length (``real256``); 1,000 slow streams, a chunk every 100 ms, held for ``--slow-seconds``
(``slow1000``: memory sampled every second).

Each case: ``--warmup`` seconds at the same concurrency, then a measured window of ``--duration``
seconds or ``--count`` completed requests, whichever ends first (``bench/matrix_load.py``, the
shared load generator's requests). Each gateway process's CPU is read at the window's edges, so
CPU per request is the window's CPU over the requests completed in it.

Out: ``results/matrix-<stamp>.json``, ``.md`` (machine, command, the project's targets checked,
the table), ``.png`` (the chart), and with ``--profile`` ``matrix-<stamp>-profile.md`` (py-spy's
top functions per target, scenario and process). ``--publish`` copies the table and the chart to
``bench/matrix.md`` and ``bench/matrix.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import gateway_bench as gb
from gateway_bench import Child

HERE = gb.HERE
REPO = gb.REPO
SHARED_BENCH = gb.SHARED_BENCH
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
LITELLM_PROFILE = "prod"
LITELLM_VENV = os.environ.get("LITELLM_VENV", "/tmp/peer/litellm-venv")
LITELLM_INSTALL_TIMEOUT_S = 1200
RSS_SAMPLE_S = 0.5
TIMELINE_SAMPLE_S = 1.0
# Memory counts as flat when, after the first ten seconds of a case, it grew by no more than this.
FLAT_AFTER_S = 10.0
FLAT_GROWTH_PCT = 5.0
# Margin on top of a case's own bounds (warm-up + window + one request timeout) before it is killed.
CASE_MARGIN_S = 30.0
PROFILE_TOP = 25
PRIME_CONCURRENCY = 4
IDLE_SETTLE_S = 1.0  # after priming, before the idle RSS is read
PROFILE_RATE_HZ = 200
PROFILE_WAIT_S = 30.0


# ------------------------------------------------------------------------------------------
# What is measured


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    mode: str  # chat | stream | embeddings
    conc: int
    chunks: int = 50
    first_token_ms: float | None = None  # None: the chunk delay
    chunk_delay_ms: float = 0.0
    spread: bool = False  # starts spread over one stream's length (steady arrivals)
    held: bool = False  # the slow-stream case: --slow-seconds long, memory sampled
    chart: str = ""  # the chart's short label

    @property
    def stream_s(self) -> float:
        first = self.chunk_delay_ms if self.first_token_ms is None else self.first_token_ms
        return (first + max(0, self.chunks - 1) * self.chunk_delay_ms) / 1000.0

    def mock_config(self) -> dict:
        return {"chunks": self.chunks, "first_token_ms": self.first_token_ms,
                "chunk_delay_ms": self.chunk_delay_ms}


SCENARIOS = [
    Scenario("ns1", "non-stream c=1", "chat", 1, chart="chat\nc=1"),
    Scenario("ns32", "non-stream c=32", "chat", 32, chart="chat\nc=32"),
    Scenario("ns128", "non-stream c=128", "chat", 128, chart="chat\nc=128"),
    Scenario("s1", "stream 50 chunks c=1", "stream", 1, chart="stream 50\nc=1"),
    Scenario("s32", "stream 50 chunks c=32", "stream", 32, chart="stream 50\nc=32"),
    Scenario("s128", "stream 50 chunks c=128", "stream", 128, chart="stream 50\nc=128"),
    Scenario("emb32", "embeddings c=32", "embeddings", 32, chart="embeddings\nc=32"),
    Scenario("long1", "stream 1,000 chunks c=1", "stream", 1, chunks=1000, chart="stream 1,000\nc=1"),
    Scenario("real256", "realistic: 256 streams, 200 ms + 50 × 20 ms", "stream", 256, chunks=50,
             first_token_ms=200.0, chunk_delay_ms=20.0, spread=True, chart="realistic\n256 streams"),
    Scenario("slow1000", "1,000 slow streams, 20 × 100 ms, held", "stream", 1000, chunks=20,
             chunk_delay_ms=100.0, spread=True, held=True, chart="slow, held\n1,000 streams"),
]
BY_KEY = {s.key: s for s in SCENARIOS}

TARGET_LABELS = {
    "mock": "mock alone (floor)",
    "serve": "reactor serve (API + 1 worker)",
    "api2w": "reactor api + 2 workers",
    "litellm": f"LiteLLM proxy ({LITELLM_PROFILE}, 1 worker)",
}
REACTOR_TARGETS = ("serve", "api2w")
# What LiteLLM is not asked to do by default (--litellm-all runs them anyway): streams at a pace that
# needs several times the chunks per second its one worker can relay, so they would only queue into
# the request timeout. The reason given uses its CPU per chunk measured earlier in the same run.
LITELLM_SKIPS = ("real256", "slow1000")
LITELLM_US_PER_CHUNK_GUESS = 1000.0  # before the run has measured it: ~1 ms (../shared/bench/README.md)


def litellm_skip_reason(sc: Scenario, where: str | None, us_per_chunk: float | None) -> str:
    need = sc.conc * sc.chunks / sc.stream_s
    us = us_per_chunk if us_per_chunk else LITELLM_US_PER_CHUNK_GUESS
    can = 1e6 / us
    source = f"its `{where}` in this run" if us_per_chunk else "its usual cost"
    return (f"{sc.conc:,} streams of {sc.chunks} chunks in {sc.stream_s:.1f} s need ~{need:,.0f} chunks/s; at "
            f"{us:,.0f} µs of CPU per chunk ({source}) "
            f"LiteLLM's one worker relays at most ~{can:,.0f} chunks/s, so the streams would queue into the "
            "request timeout (--litellm-all runs it anyway)")


# ------------------------------------------------------------------------------------------
# Targets


class Target:
    """A gateway (or the mock) under test: its URL, token and processes by role."""

    def __init__(self, key: str, url: str, token: str | None, children: list[Child]):
        self.key, self.label, self.url, self.token = key, TARGET_LABELS[key], url, token
        self.children = children
        self.info: dict = {}

    def roles(self) -> dict[str, list[int]]:
        """Gateway pids per role, re-read per case (a `reactor serve` worker is a child)."""
        if self.key == "serve":
            lead = self.children[0].pgid
            return {"api": [lead], "worker": [p for p in gb.group_pids(lead) if p != lead]}
        if self.key == "api2w":
            out = {"api": gb.group_pids(self.children[0].pgid)}
            for i, w in enumerate(self.children[1:], 1):
                out[f"worker{i}"] = gb.group_pids(w.pgid)
            return out
        if self.key == "litellm":
            return {"litellm": gb.group_pids(self.children[0].pgid)}
        return {}

    def alive(self) -> bool:
        return all(c.alive() for c in self.children)

    def stop(self) -> None:
        for c in reversed(self.children):
            c.stop()


def start_reactor(a, key: str, run_dir: Path, mock_url: str) -> Target:
    reactor = gb.reactor_exe()
    tdir = run_dir / key
    tdir.mkdir()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    a.prefixes.append(prefix)  # its keys are deleted at the end, whatever happens from here
    port = gb.free_port()
    config = gb.write_config(tdir, prefix, mock_url)
    env = gb.gateway_env(a.redis_url, port)
    token = gb.mint_token(reactor, config, env)
    common = ["--config", str(config), "--log-level", a.log_level]
    if key == "serve":
        children = [Child("reactor serve", [reactor, "serve", *common], tdir / "serve.log", env)]
    else:
        children = [Child("reactor api", [reactor, "api", *common], tdir / "api.log", env)]
        children += [Child(f"reactor worker {i}", [reactor, "worker", *common], tdir / f"worker{i}.log", env)
                     for i in (1, 2)]
    base = f"http://127.0.0.1:{port}/ai/v1"
    t = Target(key, base, token, children)
    t.info = {"url": base, "key_prefix": prefix, "logs": str(tdir)}
    t.info["ready_s"] = round(gb.wait_http(f"{base}/health", a.start_timeout, procs=tuple(children)), 2)
    gb.wait_http(f"{base}/models", 10, token=token, procs=tuple(children))
    return t


def ensure_litellm_venv(venv: Path) -> str:
    """LiteLLM's proxy in its own venv, from PyPI, as ../shared/bench/README.md sets it up."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print(f"# setting up {venv}: pip install 'litellm[proxy]' (once; a few minutes)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "litellm[proxy]"], check=True, timeout=LITELLM_INSTALL_TIMEOUT_S)
    cp = subprocess.run([str(venv / "bin" / "python"), "-c",
                         "import importlib.metadata as m; print(m.version('litellm'))"],
                        capture_output=True, text=True, timeout=60)
    return cp.stdout.strip() or "?"


def start_litellm(a, run_dir: Path, mock_url: str) -> Target:
    sys.path.insert(0, str(SHARED_BENCH))
    import peer_bench  # the shared side-by-side: the same LiteLLM config and profile

    tdir = run_dir / "litellm"
    tdir.mkdir()
    port = gb.free_port()
    cfg = tdir / "litellm.yaml"
    peer_bench.litellm_config(str(cfg), mock_url, LITELLM_PROFILE)
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline: the bundled cost map
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["LITELLM_LOG"] = "ERROR"
    env["LITELLM_MODE"] = "PRODUCTION"
    cmd = [str(Path(a.litellm_venv) / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", "1"]
    child = Child("litellm", cmd, tdir / "litellm.log", env)
    t = Target("litellm", f"http://127.0.0.1:{port}/v1", peer_bench.LITELLM_KEY, [child])
    t.info = {"url": t.url, "cmd": " ".join(cmd), "logs": str(tdir), "version": a.litellm_version}
    t.info["ready_s"] = round(gb.wait_http(f"http://127.0.0.1:{port}/health/readiness", a.start_timeout,
                                           procs=(child,)), 2)
    return t


# ------------------------------------------------------------------------------------------
# One case


def set_mock(mock_url: str, sc: Scenario) -> None:
    req = urllib.request.Request(mock_url.rstrip("/") + "/_bench/config", data=json.dumps(sc.mock_config()).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


LOADS: list[subprocess.Popen] = []  # the load generator of the case running, killed if the run is stopped


def pid_cpu(pid: int) -> float:
    return gb.cpu_s([pid])


class RssWatch(threading.Thread):
    """Summed RSS per role every half second (peaks), and the total every second (a timeline)."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.roles = roles
        self.peak = {r: 0.0 for r in roles}
        self.peak_total = 0.0
        self.timeline: list[tuple[float, float]] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        next_line = 0.0
        while not self._halt.wait(RSS_SAMPLE_S):
            now = {r: gb.rss_mb(p) for r, p in self.roles.items()}
            for r, v in now.items():
                self.peak[r] = max(self.peak[r], v)
            total = sum(now.values())
            self.peak_total = max(self.peak_total, total)
            t = time.monotonic() - self.t0
            if t >= next_line:
                self.timeline.append((round(t, 1), round(total, 1)))
                next_line = t + TIMELINE_SAMPLE_S

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def start_profiles(a, target: Target, sc: Scenario, roles: dict[str, list[int]], seconds: float) -> list:
    out = []
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for role, pids in roles.items():
        for pid in pids:
            path = a.profile_dir / f"{target.key}-{sc.key}-{role}-{pid}.txt"
            proc = subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--duration", str(max(1, math.ceil(seconds))),
                 "--format", "raw", "--rate", str(PROFILE_RATE_HZ), "--nonblocking", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            out.append((role, path, proc))
    return out


def run_case(a, target: Target, sc: Scenario, mock: Child, mock_url: str, rpid: int | None) -> dict:
    set_mock(mock_url, sc)
    duration = a.slow_seconds if sc.held else a.duration
    cmd = [a.python, str(HERE / "matrix_load.py"), "--url", target.url, "--mode", sc.mode,
           "--concurrency", str(sc.conc), "--duration", str(duration), "--count", str(a.count),
           "--warmup", str(a.warmup), "--timeout", str(a.request_timeout), "--label", f"{target.key}/{sc.key}"]
    cmd += ["--model", EMBED_MODEL if sc.mode == "embeddings" else CHAT_MODEL]
    if sc.spread:
        cmd += ["--spread", str(sc.stream_s), "--stream-s", str(sc.stream_s + 0.5)]
    if target.token:
        cmd += ["--token", target.token]
    roles = target.roles()
    others = {"mock": gb.group_pids(mock.pgid)}
    if rpid:
        others["redis"] = [rpid]
    watch = RssWatch(roles)
    watch.start()
    rss_before = sum(gb.rss_mb(p) for p in roles.values())
    err_path = a.run_dir / f"load-{target.key}-{sc.key}.err"
    with open(err_path, "wb") as err:
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    LOADS.append(load)
    lines: queue.Queue = queue.Queue()

    def reader() -> None:
        assert load.stdout is not None
        for line in load.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    warm = max(a.warmup, sc.stream_s * 2 + 0.5) if sc.spread else a.warmup
    bound = warm + duration + a.request_timeout + CASE_MARGIN_S
    deadline = time.monotonic() + bound

    def snapshot() -> dict:
        snap = {r: gb.cpu_s(p) for r, p in roles.items()}
        snap.update({k: gb.cpu_s(p) for k, p in others.items()})
        snap["loadgen"] = pid_cpu(load.pid)
        snap["_busy"] = gb.system_busy_s()
        snap["_t"] = time.monotonic()
        return snap

    s0 = s1 = None
    spies: list = []
    last = None
    timed_out = False
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            timed_out = True
            break
        if line is None:
            break
        if line.startswith("#measure-start"):
            s0 = snapshot()
            if a.profile and roles:
                spies = start_profiles(a, target, sc, roles, duration)
        elif line.startswith("#measure-end"):
            s1 = snapshot()
        elif line.strip():
            last = line
    if timed_out:
        load.kill()
    try:
        load.wait(10)
    except subprocess.TimeoutExpired:
        load.kill()
    LOADS.remove(load)
    watch.stop()
    profiles = []
    for role, path, spy in spies:
        try:
            spy.wait(PROFILE_WAIT_S)
        except subprocess.TimeoutExpired:
            spy.kill()
        profiles.append({"role": role, "path": str(path)})
    if timed_out:
        return {"error": f"the load generator was still running after {bound:.0f} s: killed"}
    try:
        res = json.loads(last or "")
    except ValueError:
        return {"error": f"load generator failed (rc={load.returncode}): "
                         f"{err_path.read_text(errors='replace')[-500:]}"}
    if s0 is None or s1 is None:
        res["error"] = "no measured window"
        return res
    if not res.get("completed_in_window"):
        res["error"] = "no request completed in the measured window (shorter than one request?)"
    window = s1["_t"] - s0["_t"]
    used = {k: s1[k] - s0[k] for k in s0 if not k.startswith("_")}
    ours = sum(used.values())
    n = res.get("completed_in_window") or 0
    res["window_s"] = round(window, 3)
    res["cpu_cores"] = {k: round(v / window, 3) for k, v in used.items()}
    res["cpu_cores"]["other"] = round(max(0.0, s1["_busy"] - s0["_busy"] - ours) / window, 3)
    if roles and n:
        res["cpu_ms_per_req"] = {r: round(used[r] * 1000.0 / n, 4) for r in roles}
        res["gw_cpu_ms_per_req"] = round(sum(used[r] for r in roles) * 1000.0 / n, 4)
        if sc.mode == "stream":
            res["gw_cpu_us_per_chunk"] = round(res["gw_cpu_ms_per_req"] * 1000.0 / sc.chunks, 2)
    if roles:
        res["rss_mb"] = {"before": round(rss_before, 1), "peak": round(watch.peak_total, 1),
                         "peak_by_role": {r: round(v, 1) for r, v in watch.peak.items()},
                         "after": round(sum(gb.rss_mb(p) for p in roles.values()), 1)}
        res["rss_timeline"] = watch.timeline
        res["pids"] = roles
    if profiles:
        res["profiles"] = profiles
    return res


def prime(a, target: Target, mock_url: str) -> None:
    """A few seconds of each kind of request before the first scenario: lazy imports, first
    connections and caches are not any case's business. Unmeasured; a failure here shows in the cases."""
    set_mock(mock_url, BY_KEY["s1"])
    for mode in ("chat", "stream", "embeddings"):
        cmd = [a.python, str(HERE / "matrix_load.py"), "--url", target.url, "--mode", mode, "--concurrency",
               str(PRIME_CONCURRENCY), "--duration", str(a.prime_seconds), "--warmup", "0",
               "--timeout", str(a.request_timeout), "--label", f"{target.key}/prime-{mode}"]
        cmd += ["--model", EMBED_MODEL if mode == "embeddings" else CHAT_MODEL]
        if target.token:
            cmd += ["--token", target.token]
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           timeout=a.prime_seconds + a.request_timeout + CASE_MARGIN_S)
        except subprocess.TimeoutExpired:
            print(f"!! priming {target.key} with {mode} requests passed its deadline", flush=True)


def memory_verdict(res: dict, idle_mb: float | None, conc: int) -> dict | None:
    """Flat after the first ten seconds? And RSS over the idle gateway per open stream."""
    tl = res.get("rss_timeline") or []
    if not tl:
        return None
    later = [(t, mb) for t, mb in tl if t >= FLAT_AFTER_S]
    out: dict = {"idle_mb": idle_mb, "samples_mb": [mb for _, mb in tl]}
    if len(later) >= 2:
        at10, end, top = later[0][1], later[-1][1], max(mb for _, mb in later)
        growth = (top - at10) * 100.0 / at10 if at10 else 0.0
        out.update(at_10s_mb=at10, end_mb=end, max_after_10s_mb=top, growth_pct=round(growth, 1),
                   flat=growth <= FLAT_GROWTH_PCT)
        if idle_mb is not None:
            held = sum(mb for _, mb in later) / len(later)
            out["per_stream_kb"] = round((held - idle_mb) * 1024.0 / conc, 1)
    else:
        out["flat"] = None
        out["note"] = f"case shorter than {FLAT_AFTER_S:g} s plus two samples: flatness not judged"
        if idle_mb is not None:
            out["per_stream_kb"] = round((tl[-1][1] - idle_mb) * 1024.0 / conc, 1)
    return out


# ------------------------------------------------------------------------------------------
# Profiles: py-spy's raw stacks, aggregated


LINENO = re.compile(r":\d+\)$")


def summarize_profile(path: Path, top: int = PROFILE_TOP) -> tuple[int, list, list]:
    """(samples, top functions by inclusive samples, top by self samples) of one raw py-spy file."""
    incl, self_, total = Counter(), Counter(), 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, [], []
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # Outermost first, each frame `func (file:line)`. Under uvloop a callback's stack starts
            # at the coroutine the loop resumed: the loop's C frames are not shown.
            stacks.append(([LINENO.sub(")", f) for f in stack.split(";")], int(count)))
    if not stacks:
        return 0, [], []
    # The frames every stack from the process's entry point shares (`<module>` … the loop's `run`)
    # are on nearly every sample and tell nothing: left out of the inclusive list.
    roots = Counter(frames[0] for frames, _ in stacks)
    root = roots.most_common(1)[0][0]
    entry: list[str] | None = None
    for frames, _ in stacks:
        if frames[0] == root:
            if entry is None:
                entry = frames
            else:
                same = 0
                while same < min(len(entry), len(frames)) and entry[same] == frames[same]:
                    same += 1
                entry = entry[:same]
    entry_set = set(entry or ())
    for frames, n in stacks:
        total += n
        for f in set(frames) - entry_set:
            incl[f] += n
        self_[frames[-1]] += n
    return total, incl.most_common(top), self_.most_common(top)


def profile_report(results: list[dict], meta: dict) -> str:
    out = [f"# py-spy top functions, {meta['date']}", "",
           f"{meta['machine_line']}. Command: `{meta['command']}`.", "",
           f"Each block: one gateway process during one scenario's measured window, sampled at {PROFILE_RATE_HZ} Hz "
           "(idle threads excluded). *incl* counts the samples in which the function is anywhere on the stack "
           "(the entry point's frames, `<module>` down to the event loop's `run`, left out), *self* those in "
           "which it is the innermost Python frame; line numbers are folded into the function. Self time in "
           "`Runner.run` or `run (uvloop/__init__.py)` is the event loop's own C code (socket reads and writes, "
           "callbacks, timers). "
           f"Raw stacks: `{meta.get('profile_dir')}`.", ""]
    for r in results:
        for prof in r["res"].get("profiles", []):
            total, incl, self_ = summarize_profile(Path(prof["path"]))
            out.append(f"## {TARGET_LABELS[r['target']]} · {BY_KEY[r['scenario']].title} · {prof['role']} "
                       f"({total} samples, `{Path(prof['path']).name}`)")
            out.append("")
            if not total:
                out += ["no samples (py-spy could not attach, or the process was idle)", ""]
                continue
            out.append("| incl % | function (inclusive) | self % | function (self) |")
            out.append("|---|---|---|---|")
            for i in range(max(len(incl), len(self_))):
                a = incl[i] if i < len(incl) else ("", 0)
                b = self_[i] if i < len(self_) else ("", 0)
                out.append(f"| {100.0 * a[1] / total:.1f} | `{a[0]}` | {100.0 * b[1] / total:.1f} | `{b[0]}` |"
                           if a[0] or b[0] else "")
            out.append("")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
# Reporting


def g(res, *path):
    for k in path:
        if not isinstance(res, dict) or res.get(k) is None:
            return None
        res = res[k]
    return res


def num(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def triple(res: dict, key: str) -> str:
    s = res.get(key)
    return "-" if not s else f"{num(s['p50'], 2)} / {num(s['p90'], 2)} / {num(s['p99'], 2)}"


def added(res: dict, floor: dict | None, key: str, pct: str) -> float | None:
    a, b = g(res, key, pct), g(floor or {}, key, pct)
    return None if a is None or b is None else a - b


def overhead_ms(res: dict, floor: dict | None, sc: Scenario) -> float | None:
    """What the chart calls overhead: added TTFT p50 for streams, added latency p50 otherwise."""
    return added(res, floor, "ttft_ms" if sc.mode == "stream" else "latency_ms", "p50")


def per_process(res: dict) -> str:
    per = res.get("cpu_ms_per_req") or {}
    return " / ".join(f"{r} {v:.2f}" for r, v in per.items()) or "-"


def results_table(results: list[dict]) -> str:
    floors = {r["scenario"]: r["res"] for r in results if r["target"] == "mock"}
    hdr = ["scenario", "target", "req/s", "latency p50 / p90 / p99 ms", "TTFT p50 / p90 / p99 ms",
           "added latency p50 / p99 ms", "added TTFT p50 / p99 ms", "errors", "gw CPU ms/req",
           "CPU ms/req per process", "gw CPU µs/chunk", "gw peak RSS MB", "cores mock / load / redis / other"]
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|"]
    for r in results:
        res, sc = r["res"], BY_KEY[r["scenario"]]
        floor = floors.get(r["scenario"]) if r["target"] != "mock" else None
        if res.get("skipped"):
            out.append(f"| {sc.title} | {TARGET_LABELS[r['target']]} | not run (below) |" + " |" * (len(hdr) - 3))
            continue
        al50, al99 = added(res, floor, "latency_ms", "p50"), added(res, floor, "latency_ms", "p99")
        at50, at99 = added(res, floor, "ttft_ms", "p50"), added(res, floor, "ttft_ms", "p99")
        cores = res.get("cpu_cores") or {}
        errors = res.get("errors")
        if res.get("error"):
            errors = f"{errors if errors is not None else ''} ({res['error']})".strip()
        out.append("| " + " | ".join([
            sc.title, TARGET_LABELS[r["target"]], num(res.get("rps"), 1),
            triple(res, "latency_ms"), triple(res, "ttft_ms"),
            "-" if al50 is None else f"{al50:+.2f} / {al99:+.2f}",
            "-" if at50 is None else f"{at50:+.2f} / {at99:+.2f}",
            num(errors), num(res.get("gw_cpu_ms_per_req"), 3), per_process(res),
            num(res.get("gw_cpu_us_per_chunk"), 1), num(g(res, "rss_mb", "peak"), 0),
            " / ".join(num(cores.get(k), 2) for k in ("mock", "loadgen", "redis", "other")),
        ]) + " |")
    return "\n".join(out)


def check_goals(results: list[dict], targets: list[str]) -> list[dict]:
    """The project's targets, each with the measured value and whether it is met."""
    by = {(r["target"], r["scenario"]): r["res"] for r in results}
    goals: list[dict] = []

    def res(t, s):
        x = by.get((t, s))
        return None if not x or x.get("skipped") or x.get("error") else x

    def goal(name, target, value, ok, note=""):
        goals.append({"goal": name, "target": target, "value": value, "ok": ok, "note": note})

    for t in [x for x in targets if x in REACTOR_TARGETS]:
        label = TARGET_LABELS[t]
        ns32 = res(t, "ns32")
        v = g(ns32, "gw_cpu_ms_per_req")
        goal("gateway CPU per plain request, all processes (non-stream c=32) ≤ 1.0 ms", label,
             None if v is None else f"{v:.3f} ms", None if v is None else v <= 1.0, "needs ns32")
        s32 = res(t, "s32")
        v = g(s32, "gw_cpu_ms_per_req")
        goal("gateway CPU per 50-chunk stream, all processes (stream c=32) ≤ 1.5 ms", label,
             None if v is None else f"{v:.3f} ms", None if v is None else v <= 1.5, "needs s32")
        s1, long1 = res(t, "s1"), res(t, "long1")
        a_, b_ = g(s1, "gw_cpu_ms_per_req"), g(long1, "gw_cpu_ms_per_req")
        if a_ is not None and b_ is not None:
            per = (b_ - a_) * 1000.0 / (BY_KEY["long1"].chunks - BY_KEY["s1"].chunks)
            goal("gateway CPU per extra chunk ((1,000-chunk − 50-chunk stream) / 950, c=1) ≤ 20 µs", label,
                 f"{per:.1f} µs", per <= 20.0)
        else:
            goal("gateway CPU per extra chunk ((1,000-chunk − 50-chunk stream) / 950, c=1) ≤ 20 µs", label,
                 None, None, "needs s1 and long1")
        floor_s1 = res("mock", "s1")
        a50, a99 = added(s1 or {}, floor_s1, "ttft_ms", "p50"), added(s1 or {}, floor_s1, "ttft_ms", "p99")
        goal("added TTFT at c=1 (stream c=1, over the mock alone) ≤ 1.5 ms p50 and ≤ 4 ms p99", label,
             None if a50 is None else f"{a50:+.2f} ms p50, {a99:+.2f} ms p99",
             None if a50 is None else (a50 <= 1.5 and a99 <= 4.0), "needs s1 on this target and on the mock")
        for key, mult, what in (("ns32", 10, "non-stream"), ("s32", 20, "stream")):
            ours, theirs = res(t, key), res("litellm", key)
            name = f"throughput at c=32 with zero errors ≥ {mult}× LiteLLM's ({what})"
            if ours and theirs and theirs.get("rps"):
                ratio = ours["rps"] / theirs["rps"]
                clean = not ours.get("errors") and not theirs.get("errors")
                goal(name, label, f"{ratio:.1f}× ({ours['rps']:,.0f} vs {theirs['rps']:,.0f} req/s; errors "
                     f"{ours.get('errors', 0)} / {theirs.get('errors', 0)})", clean and ratio >= mult)
            elif "litellm" not in targets:
                goal(name, label, None, None, "needs the litellm target (--litellm)")
            else:
                goal(name, label, None, None, f"needs {key} on this target and on LiteLLM")
        real, floor_real = res(t, "real256"), res("mock", "real256")
        a50, a99 = added(real or {}, floor_real, "ttft_ms", "p50"), added(real or {}, floor_real, "ttft_ms", "p99")
        goal("256 realistic streams: added TTFT ≤ 5 ms p50 and ≤ 20 ms p99", label,
             None if a50 is None else f"{a50:+.2f} ms p50, {a99:+.2f} ms p99"
             + (f", {real['errors']} errors" if real.get("errors") else ""),
             None if a50 is None else (a50 <= 5.0 and a99 <= 20.0 and not real.get("errors")),
             "needs real256 on this target and on the mock")
        slow = res(t, "slow1000")
        mem = (slow or {}).get("memory") or {}
        if slow:
            flat = mem.get("flat")
            value = (f"{slow.get('errors', 0)} errors, memory "
                     + ({True: "flat", False: "growing", None: "not judged"}[flat]
                        + (f" ({mem['growth_pct']:+.1f}% after {FLAT_AFTER_S:g} s)" if "growth_pct" in mem else ""))
                     + (f", {mem['per_stream_kb']:.0f} KB RSS per open stream" if mem.get("per_stream_kb") is not None
                        else ""))
            goal("1,000 slow streams: no errors, memory flat, RSS per open stream stated", label, value,
                 None if flat is None else (not slow.get("errors") and flat))
        else:
            goal("1,000 slow streams: no errors, memory flat, RSS per open stream stated", label, None, None,
                 "not run")
    return goals


def goals_md(goals: list[dict]) -> str:
    out = ["| | goal | target | measured |", "|---|---|---|---|"]
    for x in goals:
        mark = {True: "✓", False: "✗", None: "–"}[x["ok"]]
        value = x["value"] or f"not measured{': ' + x['note'] if x['note'] else ''}"
        out.append(f"| {mark} | {x['goal']} | {x['target']} | {value} |")
    return "\n".join(out)


def memory_md(results: list[dict]) -> str:
    rows = [r for r in results if BY_KEY[r["scenario"]].held and r["res"].get("memory")]
    if not rows:
        return ""
    out = ["| target | idle MB | at 10 s | end | growth after 10 s | flat | RSS per open stream | samples (MB, 1/s) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["res"]["memory"]
        samples = m.get("samples_mb", [])
        shown = samples if len(samples) <= 16 else samples[::max(1, len(samples) // 15)]
        growth = "-" if m.get("growth_pct") is None else f"{m['growth_pct']:+.1f}%"
        flat = {True: "yes", False: "no", None: "not judged"}[m.get("flat")]
        per = "-" if m.get("per_stream_kb") is None else f"{m['per_stream_kb']:.0f} KB"
        out.append(f"| {TARGET_LABELS[r['target']]} | {num(m.get('idle_mb'), 0)} | {num(m.get('at_10s_mb'), 0)} | "
                   f"{num(m.get('end_mb'), 0)} | {growth} | {flat} | {per} | "
                   f"{', '.join(f'{x:.0f}' for x in shown)} |")
    return "\n".join(out)


COLUMNS_MD = """\
- **req/s**: requests (streams) completed in the measured window, per second.
- **latency**, **TTFT**: p50 / p90 / p99 over the window's requests, from the request's start; TTFT is the
  first event whose delta carries content.
- **added**: the target's value minus the mock alone's for the same scenario in the same run. The mock alone's
  rows are bounded by the load generator (one Python process, see its cores): from c=32 up most of the floor's
  latency is the load generator's own queueing, so there "added" understates what a faster client would see.
- **gw CPU ms/req**: CPU time (user + system) of all the target's processes during the window, over the requests
  completed in it. **per process** splits it: `api` is the front door, `worker…` each worker process
  (`reactor serve` runs the worker as its child), `litellm` LiteLLM's process group.
- **gw CPU µs/chunk**: the same over the stream's content chunks (per-request work included).
- **gw peak RSS MB**: the target's processes together, sampled every 0.5 s.
- **cores**: average cores used during the window by the mock, the load generator, Redis (shared with other
  users of the machine) and everything else (**other**: other people's work: read a row as contended when it
  is large)."""


def render_md(meta: dict, results: list[dict], goals: list[dict], chart: str | None) -> str:
    skipped = [r for r in results if r["res"].get("skipped")]
    parts = [
        f"# Performance matrix, {meta['date']}",
        "",
        f"- machine: {meta['machine_line']}",
        f"- tree: {meta['tree']}",
        f"- command: `{meta['command']}`",
        f"- each case: {meta['warmup_s']:g} s warm-up at the same concurrency, then {meta['duration_s']:g} s "
        f"measured (at most {meta['count']:,} requests); the slow streams held {meta['slow_seconds']:g} s; "
        f"request timeout {meta['request_timeout_s']:g} s",
        f"- load average before / after: {meta['loadavg_before']} / {meta.get('loadavg_after', '?')}; "
        f"run took {meta.get('elapsed_s', 0) / 60:.1f} min",
    ]
    if meta.get("note"):
        parts.append(f"- note: {meta['note']}")
    parts.append("")
    if chart:
        parts += [f"![throughput, overhead and CPU per target and scenario]({chart})", ""]
    parts += ["## The project's targets", "", goals_md(goals), "", "## Results", "", results_table(results), ""]
    if skipped:
        parts += ["Not run:", ""] + [f"- {TARGET_LABELS[r['target']]}, {BY_KEY[r['scenario']].title}: "
                                     f"{r['res']['skipped']}" for r in skipped] + [""]
    mem = memory_md(results)
    if mem:
        parts += [f"## Memory under {BY_KEY['slow1000'].conc:,} slow streams", "",
                  f"RSS of the target's processes together, sampled every second from the start of the case "
                  f"(warm-up included). Flat: grew by at most {FLAT_GROWTH_PCT:g}% after the first "
                  f"{FLAT_AFTER_S:g} s. Per open stream: the mean after {FLAT_AFTER_S:g} s minus the idle "
                  "target's (after start-up, before the first scenario), over the open streams.", "", mem, ""]
    parts += ["## Scenarios", ""] + [f"- `{s.key}`: {s.title}; {scenario_detail(s)}" for s in meta["scenario_objs"]]
    parts += ["", "## Columns", "", COLUMNS_MD]
    return "\n".join(parts).rstrip() + "\n"


def scenario_detail(s: Scenario) -> str:
    if s.mode == "embeddings":
        return f"`POST /embeddings` (one input, base64), {s.conc} connections, closed loop"
    if s.mode == "chat":
        return f"`POST /chat/completions`, {s.conc} connections, closed loop"
    first = s.chunk_delay_ms if s.first_token_ms is None else s.first_token_ms
    pace = (f"first token after {first:g} ms, then a chunk every {s.chunk_delay_ms:g} ms"
            if s.chunk_delay_ms or first else "the whole stream at once")
    starts = (f"starts spread over {s.stream_s:g} s (steady arrivals)" if s.spread
              else "all streams start together")
    return f"streams of {s.chunks:,} content chunks ({pace}), {s.conc:,} concurrent, {starts}"


def render_chart(path: Path, meta: dict, results: list[dict], targets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    scen = [s for s in meta["scenario_objs"]]
    floors = {r["scenario"]: r["res"] for r in results if r["target"] == "mock"}
    by = {(r["target"], r["scenario"]): r["res"] for r in results}
    colors = {"mock": "#9e9e9e", "serve": "#1f77b4", "api2w": "#2ca02c", "litellm": "#d62728"}
    fig, axes = plt.subplots(3, 1, figsize=(15, 13), constrained_layout=True)
    x = list(range(len(scen)))
    labels = [s.chart or s.key for s in scen]

    def panel(ax, tlist, value, title, ylabel, fmt):
        width = 0.8 / max(1, len(tlist))
        shown = []
        for i, t in enumerate(tlist):
            for xi, s in zip(x, scen):
                res = by.get((t, s.key))
                xc = xi - 0.4 + width * (i + 0.5)
                v = None if res is None or res.get("skipped") or res.get("error") else value(t, s, res)
                if v is not None and v > 0:
                    ax.bar(xc, v, width, color=colors.get(t))
                    ax.annotate(fmt(v), (xc, v), ha="center", va="bottom", fontsize=7, rotation=90,
                                xytext=(0, 2), textcoords="offset points")
                    shown.append(v)
                elif res is not None:
                    # Nothing to draw on a log scale: say why at the foot of the slot.
                    text = ("not run" if res.get("skipped") else "error" if res.get("error")
                            else "n/a" if v is None else fmt(v))
                    ax.annotate(text, (xc, 0.02), xycoords=("data", "axes fraction"), ha="center",
                                va="bottom", fontsize=7, rotation=90, color=colors.get(t))
        ax.set_yscale("log")
        if shown:
            ax.set_ylim(min(shown) / 3, max(shown) * 20)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(ylabel)
        ax.set_xticks(x, labels, fontsize=9)
        ax.set_xlim(-0.55, len(scen) - 0.45)
        ax.grid(axis="y", which="major", alpha=0.3)

    panel(axes[0], targets, lambda t, s, r: r.get("rps"), "Throughput (requests or streams per second, log)",
          "req/s", lambda v: f"{v:,.0f}" if v >= 10 else f"{v:.1f}")
    gw = [t for t in targets if t != "mock"]
    panel(axes[1], gw, lambda t, s, r: overhead_ms(r, floors.get(s.key), s),
          "Overhead over the mock alone: added ms, p50 (TTFT for streams, latency otherwise; log)",
          "added ms", lambda v: f"{v:+.1f}" if abs(v) < 100 else f"{v:+,.0f}")
    panel(axes[2], gw, lambda t, s, r: r.get("gw_cpu_ms_per_req"),
          "Gateway CPU per request, all its processes (ms, log)", "CPU ms/req",
          lambda v: f"{v:.2f}" if v < 10 else f"{v:,.0f}")
    handles = [matplotlib.patches.Patch(color=colors.get(t), label=TARGET_LABELS[t]) for t in targets]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(targets), fontsize=9, frameon=False)
    fig.suptitle(f"Gateway performance matrix, {meta['date']}\n{meta['machine_line']}", fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Run


def machine(a) -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    redis_version = "?"
    try:
        import redis

        r = redis.Redis.from_url(a.redis_url, socket_timeout=5)
        redis_version = r.info("server")["redis_version"]
        r.close()
    except Exception:  # noqa: BLE001 - the version is only reported
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "redis": redis_version, "kernel": platform.release()}


def tree_state() -> str:
    def git(*args):
        cp = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
        return cp.stdout.strip() if cp.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def estimate_s(a, targets: list[str], scenarios: list[Scenario]) -> float:
    total = 0.0
    for t in targets:
        total += {"mock": 0, "litellm": 15}.get(t, 5) + (3 * (a.prime_seconds + 0.5) if t != "mock" else 0)
        for s in scenarios:
            if t == "litellm" and s.key in LITELLM_SKIPS and not a.litellm_all:
                continue
            warm = max(a.warmup, s.stream_s * 2 + 0.5) if s.spread else a.warmup
            total += warm + (a.slow_seconds if s.held else a.duration) + s.stream_s + 1.5
    return total


def write_outputs(base: Path, meta: dict, results: list[dict], goals: list[dict], scenarios: list[Scenario],
                  publish: bool, write_json: bool) -> list[str]:
    """The chart, the Markdown (and the JSON); with ``publish`` the copies beside this script."""
    meta["scenario_objs"] = scenarios
    chart_ok = True
    try:
        render_chart(base.with_suffix(".png"), meta, results, meta["targets"])
    except Exception as exc:  # noqa: BLE001 - the table and JSON still stand
        chart_ok = False
        print(f"!! chart not drawn: {exc!r} (install the bench extra: pip install -e '.[bench]')", flush=True)
    base.with_suffix(".md").write_text(render_md(meta, results, goals, base.with_suffix(".png").name
                                                 if chart_ok else None))
    written = [f"{base}.md"] + ([f"{base}.png"] if chart_ok else [])
    if write_json:
        plain = {k: v for k, v in meta.items() if k != "scenario_objs"}
        base.with_suffix(".json").write_text(json.dumps({"meta": plain, "goals": goals, "results": results},
                                                        indent=1, default=str) + "\n")
        written.insert(0, f"{base}.json")
    if publish:
        (HERE / "matrix.md").write_text(render_md(meta, results, goals, "matrix.png" if chart_ok else None))
        written.append(str(HERE / "matrix.md"))
        if chart_ok:
            shutil.copyfile(base.with_suffix(".png"), HERE / "matrix.png")
            written.append(str(HERE / "matrix.png"))
    return written


def rerender(path: Path, publish: bool) -> int:
    data = json.loads(path.read_text())
    meta, results = data["meta"], data["results"]
    scenarios = [BY_KEY[sc["key"]] for sc in meta["scenarios"] if sc["key"] in BY_KEY]
    goals = check_goals(results, meta["targets"])
    base = path.with_suffix("")
    written = write_outputs(base, meta, results, goals, scenarios, publish, write_json=False)
    print("wrote " + ", ".join(written))
    return 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--targets", default="mock,serve,api2w",
                   help="comma list of mock, serve, api2w, litellm (default: mock,serve,api2w)")
    p.add_argument("--litellm", action="store_true", help="add LiteLLM's proxy as a target")
    p.add_argument("--litellm-all", action="store_true",
                   help="also run LiteLLM through the scenarios it cannot keep up with (real256, slow1000)")
    p.add_argument("--litellm-venv", default=LITELLM_VENV)
    p.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                   help="comma list of " + ", ".join(s.key for s in SCENARIOS))
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per case, same concurrency")
    p.add_argument("--count", type=int, default=200_000, help="measured requests per case at most")
    p.add_argument("--slow-seconds", type=float, default=60.0, help="how long slow1000 holds its streams")
    p.add_argument("--prime-seconds", type=float, default=2.0,
                   help="unmeasured requests of each kind (chat, stream, embeddings) when a target has started")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--redis-url", default=env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--python", default=env("BENCH_PYTHON") or sys.executable,
                   help="interpreter with aiohttp (+uvloop) for the mock and the load generator")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--profile", action="store_true",
                   help="py-spy on every gateway process during each measured window; top functions go to "
                        "results/matrix-<stamp>-profile.md")
    p.add_argument("--publish", action="store_true",
                   help="copy the table and the chart to bench/matrix.md and bench/matrix.png")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--from-json", metavar="PATH",
                   help="draw the table and the chart again from a run's JSON (with --publish: publish them)")
    a = p.parse_args(argv)
    if a.from_json:
        return rerender(Path(a.from_json), a.publish)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if a.litellm and "litellm" not in targets:
        targets.append("litellm")
    for t in targets:
        if t not in TARGET_LABELS:
            p.error(f"unknown target {t!r} (mock, serve, api2w, litellm)")
    targets = [t for t in TARGET_LABELS if t in targets]  # the documented order
    keys = [k.strip() for k in a.scenarios.split(",") if k.strip()]
    for k in keys:
        if k not in BY_KEY:
            p.error(f"unknown scenario {k!r} ({', '.join(BY_KEY)})")
    scenarios = [s for s in SCENARIOS if s.key in keys]
    if not (SHARED_BENCH / "loadgen.py").exists():
        p.error(f"the shared harness is not at {SHARED_BENCH}")

    t_start = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a.run_dir = Path(f"/tmp/matrix-{stamp}-{uuid.uuid4().hex[:4]}")
    a.run_dir.mkdir(parents=True)
    if a.profile:
        a.profile_dir = out_dir / "profiles" / f"matrix-{stamp}"
        a.profile_dir.mkdir(parents=True, exist_ok=True)
    mach = machine(a)
    a.litellm_version = None
    litellm_error = None
    if "litellm" in targets:
        try:
            a.litellm_version = ensure_litellm_venv(Path(a.litellm_venv))
        except (OSError, subprocess.SubprocessError) as exc:
            litellm_error = f"LiteLLM left out: its venv could not be set up ({exc})"
            print(f"!! {litellm_error}", flush=True)
            targets.remove("litellm")
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": mach, "tree": tree_state(),
        "machine_line": (f"{mach['cores']} cores, {mach['cpu_model']}, Linux {mach['kernel']}, "
                         f"Python {mach['python']}, Redis {mach['redis']}"
                         + (f", LiteLLM {a.litellm_version}" if a.litellm_version else "")),
        "command": "bench/run.sh --matrix" + (" " + shlex.join(sys.argv[1:] if argv is None else argv)
                                              if (sys.argv[1:] if argv is None else argv) else ""),
        "targets": targets, "scenarios": [dataclasses.asdict(s) for s in scenarios],
        "duration_s": a.duration, "warmup_s": a.warmup, "count": a.count, "slow_seconds": a.slow_seconds,
        "request_timeout_s": a.request_timeout, "loadavg_before": gb.loadavg(), "logs": str(a.run_dir),
    }
    if a.profile:
        meta["profile_dir"] = str(a.profile_dir)
    if litellm_error:
        meta["note"] = litellm_error
    est = estimate_s(a, targets, scenarios)
    print(f"# matrix {meta['date']}: {meta['machine_line']}\n# targets {', '.join(targets)}; scenarios "
          f"{', '.join(s.key for s in scenarios)}; about {est / 60:.1f} min; logs {a.run_dir}", flush=True)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    results: list[dict] = []
    a.prefixes = []
    try:
        mock_port = gb.free_port()
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        mock = Child("mock", [a.python, str(HERE / "matrix_mock.py"), "--port", str(mock_port)],
                     a.run_dir / "mock.log")
        gb.wait_http(f"{mock_url}/models", 20, procs=(mock,))
        rpid = gb.redis_pid(a.redis_url)
        for key in targets:
            try:
                if key == "mock":
                    target = Target("mock", mock_url, None, [])
                elif key == "litellm":
                    target = start_litellm(a, a.run_dir, mock_url)
                else:
                    target = start_reactor(a, key, a.run_dir, mock_url)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"!! {TARGET_LABELS[key]} did not start: {exc}", flush=True)
                results += [{"target": key, "scenario": sc.key, "res": {"error": f"did not start: {exc}"}}
                            for sc in scenarios]
                for child in [c for c in Child.live if c is not mock]:
                    child.stop()
                continue
            if key != "mock":
                prime(a, target, mock_url)
            time.sleep(IDLE_SETTLE_S)
            idle = round(sum(gb.rss_mb(pids) for pids in target.roles().values()), 1) if key != "mock" else None
            target.info["idle_rss_mb"] = idle
            meta.setdefault("target_info", {})[key] = target.info
            print(f"## {target.label} at {target.url}"
                  + (f" (ready in {target.info.get('ready_s')} s, idle RSS {idle} MB)" if key != "mock" else ""),
                  flush=True)
            for sc in scenarios:
                if key == "litellm" and sc.key in LITELLM_SKIPS and not a.litellm_all:
                    seen = {r["scenario"]: r["res"].get("gw_cpu_us_per_chunk") for r in results if r["target"] == key}
                    measured = next(((k, seen[k]) for k in ("s32", "s1", "s128") if seen.get(k)), (None, None))
                    res = {"skipped": litellm_skip_reason(sc, *measured)}
                elif not target.alive():
                    res = {"error": "the target's process died; see its log", "skipped": None}
                else:
                    res = run_case(a, target, sc, mock, mock_url, rpid)
                    if sc.held and key != "mock":
                        res["memory"] = memory_verdict(res, idle, sc.conc)
                results.append({"target": key, "scenario": sc.key, "res": res})
                print(f"   {key:8s} {sc.key:9s} rps={res.get('rps')} p50={g(res, 'latency_ms', 'p50')} "
                      f"ttft50={g(res, 'ttft_ms', 'p50')} err={res.get('errors')} "
                      f"gw_ms/req={res.get('gw_cpu_ms_per_req')} {res.get('cpu_ms_per_req') or ''}"
                      + (f" !! {res['error']}" if res.get("error") else "")
                      + (f" errors: {res['error_samples']}" if res.get("error_samples") else ""), flush=True)
            for c in target.children:
                if not c.alive():
                    print(f"!! {c.name} died during the run; see {c.log_path}", flush=True)
            target.stop()
        Child.stop_all()
    finally:
        for load in LOADS:
            load.kill()
        Child.stop_all()
        for prefix in a.prefixes:
            try:
                gb.delete_prefix(a.redis_url, prefix)
            except Exception as exc:  # noqa: BLE001 - report, do not mask the run's outcome
                print(f"!! could not delete Redis keys under {prefix}: {exc!r}", flush=True)

    meta["loadavg_after"] = gb.loadavg()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    goals = check_goals(results, targets)
    written = write_outputs(out_dir / f"matrix-{stamp}", meta, results, goals, scenarios, a.publish,
                            write_json=True)
    if a.profile:
        prof = out_dir / f"matrix-{stamp}-profile.md"
        prof.write_text(profile_report(results, meta))
        written.append(str(prof))
    print()
    print(goals_md(goals))
    print(f"\n# took {meta['elapsed_s'] / 60:.1f} min; wrote " + ", ".join(written), flush=True)
    return 0 if all(not r["res"].get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
