"""The yardstick: an aiohttp server that only decodes the msgpack body and answers a fixed small body.

    python -m loadtests.bare_server --port 9100

Whatever nudge does beyond this (validation, the durable log, the engine, signals) is what the
benchmark's ratio measures; the HTTP stack and the codec cost the same in both.
"""
from __future__ import annotations

import argparse

import msgpack
from aiohttp import web

ANSWER = msgpack.packb({"accepted": 1, "duplicates": 0})


async def handle(request: web.Request) -> web.Response:
    msgpack.unpackb(await request.read())
    return web.Response(body=ANSWER, content_type="application/msgpack")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    # The same event loop as nudge serve picks, so that the ratio compares the work, not the loops.
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
