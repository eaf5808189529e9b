"""The core's one root exception; each subclass carries the SIP answer it means.

Like dnspython's ``DNSException``: callers catch :class:`OutboundError` once
and answer with its ``status`` and ``reason`` (adapter.runtime.guarded), so a
new error kind never turns into a traceback reaching the caller. Every one is
also a ``ValueError``: it always means "this input (message, file, setting)
is not acceptable".
"""

from __future__ import annotations


class OutboundError(ValueError):
    """Something the core refuses; answered ``status reason`` when a request caused it."""

    status = 500
    reason = "Server Internal Error"


class SipSyntaxError(OutboundError):
    """A header we need could not be parsed (RFC 3261 §21.4.1: 400 Bad Request)."""

    status = 400
    reason = "Bad Request"


class TokenError(OutboundError):
    """A flow could not be encoded (bad address, port or transport)."""


class KeyFormatError(OutboundError):
    """A configured key is refused; the message never quotes the key."""


class ConfigError(OutboundError):
    """Invalid configuration; the message names the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key


class CredentialError(OutboundError):
    """A subscriber that cannot be stored (empty or too long a name, empty password)."""
