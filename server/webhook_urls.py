"""Which webhook URLs nudge will call: https, no credentials, no private addresses (unless allowed).

Checked when a subscription is made, and again at every connection, since a name can be made to
resolve somewhere else after it was checked (DNS rebinding). An IPv6 address that tunnels or translates
to IPv4 (6to4, Teredo, NAT64, IPv4-compatible or -mapped) is judged by the IPv4 hosts it reaches too; one
that reaches only public hosts (6to4 or NAT64 of a public IPv4) is allowed: it reaches nothing that a URL
naming that IPv4 address could not.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

MAX_URL_CHARS = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UrlRefused(ValueError):
    """A webhook URL nudge will not call; the message says why and how to allow it where that is possible."""


def address_problem(ip: str) -> str | None:
    """Why an address, or an IPv4 host it tunnels to, is off limits (loopback, private, metadata, ...), or None."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv4Address):
        return _own_problem(addr)
    if addr in _NAT64_LOCAL_USE:
        return f"{addr} is in the local-use NAT64 prefix 64:ff9b:1::/48, which can lead into private networks"
    translated = _translated_to(addr)
    if translated is not None:
        return _via(addr, *translated)
    problems = [_own_problem(addr)] + [_via(addr, *hop) for hop in _tunnelled_to(addr)]
    return next((problem for problem in problems if problem), None)


def _translated_to(addr: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 host an IPv4-mapped, 6to4 or well-known NAT64 address stands for: that host alone decides."""
    if addr.ipv4_mapped is not None:
        return "IPv4-mapped", addr.ipv4_mapped
    if addr.sixtofour is not None:
        # Python 3.12.4 and later count all of 2002::/16 as private; a relay to a public host is not.
        return "6to4", addr.sixtofour
    if addr in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF)
    return None


def _tunnelled_to(addr: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 hosts a Teredo or (deprecated) IPv4-compatible address reaches, besides the address itself."""
    if addr.teredo is not None:
        return [("Teredo server", addr.teredo[0]), ("Teredo client", addr.teredo[1])]
    if addr in _IPV4_COMPATIBLE:
        return [("IPv4-compatible", ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF))]
    return []


def _via(addr: ipaddress.IPv6Address, how: str, ipv4: ipaddress.IPv4Address) -> str | None:
    problem = _own_problem(ipv4)
    return f"{addr} ({how} for {ipv4}): {problem}" if problem else None


def _own_problem(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for attr, what in (("is_loopback", "loopback"), ("is_link_local", "link-local (cloud metadata)"),
                       ("is_private", "private"), ("is_multicast", "multicast"), ("is_reserved", "reserved"),
                       ("is_unspecified", "unspecified")):
        if getattr(addr, attr):
            return f"{addr} is a {what} address"
    if not addr.is_global:
        return f"{addr} is not a public address"
    return None


def check_url_shape(url: Any, *, allow_http: bool) -> tuple[str, int]:
    """(host, port) of an acceptable URL, or :class:`UrlRefused`."""
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_CHARS:
        raise UrlRefused(f"must be a URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6 literal
        raise UrlRefused(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise UrlRefused("must be an https:// URL")
    if parts.scheme == "http" and not allow_http:
        raise UrlRefused("must use https (plain http is allowed only with NUDGE_WEBHOOKS_ALLOW_HTTP=1, for local use)")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials; authenticate deliveries by their signature")
    if not parts.hostname:
        raise UrlRefused("must name a host")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise UrlRefused("has an invalid host name (empty labels, or labels over 63 characters)") from None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("has an invalid port") from None
    return parts.hostname, port


async def check_webhook_url(url: Any, *, allow_http: bool, allow_private: bool) -> None:
    """Refuse a URL by shape, or because its host resolves to an address off limits."""
    host, port = check_url_shape(url, allow_http=allow_http)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} does not resolve: {exc}") from None
    for *_, sockaddr in infos:
        problem = address_problem(sockaddr[0])
        if problem:
            raise UrlRefused(f"{host} resolves to {problem}; set NUDGE_WEBHOOKS_ALLOW_PRIVATE=1 to allow it")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, and refuses names that resolve to addresses off limits."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        hosts = await self._inner.resolve(host, port, family)
        for h in hosts:
            problem = address_problem(h["host"])
            if problem:
                raise OSError(f"refused to connect: {host} now resolves to {problem}")
        return hosts

    async def close(self) -> None:
        await self._inner.close()
