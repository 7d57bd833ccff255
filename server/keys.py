"""Typed keys of the app and request state."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Runtime, TenantState

RUNTIME: web.AppKey["Runtime"] = web.AppKey("runtime")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
SPEC: web.AppKey[dict[str, Any]] = web.AppKey("spec")
TENANT: web.RequestKey["TenantState"] = web.RequestKey("tenant")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
