"""kemi/outbound/credentials.py against the digest definitions and the RFCs' own examples.

HA1 = H(username ":" realm ":" password) (RFC 2617 §3.2.2.2; RFC 7616 §3.4.2 and
RFC 8760 §2 for SHA-256). The expected values here are computed in the test
from that definition with hashlib, never with the module under test. The RFC
examples publish responses, not HA1s: the module's HA1 must reproduce them with
response = KD(HA1, nonce:nc:cnonce:qop:H(method:uri)), KD(s, d) = H(s:d)
(RFC 2617 §3.2.2.1, RFC 7616 §3.4.1).
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from outbound.credentials import MAX_NAME, SubscriberRow, ha1, subscriber_row
from outbound.errors import CredentialError


def h(name: str, data: str) -> str:
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


def response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, qop: str, method: str,
             uri: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]
    return h(name, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{h(name, f'{method}:{uri}')}")


# (source, algorithm, username, realm, password, nonce, nc, cnonce, qop, method, uri, published response)
RFC_EXAMPLES = [
    ("RFC 2617 §3.5", "MD5", "Mufasa", "testrealm@host.com", "Circle Of Life",
     "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth", "GET", "/dir/index.html",
     "6629fae49393a05397450978507c4ef1"),
    ("RFC 7616 §3.9.1 (MD5)", "MD5", "Mufasa", "http-auth@example.org", "Circle of Life",
     "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
     "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html",
     "8ca523f5e9506fed4657c9700eebdbec"),
    ("RFC 7616 §3.9.1 (SHA-256)", "SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life",
     "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
     "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html",
     "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
]


@pytest.mark.parametrize("example", RFC_EXAMPLES, ids=[e[0] for e in RFC_EXAMPLES])
def test_ha1_reproduces_the_rfc_example_response(example: tuple) -> None:
    _, algorithm, username, realm, password, nonce, nc, cnonce, qop, method, uri, published = example
    value = ha1(algorithm, username, realm, password)
    assert value == h({"MD5": "md5", "SHA-256": "sha256"}[algorithm], f"{username}:{realm}:{password}")
    assert response(algorithm, value, nonce, nc, cnonce, qop, method, uri) == published


# (username, domain, password): the row's three HA1s, realm = domain
SUBSCRIBERS = [
    ("alice", "example.com", "secret"),
    ("Mufasa", "example.org", "Circle of Life"),  # spaces in a password are fine
    ("bob", "sip.example.net", "pw:with:colons"),  # so are colons: only the names are split
    ("jürgen", "example.de", "pässwörd"),  # UTF-8 (RFC 7616: charset="UTF-8")
    ("1001", "10.0.0.1", "x"),  # a number and an IP address as the domain
    ("u" * MAX_NAME, "d" * MAX_NAME, "p" * 200),  # the longest names the table holds
]


@pytest.mark.parametrize(("username", "domain", "password"), SUBSCRIBERS)
def test_subscriber_row_holds_the_three_ha1s(username: str, domain: str, password: str) -> None:
    row = subscriber_row(username, domain, password)
    assert row == SubscriberRow(
        username=username,
        domain=domain,
        ha1=h("md5", f"{username}:{domain}:{password}"),
        ha1b=h("md5", f"{username}@{domain}:{domain}:{password}"),
        ha1_sha256=h("sha256", f"{username}:{domain}:{password}"),
        password="",
    )
    assert len(row.ha1) == 32 and len(row.ha1b) == 32 and len(row.ha1_sha256) == 64
    assert password not in (row.ha1, row.ha1b, row.ha1_sha256, row.password)


def test_a_row_is_frozen_and_its_password_column_empty() -> None:
    row = subscriber_row("alice", "example.com", "secret")
    assert row.password == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.password = "secret"  # type: ignore[misc]


def test_another_password_gives_other_ha1s() -> None:
    one, two = subscriber_row("alice", "example.com", "a"), subscriber_row("alice", "example.com", "b")
    assert {one.ha1, one.ha1b, one.ha1_sha256}.isdisjoint({two.ha1, two.ha1b, two.ha1_sha256})


@pytest.mark.parametrize(("algorithm", "name"), [("MD5", "md5"), ("md5", "md5"), ("SHA-256", "sha256"),
                                                 ("sha-256", "sha256")])
def test_algorithm_names_are_case_insensitive(algorithm: str, name: str) -> None:
    assert ha1(algorithm, "alice", "example.com", "pw") == h(name, "alice:example.com:pw")


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "SHA-256-sess", "MD5-sess", "SHA256", "", "AKAv1-MD5"])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    with pytest.raises(CredentialError, match="unknown digest algorithm"):
        ha1(algorithm, "alice", "example.com", "pw")


BAD_NAMES = [
    ("", "example.com"),
    ("alice", ""),
    ("u" * (MAX_NAME + 1), "example.com"),
    ("alice", "d" * (MAX_NAME + 1)),
    *((f"al{c}ice", "example.com") for c in ":@ \t\r\n\"\\"),
    *(("alice", f"exa{c}mple.com") for c in ":@ \t\r\n\"\\"),
]


@pytest.mark.parametrize(("username", "domain"), BAD_NAMES)
def test_names_the_table_cannot_hold_are_refused(username: str, domain: str) -> None:
    with pytest.raises(CredentialError) as caught:
        subscriber_row(username, domain, "the-password")
    assert "the-password" not in str(caught.value)  # an error never shows the password


def test_an_empty_password_is_refused() -> None:
    with pytest.raises(CredentialError, match="empty password"):
        subscriber_row("alice", "example.com", "")


def test_credential_error_is_a_value_error() -> None:
    assert issubclass(CredentialError, ValueError)
