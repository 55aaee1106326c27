"""The client's address behind trusted proxies (X-Forwarded-For), which keys
the failed-login limits."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

from websockets.datastructures import Headers


def client_address(peer: str | None, headers: Headers, trusted: list[IPv4Network | IPv6Network]) -> str:
    """The client's IP: the TCP peer, or behind trusted proxies the nearest
    untrusted hop of X-Forwarded-For (the rightmost entries are the proxies' own)."""
    if peer is None:
        return "unknown"
    if not trusted:
        return peer
    # Several header lines are one list, in order (RFC 9110 5.3): a proxy that
    # appends a line of its own after the client's puts its hop last.
    hops = [h.strip() for header in headers.get_all("X-Forwarded-For") for h in header.split(",") if h.strip()]
    hops.append(peer)
    for hop in reversed(hops):
        try:
            address = ip_address(hop)
        except ValueError:
            return hop  # garbage from beyond our proxies: still a distinct key
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        if not any(address in net for net in trusted):
            return hop
    return hops[0]
