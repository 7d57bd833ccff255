"""The yardstick: an aiohttp server that only decodes the msgpack body and answers a fixed small body.

    python -m loadtests.bare_server --port 9100 [--processes N]

Whatever nudge does beyond this (validation, the durable log, the engine, signals) is what the
benchmark's ratio measures; the HTTP stack and the codec cost the same in both. With ``--processes N``,
N processes serve the port (``SO_REUSEPORT``: the kernel spreads the connections), so that the yardstick
gets as many processes as nudge: the benchmark passes its count of nudge processes. It prints ``listening``
once every process listens.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal

import msgpack
from aiohttp import web

ANSWER = msgpack.packb({"accepted": 1, "duplicates": 0})


async def handle(request: web.Request) -> web.Response:
    msgpack.unpackb(await request.read())
    return web.Response(body=ANSWER, content_type="application/msgpack")


def _new_loop() -> asyncio.AbstractEventLoop:
    """The same event loop as nudge serve picks, so that the ratio compares the work, not the loops."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def serve(port: int, reuse_port: bool, ready=None) -> None:
    """Serve until SIGTERM or SIGINT; ``ready`` (a multiprocessing Event) is set once the port listens, else
    ``listening`` is printed."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None)
    loop.run_until_complete(site.start())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    else:
        print("listening", flush=True)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1, help="processes serving the port (SO_REUSEPORT)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes == 1:
        serve(args.port, reuse_port=False)
        return
    # Until serve() takes them over, SIGTERM and SIGINT stop this process through the finally below: a stop during
    # start-up takes the children with it. The children, forked, start with the same handler.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)
    context = multiprocessing.get_context("fork")  # no helper process (forkserver's), nothing to re-import
    children = []
    try:
        for _ in range(args.processes - 1):
            ready = context.Event()
            child = context.Process(target=serve, args=(args.port, True, ready), daemon=True)
            child.start()
            children.append((child, ready))
        for child, ready in children:
            if not ready.wait(60):
                raise SystemExit(f"a bare server process (pid {child.pid}) did not start listening")
        serve(args.port, reuse_port=True)  # prints "listening": every process listens
    finally:
        for child, _ in children:
            child.terminate()
        for child, _ in children:
            child.join(10)


def _exit(signum, frame) -> None:
    raise SystemExit(0)

if __name__ == "__main__":
    main()
