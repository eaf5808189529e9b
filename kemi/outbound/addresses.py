"""IP literals: which family, one spelling per address (RFC 3261 §25.1 host, RFC 5952).

One IPv6 address has many spellings: ``2001:DB8:0:0:0:0:0:1`` (in a header a
device wrote), ``2001:db8::1`` (a decoded flow token, dnspython; Kamailio 5.6's
``$si`` as measured here), ``[2001:db8::1]`` (a URI). Every comparison or key
of addresses goes through :func:`canonical_ip`, so that two spellings of one
peer are one.
"""

from __future__ import annotations

import functools
import ipaddress


def _unbracket(text: str) -> str:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return text[1:-1]
    return text


@functools.lru_cache(maxsize=4096)
def ip_family(text: str) -> str | None:
    """"ipv4" / "ipv6" for an IP literal (brackets allowed), None for a name."""
    try:
        address = ipaddress.ip_address(_unbracket(text))
    except ValueError:
        return None
    return "ipv4" if address.version == 4 else "ipv6"


def is_ip_literal(text: str) -> bool:
    """An IPv4 or IPv6 address (brackets allowed), not a host name."""
    return ip_family(text) is not None


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str:
    """One spelling per address (RFC 5952: ``2001:DB8:0:0:0:0:0:1`` and
    ``2001:db8::1`` are one peer); ValueError when ``text`` is no IP literal."""
    return str(ipaddress.ip_address(_unbracket(text)))
