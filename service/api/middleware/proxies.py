"""The client address: the TCP peer, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Network", "TrustedProxies", "parse_address", "pick_client"]

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

_MAX_PORT = 65535
# "[v6]" or "[v6]:port", and "v4:port"; the port is checked, then ignored.
_BRACKETED = re.compile(r"\[([^\]]+)\](?::([0-9]{1,5}))?")
_V4_WITH_PORT = re.compile(r"([0-9.]+):([0-9]{1,5})")


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address, or None; accepts ``[v6]``, ``[v6]:port`` and ``v4:port``.

    IPv6 scope ids (``%eth0``) are refused: they are free text. An IPv4-mapped IPv6 address
    is returned as the IPv4 address it maps, so both spellings are one client.
    """
    host, port, bracketed = text.strip(), "0", False
    if match := _BRACKETED.fullmatch(host):
        host, port, bracketed = match[1], match[2] or "0", True
    elif match := _V4_WITH_PORT.fullmatch(host):
        host, port = match[1], match[2]
    if "%" in host or int(port) > _MAX_PORT:
        return None
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if bracketed and not isinstance(address, IPv6Address):
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted)


def pick_client(peer: str, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The client's address for a request from ``peer`` carrying these X-Forwarded-For lines.

    Only a peer inside ``trusted`` is believed. Its header lines are joined with commas and
    walked right to left, skipping trusted proxies; the first untrusted address is the client
    (the leftmost one when all are trusted). Anything that is not an IP address on that walk,
    or no header at all, leaves ``peer``: the result is always ``peer`` or a canonical
    address, never header text.
    """
    if not trusted:
        return peer
    peer_address = parse_address(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    entries = ",".join(forwarded_for).split(",")
    if not any(entry.strip() for entry in entries):
        return peer
    chosen: Address | None = None
    for entry in reversed(entries):
        chosen = parse_address(entry)
        if chosen is None:
            return peer
        if not _trusted(chosen, trusted):
            break
    return str(chosen) if chosen is not None else peer


class TrustedProxies:
    """Replace ``scope["client"]`` by the address :func:`pick_client` picks.

    With no trusted proxies (the default) this passes requests through untouched, so the
    client is the TCP peer and X-Forwarded-For, Forwarded and X-Real-IP mean nothing.
    """

    def __init__(self, app: ASGIApp, *, trusted: tuple[Network, ...]) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the client of HTTP and WebSocket requests from a trusted proxy."""
        client = scope.get("client")
        if self.trusted and scope["type"] in {"http", "websocket"} and client:
            host, port = client
            lines = [
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"x-forwarded-for"
            ]
            if lines:
                picked = pick_client(host, lines, self.trusted)
                if picked != host:
                    scope = {**scope, "client": (picked, port)}
        await self.app(scope, receive, send)
