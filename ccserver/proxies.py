"""
Trusted proxies: the addresses whose forwarded headers are believed
(C{[limits] trusted_proxies} for C{X-Forwarded-For}, C{[mtls]
trusted_proxies} for a client certificate header), and the one way an
address is read and tested against them (an IPv4 peer seen through an IPv6
socket, C{::ffff:192.0.2.1}, is the IPv4 address it maps).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def trusted_networks(proxies: Sequence[str]) -> tuple[Network, ...]:
    """
    C{[limits] trusted_proxies} or C{[mtls] trusted_proxies} (addresses or
    CIDR networks) as networks.

    @raise ValueError: naming the entry that is neither.
    """
    networks = []
    for proxy in proxies:
        try:
            networks.append(ipaddress.ip_network(proxy, strict=False))
        except ValueError:
            raise ValueError(f"{proxy!r} is not an IP address or network") from None
    return tuple(networks)


def hop_address(hop: str) -> Address | None:
    """
    One C{X-Forwarded-For} entry as an address: C{192.0.2.1},
    C{2001:db8::1}, or with a port as some proxies write them
    (C{192.0.2.1:4711}, C{[2001:db8::1]:4711}); None when it is none.
    """
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        address = ipaddress.ip_address(hop)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def peer_is_trusted(host: object, trusted: Sequence[Network]) -> bool:
    """
    Whether a connection's peer (C{getClientAddress().host}) is one of
    C{trusted}; never for a peer with no IP address (a UNIX socket).
    """
    if not isinstance(host, str):
        return False
    address = hop_address(host)
    return address is not None and is_trusted(address, trusted)
