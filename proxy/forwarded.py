"""The real client address, believed only when it came through a trusted proxy.

``X-Forwarded-For`` is a list anyone can write. Each proxy appends the address
it saw, so only the entries added by proxies we trust are facts. Reading from
the right: the peer must be trusted, then every trusted entry is skipped, and
the first untrusted one is the client. With no trusted proxies configured
(the default) the header is ignored and the client is the socket's peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .http import Headers

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8, ::1"`` → networks. Raises ValueError naming the bad entry."""
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


class TrustedProxies:
    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client(self, peer: str | None, headers: Headers) -> str | None:
        if not self.networks or peer is None or not self.trusts(peer):
            return peer
        chain: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                chain.extend(part.strip() for part in value.decode("latin-1").split(","))
        client = peer
        for hop in reversed(chain):
            if not hop:
                continue
            client = hop
            if not self.trusts(hop):
                break
        return client
