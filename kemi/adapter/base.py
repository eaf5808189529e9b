"""What every role's routes object shares: the entries of the shared native routes
(cfg/routing.cfg: the prologue's refusals, the dispatch of a request) and tm plumbing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import KSR

from outbound.decisions import Reply
from outbound.errors import ConfigError
from outbound.relay import SEAL_PARAM, dialog_seal, foreign_route_refusal, seal_valid, stray_reply_refusal
from outbound.routing import toward_endpoint
from outbound.sipmsg import NameAddr, bracket, format_name_addr, is_digits, parse_name_addrs

from .names import BAN_DEFINE, BAN_TABLE, DIALOG_FAILURE_ROUTE, NOPIKE_SWITCH
from .observe import OBSERVER
from .runtime import Runtime, check_fault_injection, define, guarded, send_reply, snapshot, t_reply

if TYPE_CHECKING:
    from .locator_glue import NextHopLocator
    from .replication import ReplicationBus


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


# RFC 3261 §9.2: nothing to cancel here; say so rather than drop it
CANCEL_UNMATCHED = Reply(481, "Call/Transaction Does Not Exist", "CANCEL matches no transaction",
                         cause="cancel_unmatched")


def max_forwards_refusal(maxfwd: int) -> Reply:
    """The answer to a request process_maxfwd refused with ``maxfwd`` (< 0): the
    module reads an empty Max-Forwards as 0, RFC 3261 §25.1 says 1*DIGIT."""
    value = str(KSR.pv.get("$hdr(Max-Forwards)") or "").strip()
    if maxfwd == MAXFWD_UNPARSABLE or not is_digits(value):
        return Reply(400, "Bad Max-Forwards", f"Max-Forwards {value[:20]!r} is not a number",
                     cause="bad_max_forwards")
    return Reply(483, "Too Many Hops", "Max-Forwards exhausted", cause="too_many_hops")


def next_hop_unreachable() -> Reply:
    """t_relay could not send: a transport error counts as a 503 from the next hop
    (RFC 3261 §16.9) and a proxy whose only answer is a 503 sends 500 (§16.7
    step 6); sl_reply_error() would say "500 No error" here."""
    next_hop = str(KSR.pv.get("$du") or "") or KSR.kx.get_ruri()
    return Reply(500, "Next Hop Unreachable", f"could not send to {next_hop[:100]!r}",
                 cause="next_hop_unreachable")


def stray_reply_goes_on() -> bool:
    """A reply that matches none of our transactions (a 2xx retransmission, a
    stray reply) goes on statelessly along its Via, as RFC 3261 §16.7 says,
    unless outbound.relay.stray_reply_refusal says no (False: drop it)."""
    vias = snapshot().headers.values("via")
    refusal = stray_reply_refusal(vias[1] if len(vias) > 1 else None)
    if refusal is not None:
        KSR.notice(f"kemi-outbound: reply {KSR.kx.get_status()} from {KSR.kx.get_srcip()} "
                   f"matches no transaction: dropped, {refusal}\n")
        return False
    KSR.info(f"kemi-outbound: reply {KSR.kx.get_status()} from {KSR.kx.get_srcip()} "
             "matches no transaction: forwarded statelessly\n")
    return True


class DialogSeal:
    """Our Record-Route entries carry a MAC of the Call-ID (outbound.relay.dialog_seal);
    an in-dialog request is relayed only when one of our leading Route entries
    brings a valid one back (the dialog passed our initial-request policy)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = tuple(keys)

    def value(self, call_id: str) -> str:
        return dialog_seal(self.keys[0], call_id)

    def param(self, call_id: str) -> str:
        """The Record-Route parameter for this dialog (``;ko=...``)."""
        return f";{SEAL_PARAM}={self.value(call_id)}"

    def carried_by(self, ours: Sequence[NameAddr], call_id: str) -> bool:
        """One of ``ours`` (the leading Route entries naming us) is sealed for ``call_id``."""
        return any(seal_valid(self.keys, call_id, route.sip_uri.params.get(SEAL_PARAM)) for route in ours)


def leading_own_routes(routes: Sequence[NameAddr], limit: int = 2) -> list[NameAddr]:
    """The Route entries naming us at the top of the Route set (at most ``limit``:
    one, or a double Record-Route pair)."""
    ours = []
    for route in routes[:limit]:
        if not names_us(route):
            break
        ours.append(route)
    return ours


class BaseRoutes:
    """The object whose methods the cfg's routes call with app_python3's
    ``python_exec`` (``mod_init`` returns it)."""

    def __init__(self, runtime: Runtime, next_hops: NextHopLocator | None = None,
                 bus: ReplicationBus | None = None) -> None:
        self.runtime = runtime
        self.ban_seconds = flood_ban_seconds()
        # an in-dialog next hop named by host name is located by our RFC 3263 locator
        self.next_hops = next_hops
        # a registrar pair's KDMQ requests, taken before the flood limit (adapter.replication)
        self.bus = bus

    def child_init(self, rank: int) -> int:
        return 0

    def too_busy_allowed(self, src: str, ban_seconds: int) -> bool:
        """pike finds ``src`` too busy: True when it is trusted or ourselves,
        else False after banning it."""
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

    def initial(self) -> int:
        raise NotImplementedError

    def within_dialog(self) -> int:
        """RFC 3261 §16.4 route processing: on along the Route set."""
        if KSR.rr.loose_route() > 0:
            if self.locate_next_hop():
                self.relay_in_dialog()
            return 1
        return self.unrouted()

    def unrouted(self) -> int:
        """An in-dialog request loose_route found no Route for: the ACK of a
        non-2xx answer is absorbed by tm hop by hop, anything else is 404."""
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return 1
        send_reply(Reply(404, "Not Found", "in-dialog request without a route", cause="dialog_no_route"))
        return 1

    def strip_own_routes(self, next_is_farm: Callable[[NameAddr], bool] | None = None) -> bool:
        """Take our own leading entries off the Route set (RFC 3261 §16.4) and
        keep the rest, when the relay policy lets it go on
        (outbound.relay.foreign_route_refusal); False after a 403."""
        if KSR.hdr.is_present("Route") < 0:
            return True  # the common case, without reading the message again
        routes = parse_name_addrs(snapshot().headers, "route")
        if not routes:
            return True
        rest = routes[len(leading_own_routes(routes)):]
        allowed = bool(rest) and next_is_farm is not None and next_is_farm(rest[0])
        refusal = foreign_route_refusal(len(rest), next_is_farm=allowed)
        if refusal is not None:
            send_reply(refusal)
            return False
        KSR.hdr.remove("Route")
        if rest:
            KSR.hdr.insert("Route: " + ", ".join(format_name_addr(r) for r in rest) + "\r\n")
        return True

    def locate_next_hop(self) -> bool:
        """False (after a reply) when the next hop cannot be located (NextHopLocator)."""
        return self.next_hops is None or self.next_hops.locate()

    def relay_in_dialog(self) -> None:
        """Relay along the dialog's Route set; a 430 coming back goes no further
        as 430 (ksr_failure_dialog)."""
        if not KSR.is_ACK():
            KSR.tm.t_on_failure(DIALOG_FAILURE_ROUTE)
        self.relay()

    @guarded
    def ksr_failure_dialog(self, msg: Any) -> int:
        """tm failure route of a relayed in-dialog request: a 430 from the next
        hop (the flow of the dialog's target is gone) is answered 408
        (outbound.routing.toward_endpoint, RFC 5626 §11.5)."""
        if KSR.tm.t_is_canceled() > 0:
            return 1
        status = int(KSR.pv.get("$T_reply_code") or 0)
        mapped = toward_endpoint(Reply(status, "", "a reply from the next hop", cause="dialog_flow_failed"),
                                 in_dialog=True)
        if mapped.code != status:
            t_reply(mapped, f"in-dialog {KSR.kx.get_method()} (the next hop answered {status})")
        return 1

    def relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            send_reply(next_hop_unreachable())

    # ----- entries of the native cfg (python_exec, cfg/routing.cfg) --------------
    # Kamailio's own engine runs the prologue, the transaction matching and the
    # replies, and enters Python only where outbound decides something or to
    # answer a refusal (every answer of ours goes through send_reply: the
    # decision log and the counters). docs/design.md, "Where Python runs".

    @guarded
    def ksr_kdmq(self, msg: Any) -> int:
        """A KDMQ request (a registrar pair, WITH_DMQ): the peer's go to dmq,
        anyone else's is 403 (adapter.replication)."""
        if self.bus is not None:
            self.bus.handles()
        return 1

    @guarded
    def ksr_register(self, msg: Any) -> int:
        check_fault_injection(self.runtime)
        return self.register()

    @guarded
    def ksr_initial(self, msg: Any) -> int:
        check_fault_injection(self.runtime)
        return self.initial()

    @guarded
    def ksr_within_dialog(self, msg: Any) -> int:
        check_fault_injection(self.runtime)
        return self.within_dialog()

    @guarded
    def ksr_flood(self, msg: Any) -> int:
        """pike finds the source too busy: 1 when it may go on (trusted, or
        ourselves), -1 when it is dropped without an answer (banned now)."""
        if self.ban_seconds is None:
            return 1
        return 1 if self.too_busy_allowed(KSR.kx.get_srcip(), self.ban_seconds) else -1

    @guarded
    def ksr_max_forwards(self, msg: Any, maxfwd: str = "") -> int:
        """process_maxfwd refused the request: ``maxfwd`` is its return code."""
        send_reply(max_forwards_refusal(int(maxfwd) if maxfwd.lstrip("-").isdigit() else -1))
        return 1

    @guarded
    def ksr_cancel_unmatched(self, msg: Any) -> int:
        send_reply(CANCEL_UNMATCHED)
        return 1

    @guarded
    def ksr_relay_failed(self, msg: Any) -> int:
        """The cfg's t_relay could not send."""
        send_reply(next_hop_unreachable())
        return 1

    @guarded
    def ksr_stray_reply(self, msg: Any) -> int:
        """A reply matching none of our transactions: 1 when it goes on, -1 to drop it."""
        return 1 if stray_reply_goes_on() else -1

    def ksr_xhttp_event(self, msg: Any, event: str = "") -> int:
        """xhttp event callback: an HTTP request. Only the metrics socket answers
        HTTP (adapter.observe); on any other socket it is 404 and closed."""
        if not OBSERVER.http_request(flows=False, bindings=self.runtime.config.location_table):
            KSR.hdr.append_to_reply("Connection: close\r\n")
            KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "no HTTP on this socket\n")
        return 1
