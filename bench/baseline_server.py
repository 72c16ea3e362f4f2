"""The do-nothing baseline for the ingest benchmark: aiohttp on uvloop, parse the JSON
body, answer 202 with a body shaped like the service's. No validation, no storage.

    python bench/baseline_server.py --port 5901
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

ANSWER = orjson.dumps(
    {"event_id": "0190f0e6-7b1a-7cc3-8a3e-5d3c2b1a0f9e", "timestamp": "2025-05-28T14:03:07.123456Z"}
)


async def post_event(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(status=202, body=ANSWER, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5901)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/events", post_event)
    app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
