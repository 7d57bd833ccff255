"""The operator dashboard at ``/dashboard``: one static page whose script reads the tenant's JSON routes.

The page holds no data. The browser fetches ``/v1/...`` with the key the operator types (kept in the tab's
sessionStorage) or passes in the URL fragment (which browsers never send), so serving the page to anyone
discloses nothing, and a wrong key shows nothing but the refusal.
"""
from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from .errors import ApiError

_TYPES = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css",
          "favicon.svg": "image/svg+xml"}
# Read once at import: a package installed without its static files fails at start, not on the first visit.
_FILES = {name: (files(__package__) / "static" / "dashboard" / name).read_bytes() for name in _TYPES}
# Only this origin's files and routes: no inline script or style for an injected string to run as, nothing
# from elsewhere. Never framed (clickjacking a key form), and no Referer to leak the page's address.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _serve(name: str) -> web.Response:
    return web.Response(body=_FILES[name], content_type=_TYPES[name], charset="utf-8", headers=_HEADERS)


async def page(request: web.Request) -> web.Response:
    return _serve("index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in _TYPES or name == "index.html":
        raise ApiError(404, "not_found", f"no dashboard file {name[:64]!r}")
    return _serve(name)


ROUTES = [
    ("GET", "/dashboard", page),
    ("GET", "/dashboard/{asset}", asset),
]
