"""Who may do what: digest outcomes, AOR ownership, contact limits (RFC 3261 §22, §10.3).

Kamailio's auth + auth_db modules check the digest (nonce, response, the HA1 in
the subscriber table); these pure functions turn their outcome and the
request's identities into a decision: go on, challenge (401/407, ``stale`` when
the nonce was old), or a final answer. One answer for a wrong password and an
unknown user (403): no user enumeration by code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .decisions import Reply

# auth_db auth_check() / auth module results (auth/api.h, Kamailio 5.6)
AUTH_OK = 1
AUTH_ERROR = -1
AUTH_INVALID_PASSWORD = -2
AUTH_USER_UNKNOWN = -3
AUTH_NONCE_STALE = -4
AUTH_NO_CREDENTIALS = -5
AUTH_NONCE_REUSED = -6
AUTH_USER_MISMATCH = -8


@dataclass(frozen=True, slots=True)
class Authorized:
    """The digest verified for ``user`` in ``realm``."""

    user: str
    realm: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer 401 (REGISTER) or 407 with a fresh nonce; ``stale=true`` when the
    credentials were right but their nonce had expired (RFC 2617 §3.2.1)."""

    stale: bool = False
    why: str = "no credentials"


AuthOutcome = Authorized | Challenge | Reply

# RFC 2617 §3.2.2 / RFC 3261 §25.1: Digest followed by name=value pairs, values a
# token or a quoted string
_PAIR = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)')
REQUIRED = ("username", "realm", "nonce", "uri", "response")


def credentials_readable(text: str) -> bool:
    """An Authorization / Proxy-Authorization body that a digest check can read:
    the Digest scheme, name=value pairs, the five parameters RFC 2617 §3.2.2
    requires. Unreadable credentials are a 400, not a failed login."""
    scheme, _, rest = text.strip().partition(" ")
    if scheme.lower() != "digest" or not rest.strip():
        return False
    names = set()
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PAIR.match(rest, position)
        if match is None or match.end() == position:
            return False
        names.add(match.group(1).lower())
        position = match.end()
    return all(name in names for name in REQUIRED)


def auth_outcome(code: int, *, user: str, realm: str, headers: Iterable[str],
                 db_reachable: bool | None = None) -> AuthOutcome:
    """The decision for auth_db's ``auth_check`` result ``code``. When the module
    says "error": unreadable credentials (``headers``, the request's credentials)
    are a 400; readable ones with a database that answers (``db_reachable``)
    carry a nonce we never issued (another secret, a restart without a shared
    secret, garbage): a fresh challenge; otherwise the database failed: 500."""
    if code == AUTH_OK:
        return Authorized(user, realm)
    if code == AUTH_NO_CREDENTIALS:
        return Challenge()
    if code in (AUTH_NONCE_STALE, AUTH_NONCE_REUSED):
        return Challenge(stale=True, why="stale nonce" if code == AUTH_NONCE_STALE else "nonce used before")
    if code in (AUTH_INVALID_PASSWORD, AUTH_USER_UNKNOWN, AUTH_USER_MISMATCH):
        # the same answer for both: whether the user exists is nobody's business
        return Reply(403, "Forbidden", f"authentication failed for {user!r} in {realm!r} "
                     f"({'unknown user' if code == AUTH_USER_UNKNOWN else 'wrong credentials'})", cause="auth_failed")
    present = [h for h in headers if h.strip()]
    if present and (not user or not all(credentials_readable(h) for h in present)):  # Kamailio read no user
        return Reply(400, "Bad Authorization Header", "credentials that are no readable Digest",
                     cause="auth_bad_header")
    if present and db_reachable:
        return Challenge(why="a nonce we did not issue")
    return Reply(500, "Server Internal Error", f"authentication could not be checked (auth_check {code}: "
                 "subscriber database unreachable?)", cause="auth_unavailable")


def register_owner_refusal(auth: Authorized, to_user: str, to_domain: str) -> Reply | None:
    """RFC 3261 §10.3 step 3: the authenticated user must be allowed to modify the
    AOR in To; here, own it (same user, the realm is the AOR's domain)."""
    if auth.user == to_user and auth.realm.lower() == to_domain.lower():
        return None
    return Reply(403, "Forbidden", f"user {auth.user}@{auth.realm} may not register {to_user}@{to_domain}",
                 cause="auth_wrong_aor")


def over_contact_limit(stored: int, adding: int, max_contacts: int) -> Reply | None:
    """A REGISTER that would leave the AOR with more than ``max_contacts``
    bindings is refused; the bindings already there stay."""
    if max_contacts <= 0 or stored + adding <= max_contacts:
        return None
    return Reply(403, "Too Many Contacts",
                 f"{stored} bindings stored, {adding} more would pass the limit of {max_contacts}",
                 cause="auth_too_many_contacts")

