#!/usr/bin/env python3
"""The shared fast mock with a first-token delay and its shape switchable at run time.

``../shared/bench/mock_upstream.py`` paces a stream with one delay before every content chunk and
fixes the chunk count when it starts. The matrix needs a realistic upstream (the first token after
200 ms, then one every 20 ms) and several stream lengths against one mock that every target is
pointed at for the whole run. This server is the shared one (its request parsing, its precomputed
response bytes, its wire format: it imports the module), with two additions:

- ``--first-token-ms``: the wait before the first content chunk; the later chunks keep
  ``--chunk-delay-ms`` between them. Unset, the first wait is the chunk delay, as in the shared mock.
- ``POST /_bench/config`` with ``{"chunks": N, "first_token_ms": F, "chunk_delay_ms": D}`` (any
  subset) changes the shape of the streams that start after it. The matrix driver sets it before
  each scenario; nothing but the driver knows the path.

Usage: ``python matrix_mock.py --port P [--chunks 50] [--first-token-ms F] [--chunk-delay-ms D]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str((Path(__file__).resolve().parent.parent / ".." / "shared" / "bench").resolve()))
import mock_upstream as shared  # noqa: E402  (the shared mock: same bytes on the wire)

CONFIG_PATH = b"/_bench/config"
LISTEN_BACKLOG = 4096
READ_LIMIT = 1 << 20


class Server(shared.Server):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.embed_dim = args.embed_dim
        self.first = None if args.first_token_ms is None else args.first_token_ms / 1000.0

    def configure(self, body: bytes) -> dict:
        cfg = json.loads(body or b"{}")
        if "chunks" in cfg:
            self.r = shared.Responses(int(cfg["chunks"]), self.embed_dim)
        if "chunk_delay_ms" in cfg:
            self.delay = float(cfg["chunk_delay_ms"]) / 1000.0
        if "first_token_ms" in cfg:
            first = cfg["first_token_ms"]
            self.first = None if first is None else float(first) / 1000.0
        return {"chunks": self.r.chunks, "chunk_delay_ms": self.delay * 1000.0,
                "first_token_ms": None if self.first is None else self.first * 1000.0}

    async def route(self, method, path, body, writer, close):
        if path == CONFIG_PATH and method == b"POST":
            try:
                out = self.configure(body)
            except (ValueError, TypeError, AttributeError) as exc:
                self._send(writer, *shared._err(400, f"bad config: {exc}"), close)
                return True
            self._send(writer, 200, json.dumps(out).encode(), close)
            return True
        return await super().route(method, path, body, writer, close)

    async def stream(self, writer, model, close):
        first = self.delay if self.first is None else self.first
        if first <= 0 and self.delay <= 0:
            return await super().stream(writer, model, close)
        events = self.r.stream_events(model)
        writer.write(shared._head(200, shared.SSE, chunked=True, close=close))
        if self.delay <= 0:
            # A wait for the first token, then the rest at once.
            await asyncio.sleep(first)
            writer.write(shared._chunk(b"".join(events)) + b"0\r\n\r\n")
            await writer.drain()
            return
        for i, ev in enumerate(events[:-1]):
            await asyncio.sleep(first if i == 0 else self.delay)
            writer.write(shared._chunk(ev))
            await writer.drain()
        writer.write(shared._chunk(events[-1]) + b"0\r\n\r\n")
        await writer.drain()


async def amain(args: argparse.Namespace) -> None:
    srv = Server(args)
    server = await asyncio.start_server(srv.handle, args.host, args.port, backlog=LISTEN_BACKLOG,
                                        limit=READ_LIMIT)
    print(f"matrix_mock listening on http://{args.host}:{args.port}/v1 chunks={args.chunks} "
          f"first_token_ms={args.first_token_ms} chunk_delay_ms={args.chunk_delay_ms:g}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=50)
    p.add_argument("--first-token-ms", type=float, default=None)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    p.add_argument("--embed-dim", type=int, default=256)
    args = p.parse_args()
    # Every stream holds a socket: 1,000 streams direct and as many from a gateway.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
