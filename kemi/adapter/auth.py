"""Digest authentication at the registrar and home proxy, on Kamailio's auth +
auth_db modules (RFC 3261 §22; docs/security.md, "Authentication").

REGISTER is challenged with 401 in the realm of its To domain, and the user
must own that AOR; initial requests toward registered users are challenged with
407 in the realm of their From domain, unless they come from a trusted core peer
(``auth.trusted_peers``). In-dialog requests, ACK and CANCEL never are. The edge
holds no credentials: it passes Authorization / Proxy-Authorization through.
"""

from __future__ import annotations

import KSR

from outbound.authz import AUTH_ERROR, Authorized, Challenge, auth_outcome, register_owner_refusal
from outbound.decisions import Reply

from .locator_glue import PeerGate
from .names import NOAUTH_SWITCH
from .runtime import send_reply

SUBSCRIBER_TABLE = "subscriber"
CHALLENGE_QOP = 1  # auth_challenge flags: qop=auth
CHALLENGE_STALE = 16  # ... and stale=true


def _text(name: str) -> str:
    value = KSR.pv.get(name)
    return value if isinstance(value, str) else ""


class Authenticator:
    """Challenges and checks; off (with a warning) under ``-A WITH_NOAUTH``."""

    def __init__(self, role: str, trusted_peers: PeerGate | None = None) -> None:
        self.enabled = not KSR.kx.ifdef(NOAUTH_SWITCH)
        self.trusted_peers = trusted_peers
        if not self.enabled:
            KSR.warn(f"kemi-outbound {role}: AUTHENTICATION IS OFF (WITH_NOAUTH): anyone may register any AOR "
                     "and call through this server; for labs only\n")

    def _check(self, realm: str, header: str) -> Authorized | None:
        """auth_db's check in ``realm``; None when a reply (challenge, 403, 400,
        500) has been sent, with its log line."""
        code = KSR.auth_db.auth_check(realm, SUBSCRIBER_TABLE, 0)
        user = _text("$au")
        reachable = None
        if code == AUTH_ERROR and user:
            # "error" is a nonce we did not issue (another secret, garbage) or a
            # database that does not answer: ask the database a plain question
            probe = KSR.auth_db.is_subscriber(f"sip:{user}@{realm}", SUBSCRIBER_TABLE, 3)
            reachable = probe != AUTH_ERROR
        outcome = auth_outcome(code, user=user, realm=realm, headers=[_text(f"$hdr({header})")],
                               db_reachable=reachable)
        if isinstance(outcome, Authorized):
            return outcome
        if isinstance(outcome, Challenge):
            KSR.info(f"kemi-outbound: challenging {KSR.kx.get_method()} from {KSR.kx.get_srcip()} "
                     f"in realm {realm} ({outcome.why})\n")
            flags = CHALLENGE_QOP | (CHALLENGE_STALE if outcome.stale else 0)
            if KSR.auth.auth_challenge(realm, flags) < 0:
                send_reply(Reply(500, "Server Internal Error", "could not build the digest challenge",
                                 cause="auth_unavailable"))
        else:
            send_reply(outcome)
        return None

    def register(self) -> bool:
        """A REGISTER may go on to save(): its digest verified and its user owns the
        AOR in To (else 401/403/400/500 has been sent). ``Contact: *`` removal
        therefore needs the owner too."""
        if not self.enabled:
            return True
        to_domain = _text("$td")
        auth = self._check(to_domain, "Authorization")
        if auth is None:
            return False
        refusal = register_owner_refusal(auth, _text("$tU"), to_domain)
        if refusal is not None:
            send_reply(refusal)
            return False
        return True

    def request(self) -> bool:
        """An initial request toward registered users may be looked up: from a
        trusted core peer, or with a verified Proxy-Authorization (then consumed:
        the callee never sees the caller's credentials)."""
        if not self.enabled:
            return True
        if self.trusted_peers is not None and self.trusted_peers.enabled \
                and self.trusted_peers.contains(KSR.kx.get_srcip()):
            return True
        if self._check(_text("$fd"), "Proxy-Authorization") is None:
            return False
        KSR.auth.consume_credentials()
        return True
