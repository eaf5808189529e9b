"""Digest credentials as the subscriber table stores them (RFC 2617 §3.2.2.2, RFC 8760 §2).

HA1 = H(username ":" realm ":" password), hex, with H = MD5 (``ha1``, Kamailio's
auth_db column) or SHA-256 (``ha1_sha256``, our column). ``ha1b`` is Kamailio's
second MD5 HA1, for UAs that put "user@domain" in the digest username. The realm
of a subscriber is its domain. Pure: no database, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import CredentialError

MAX_NAME = 64  # the subscriber table's username and domain columns: VARCHAR(64)


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """RFC 2617 §3.2.2.2 / RFC 8760 §2.3: H(username:realm:password) in hex."""
    name = {"MD5": "md5", "SHA-256": "sha256"}.get(algorithm.upper())
    if name is None:
        raise CredentialError(f"unknown digest algorithm {algorithm!r} (MD5, SHA-256)")
    return hashlib.new(name, f"{username}:{realm}:{password}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SubscriberRow:
    """One row of the subscriber table, ready for INSERT/UPDATE."""

    username: str
    domain: str
    ha1: str
    ha1b: str
    ha1_sha256: str
    password: str = ""  # never stored in clear text


def subscriber_row(username: str, domain: str, password: str) -> SubscriberRow:
    """The row for ``username@domain`` with ``password`` (realm = domain)."""
    for what, value in (("username", username), ("domain", domain)):
        if not value or len(value) > MAX_NAME or any(c in value for c in ":@ \t\r\n\"\\"):
            raise CredentialError(f"{what} {value!r}: 1..{MAX_NAME} characters, no ':@\"\\' or spaces")
    if not password:
        raise CredentialError("empty password")
    return SubscriberRow(
        username=username,
        domain=domain,
        ha1=ha1("MD5", username, domain, password),
        ha1b=ha1("MD5", f"{username}@{domain}", domain, password),
        ha1_sha256=ha1("SHA-256", username, domain, password),
    )
