"""Who may do what (RFC 3261 §22, §10.3 steps 3-4; RFC 2617 §3.2.1), table-driven."""

import pytest

from outbound.authz import (
    AUTH_ERROR,
    AUTH_INVALID_PASSWORD,
    AUTH_NO_CREDENTIALS,
    AUTH_NONCE_REUSED,
    AUTH_NONCE_STALE,
    AUTH_OK,
    AUTH_USER_UNKNOWN,
    Authorized,
    Challenge,
    auth_outcome,
    credentials_readable,
    over_contact_limit,
    register_owner_refusal,
)
from outbound.bindings import Binding, normalize_instance
from outbound.decisions import Reply
from outbound.refresh import bindings_added
from outbound.sipmsg import parse_name_addr

GOOD = 'Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com", response="0123"'


def outcome(code, headers=(GOOD,), reachable=None):
    return auth_outcome(code, user="alice", realm="example.com", headers=headers, db_reachable=reachable)


@pytest.mark.parametrize(("code", "headers", "reachable", "expected"), [
    (AUTH_OK, (GOOD,), None, Authorized("alice", "example.com")),
    (AUTH_NO_CREDENTIALS, ("",), None, Challenge()),
    (AUTH_NONCE_STALE, (GOOD,), None, Challenge(stale=True, why="stale nonce")),
    (AUTH_NONCE_REUSED, (GOOD,), None, Challenge(stale=True, why="nonce used before")),
    (AUTH_ERROR, (GOOD,), True, Challenge(why="a nonce we did not issue")),
])
def test_challenge_or_go_on(code, headers, reachable, expected):
    """RFC 2617 §3.2.1: no credentials or an expired nonce get a fresh challenge
    (stale=true when only the nonce was old)."""
    assert outcome(code, headers, reachable) == expected


@pytest.mark.parametrize("code", [AUTH_INVALID_PASSWORD, AUTH_USER_UNKNOWN])
def test_wrong_password_and_unknown_user_get_the_same_403(code):
    """No user enumeration by code: both are 403."""
    result = outcome(code)
    assert isinstance(result, Reply) and (result.code, result.reason) == (403, "Forbidden")
    assert "secret" not in result.log


@pytest.mark.parametrize("header", ['Digest garbage', 'Basic YWxpY2U6c2VjcmV0', 'Digest username="alice"',
                                    'Digest username="alice", realm="example.com", nonce="abc", uri="sip:x", '
                                    'response="1", qop'])
def test_malformed_credentials_get_400(header):
    result = outcome(AUTH_ERROR, (header,), True)
    assert isinstance(result, Reply) and result.code == 400
    assert not credentials_readable(header)


def test_database_that_does_not_answer_is_500_never_200():
    for reachable in (False, None):
        result = outcome(AUTH_ERROR, (GOOD,), reachable)
        assert isinstance(result, Reply) and (result.code, result.reason) == (500, "Server Internal Error")


@pytest.mark.parametrize(("user", "realm", "to_user", "to_domain", "refused"), [
    ("alice", "example.com", "alice", "example.com", False),
    ("alice", "EXAMPLE.com", "alice", "example.com", False),
    ("alice", "example.com", "bob", "example.com", True),
    ("alice", "example.com", "Alice", "example.com", True),  # user parts are case-sensitive (RFC 3261 §19.1.4)
    ("alice", "example.com", "alice", "example.net", True),
])
def test_only_the_owner_registers_an_aor(user, realm, to_user, to_domain, refused):
    """RFC 3261 §10.3 step 3: the authenticated user must be allowed to modify the AOR."""
    refusal = register_owner_refusal(Authorized(user, realm), to_user, to_domain)
    assert (refusal is not None and refusal.code == 403) is refused
    if refused:
        assert f"{user}@{realm}" in refusal.log and f"{to_user}@{to_domain}" in refusal.log


INSTANCE = "urn:uuid:00000000-0000-4000-8000-000000000001"
STORED = [Binding(f"r{n}", f"sip:a@192.0.2.{n}", instance="" if n else normalize_instance(f"<{INSTANCE}>"),
                  reg_id=0 if n else 1, callid="c", cseq=1)
          for n in range(3)]


def contacts(*texts):
    return tuple(parse_name_addr(t) for t in texts)


@pytest.mark.parametrize(("incoming", "added"), [
    (contacts("<sip:a@192.0.2.1>"), 0),  # a refresh of a plain binding
    (contacts(f'<sip:a@198.51.100.1>;+sip.instance="<{INSTANCE}>";reg-id=1'), 0),  # same instance key
    (contacts(f'<sip:a@198.51.100.1>;+sip.instance="<{INSTANCE}>";reg-id=2'), 1),  # another flow
    (contacts("<sip:a@192.0.2.99>", "<sip:a@192.0.2.98>"), 2),
    (contacts("<sip:a@192.0.2.99>;expires=0"), 0),  # a removal adds nothing
    (contacts("*"), 0),
])
def test_bindings_a_register_would_add(incoming, added):
    assert bindings_added(STORED, incoming, 600, 3600) == added


@pytest.mark.parametrize(("stored", "adding", "limit", "refused"), [
    (9, 1, 10, False), (10, 1, 10, True), (10, 0, 10, False), (50, 5, 0, False),
])
def test_the_contact_past_max_contacts_gets_403(stored, adding, limit, refused):
    refusal = over_contact_limit(stored, adding, limit)
    assert (refusal is not None and refusal.code == 403) is refused


def test_credentials_kamailio_reads_no_user_from_are_400_not_500():
    """A Digest header our reader accepts but Kamailio's parser refuses (a trailing
    comma): no user came out of it, so it is the header, not the database."""
    result = auth_outcome(AUTH_ERROR, user="", realm="example.com", headers=(GOOD + ",",), db_reachable=None)
    assert isinstance(result, Reply) and result.code == 400
