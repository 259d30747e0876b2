"""RFC 7239 ``Forwarded: for=...`` from trusted proxies, as uvicorn does ``X-Forwarded-For``.

uvicorn's proxy-headers middleware (``forwarded_allow_ips``, set from ``TRIBUTARY_TRUSTED_PROXIES``)
reads only ``X-Forwarded-For``. This one reads ``Forwarded`` when the connection's peer is a trusted
proxy and no ``X-Forwarded-For`` was believed (uvicorn runs first and would have replaced the peer):
the client is the last ``for=`` that is not itself a trusted proxy, so a client cannot pick its own
address by sending the header, and nobody else's header is read at all.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

# for=192.0.2.60, for="[2001:db8::17]:4711", for="198.51.100.17:8080", for=unknown, for=_hidden
_FOR = re.compile(r'(?:^|[;,\s])for=("[^"]*"|[^;,\s]*)', re.IGNORECASE)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Addresses and networks as ``TRIBUTARY_TRUSTED_PROXIES`` lists them; anything else in the list
    (a unix socket path, a test client's name) is matched literally, as uvicorn does."""

    def __init__(self, trusted: str) -> None:
        self.networks: list[Network] = []
        self.literals: set[str] = set()
        for part in (p.strip() for p in trusted.split(",")):
            if not part:
                continue
            try:
                self.networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                self.literals.add(part)

    def __bool__(self) -> bool:
        return bool(self.networks or self.literals)

    def __contains__(self, host: str) -> bool:
        if host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def forwarded_for(header: str) -> list[str]:
    """The addresses of the ``for=`` parameters, in order, without port or brackets; obfuscated
    identifiers (``unknown``, ``_hidden``) stay as they are (they are never trusted)."""
    hosts = []
    for raw in _FOR.findall(header):
        value = raw.strip('"')
        if value.startswith("["):  # [v6] or [v6]:port
            value = value[1:value.find("]")] if "]" in value else value[1:]
        elif value.count(":") == 1:  # v4:port
            value = value.split(":", 1)[0]
        hosts.append(value)
    return hosts


class ForwardedHeader:
    def __init__(self, app: ASGIApp, trusted: str) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.trusted:
            client = scope.get("client")
            if client and client[0] in self.trusted:
                header = b", ".join(v for k, v in scope["headers"] if k == b"forwarded").decode("latin1")
                hosts = forwarded_for(header) if header else []
                for host in reversed(hosts):
                    if host not in self.trusted:
                        scope["client"] = (host, 0)
                        break
        await self.app(scope, receive, send)
