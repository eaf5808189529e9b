"""What every role's routes object shares: the request prologue and tm plumbing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import KSR

from outbound.addresses import ip_family
from outbound.decisions import Reply
from outbound.errors import ConfigError, SipSyntaxError
from outbound.relay import stray_reply_refusal
from outbound.sipmsg import NameAddr, SipUri, bracket, is_digits, is_hostname

from .names import BAN_DEFINE, BAN_TABLE, NOPIKE_SWITCH
from .runtime import Runtime, check_fault_injection, define, guarded, send_reply, snapshot

if TYPE_CHECKING:
    from .locator_glue import Locator


# process_maxfwd(): -1 the value is 0 (483), -2 the header cannot be parsed (400)
MAXFWD_UNPARSABLE = -2

# Flood limit (docs/operations.md, "Flood limits"): pike counts requests per
# source address; a source it calls too busy is put in this htable (cfg/*.cfg)
# for KO_PIKE_BAN seconds and its requests are dropped without an answer.
MAX_BAN_SECONDS = 86400


def flood_ban_seconds() -> int | None:
    """How long a flooding source is banned, or None when the flood limit is
    off (``-A WITH_NOPIKE``, or a cfg that loads no pike/htable module)."""
    if KSR.kx.ifdef(NOPIKE_SWITCH):  # (get_def says "" for a define that is not there)
        KSR.info("kemi-outbound: flood limit off (WITH_NOPIKE)\n")
        return None
    if not (hasattr(KSR, "pike") and hasattr(KSR, "htable")):
        KSR.warn("kemi-outbound: flood limit off: the pike and htable modules are not loaded\n")
        return None
    text = define(BAN_DEFINE) or ""
    if not is_digits(text) or not 1 <= int(text) <= MAX_BAN_SECONDS:
        exc = ConfigError("(cfg define)", BAN_DEFINE, f"must be 1..{MAX_BAN_SECONDS} seconds, got {text!r}")
        KSR.err(f"kemi-outbound: configuration error: {exc}\n")
        raise exc
    KSR.info(f"kemi-outbound: flood limit on: a source pike finds too busy is banned for {text} s\n")
    return int(text)


def names_us(route: NameAddr) -> bool:
    """A Route entry names this Kamailio (host, port, transport)."""
    uri = route.sip_uri
    port = f":{uri.port}" if uri.port else ""
    transport = f";transport={uri.params['transport']}" if uri.params.get("transport") else ""
    return KSR.is_myself(f"sip:{uri.host}{port}{transport}") > 0


class BaseRoutes:
    """The object app_python3 calls for every message (``mod_init`` returns it)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.ban_seconds = flood_ban_seconds()

    def child_init(self, rank: int) -> int:
        return 0

    @guarded
    def ksr_request_route(self, msg: Any) -> int:
        if self.ban_seconds is not None and not self.flood_check(self.ban_seconds):
            return 1  # dropped without an answer: replying to a flood amplifies it
        maxfwd = KSR.maxfwd.process_maxfwd(10)
        if maxfwd < 0:
            # the module reads an empty Max-Forwards as 0; RFC 3261 §25.1 says 1*DIGIT
            value = str(KSR.pv.get("$hdr(Max-Forwards)") or "").strip()
            if maxfwd == MAXFWD_UNPARSABLE or not is_digits(value):
                send_reply(Reply(400, "Bad Max-Forwards", f"Max-Forwards {value[:20]!r} is not a number"))
            else:
                send_reply(Reply(483, "Too Many Hops", "Max-Forwards exhausted"))
            return 1
        # 1511 + 512: Proxy-Require is checked too (RFC 3261 §16.3 step 4: 420 with
        # Unsupported for an extension we lack, which is every one)
        if KSR.sanity.sanity_check(2023, 7) < 0:
            KSR.notice(f"kemi-outbound: malformed request from {KSR.kx.get_srcip()}\n")
            return 1
        check_fault_injection(self.runtime)
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self._relay()
            else:
                # RFC 3261 §9.2: nothing to cancel here; say so rather than drop it
                send_reply(Reply(481, "Call/Transaction Does Not Exist", "CANCEL matches no transaction"))
            return 1
        if KSR.siputils.has_totag() > 0:
            return self._within_dialog()
        if KSR.tm.t_check_trans() == 0:
            return 1  # a retransmission, absorbed by tm
        if KSR.is_REGISTER():
            return self.register()
        return self._initial()

    def flood_check(self, ban_seconds: int) -> bool:
        """False when the request must be dropped: its source is banned, or pike
        finds it sends too many and it is neither trusted nor ourselves. A new
        ban is logged once (the worker whose increment made the entry)."""
        src = KSR.kx.get_srcip()
        if (KSR.htable.sht_get(BAN_TABLE, src) or 0) > 0:
            return False
        if KSR.pike.pike_check_req() > 0:
            return True
        if self.trusted_source() or KSR.is_myself(f"sip:{bracket(src)}"):
            return True
        if KSR.htable.sht_inc(BAN_TABLE, src) == 1:
            KSR.htable.sht_setex(BAN_TABLE, src, ban_seconds)
            KSR.notice(f"kemi-outbound: flood from {src}: banned for {ban_seconds} s, "
                       "its requests are dropped without an answer\n")
        return False

    def trusted_source(self) -> bool:
        """True when the current request comes from a peer that may send more
        than the flood limit (asked only once pike finds the source too busy)."""
        return False

    def register(self) -> int:
        raise NotImplementedError

    def _initial(self) -> int:
        raise NotImplementedError

    def _within_dialog(self) -> int:
        if KSR.rr.loose_route() > 0:
            if self._locate_next_hop():
                self._relay()
            return 1
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self._relay()
            return 1
        send_reply(Reply(404, "Not Found", "in-dialog request without a route"))
        return 1

    def dialog_locator(self) -> Locator | None:
        """This role's RFC 3263 locator: the edge's own, the home proxy's."""
        found = getattr(self, "locator", None)
        if found is None:
            found = getattr(getattr(self, "home", None), "locator", None)
        return found

    def _locate_next_hop(self) -> bool:
        """A Route entry naming a host by name (an edge that advertises a
        hostname, RFC 3327 / RFC 3261 §16.12) is resolved by our locator, like
        the Path at the first request (RFC 3263), never by Kamailio's own
        resolver. False (after a reply and a log line) when nothing is found."""
        locator = self.dialog_locator()
        next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
        if locator is None or not next_hop:
            return True
        try:
            uri = SipUri.parse(next_hop)
        except SipSyntaxError:
            return True  # tm answers what it cannot send to
        host = uri.params.get("maddr") or uri.host
        if ip_family(host.strip("[]")) is not None:
            return True
        if not is_hostname(host):
            # neither an IP nor a host name (RFC 3261 §25.1): nothing to ask DNS about
            send_reply(Reply(400, "Bad Route", f"next hop {next_hop[:80]!r} names no host"))
            return False
        found = locator.plan(next_hop)
        if not found.targets:
            send_reply(Reply(503, "Service Unavailable", f"cannot locate the next hop {next_hop}: {found.describe()}"))
            return False
        uris = [target.uri for target in found.targets]
        health = getattr(getattr(self, "home", None), "health", None)
        if health is not None:
            uris = health.order(uris)  # an edge address that did not answer lately goes last
        KSR.setdsturi(uris[0])
        return True

    def _relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            # a transport error counts as a 503 from the next hop (RFC 3261 §16.9) and a
            # proxy whose only answer is a 503 sends 500 (§16.7 step 6); sl_reply_error()
            # would say "500 No error" here
            next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
            send_reply(Reply(500, "Next Hop Unreachable", f"could not send to {next_hop[:100]!r}"))

    @guarded
    def ksr_reply_route(self, msg: Any) -> int:
        """A reply that matches none of our transactions (a 2xx retransmission, a
        stray reply) goes on statelessly along its Via, as RFC 3261 §16.7 says."""
        if KSR.tm.t_check_trans() < 0:
            vias = snapshot().headers.values("via")
            refusal = stray_reply_refusal(vias[1] if len(vias) > 1 else None)
            if refusal is not None:
                KSR.notice(f"kemi-outbound: reply {KSR.kx.get_status()} from {KSR.kx.get_srcip()} "
                           f"matches no transaction: dropped, {refusal}\n")
                KSR.set_drop()
                return 1
            KSR.info(f"kemi-outbound: reply {KSR.kx.get_status()} from {KSR.kx.get_srcip()} "
                     "matches no transaction: forwarded statelessly\n")
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1


class HomeProxyCallbacks:
    """tm callbacks of a role that forks to registered flows (``self.home``)."""

    home: Any

    @guarded
    def ksr_branch_outbound(self, msg: Any) -> int:
        self.home.branch_route()
        return 1

    @guarded
    def ksr_branch_failure_outbound(self, msg: Any) -> int:
        self.home.outbound_next_contact()
        return 1

    @guarded
    def ksr_failure_outbound(self, msg: Any) -> int:
        self.home.failure_route()
        return 1
