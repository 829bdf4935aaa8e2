#!/usr/bin/env python3
"""The floor: the least a Python gateway process can do for a stream, as a benchmark target.

One aiohttp process (uvloop) that passes ``POST /v1/chat/completions`` to the upstream and relays
the response's bytes as they arrive: no auth, no validation, no queue, no parsing, no metering.
Every gateway written in Python pays at least this per request and per streamed event (a read
from the upstream, a write to the client, the HTTP handling on both sides), so on a given machine
it says how far a gateway is from what Python itself costs there, and whether a latency target
can be met by any process of this kind at all.

    python bench/floor_proxy.py --port 8090 --upstream http://127.0.0.1:18000/v1
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP_HEADERS = {"content-type": "application/json"}


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session: aiohttp.ClientSession = request.app["session"]
    async with session.post(request.app["upstream"] + "/chat/completions", data=body,
                            headers={**HOP_HEADERS, "authorization": request.app["auth"]}) as upstream:
        response = web.StreamResponse(status=upstream.status,
                                      headers={"content-type": upstream.headers.get("content-type", "")})
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the upstream's base URL, e.g. http://127.0.0.1:18000/v1")
    p.add_argument("--upstream-key", default="sk-mock-upstream")
    a = p.parse_args()
    try:
        import uvloop  # type: ignore

        uvloop.install()
    except ImportError:
        pass

    async def app() -> web.Application:
        application = web.Application()
        application["upstream"] = a.upstream.rstrip("/")
        application["auth"] = f"Bearer {a.upstream_key}"
        application["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        application.router.add_post("/v1/chat/completions", chat)
        application.router.add_get("/v1/models", models)

        async def close(application: web.Application) -> None:
            await application["session"].close()

        application.on_cleanup.append(close)
        return application

    web.run_app(app(), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
