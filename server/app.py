"""The app factory."""
from __future__ import annotations

from aiohttp import web

from . import dashboard
from .config import ServerConfig
from .handlers import ROUTES, auth_middleware, error_middleware
from .keys import METRICS, RUNTIME, SPEC
from .metrics import Metrics
from .openapi import build_spec
from .runtime import Runtime

# What the HTTP server (not the app) must be run with. aiohttp would otherwise inflate a gzip body while it
# arrives, before any handler runs: an unauthenticated compression bomb. Bodies are inflated after
# authentication instead, with the size limit applied to what comes out (server/codecs.py).
SERVER_KWARGS = {"auto_decompress": False}


def create_app(config: ServerConfig) -> web.Application:
    """A ready-to-run nudge application; its runtime starts and stops with the app."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[error_middleware, auth_middleware])
    metrics = Metrics(tenant_names=bool(config.metrics_tenant_names))
    app[METRICS] = metrics
    app[RUNTIME] = Runtime(config, metrics)
    app[SPEC] = build_spec()
    for method, path, handler in ROUTES + dashboard.ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_runtime_ctx)
    return app


async def _runtime_ctx(app: web.Application):
    runtime = app[RUNTIME]
    await runtime.start()
    yield
    await runtime.stop()
