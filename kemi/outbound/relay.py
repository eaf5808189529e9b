"""Relay policy: what a proxy of ours forwards, and for whom (no open relay).

RFC 3261 §16.3 leaves "may this request be relayed?" to local policy; an edge
proxy (RFC 5626 §5) that relays anything anywhere is an open relay (toll fraud,
a way into internal networks). The rules, one place each:

* **Who is the farm** is decided by the request's transport source address,
  checked against the addresses of the farm's URIs (the registrar URI and
  ``dns.peers``), never by the number of Vias a sender chose to write.
* **Edge** (:func:`edge_step`): a request from a device goes to the home proxy
  farm and nowhere else (initial requests) or, inside a dialog, only toward a
  farm next hop; a flow token sends a request *to* a device flow only when the
  farm sent it (RFC 5626 §5.3.1 incoming); from the very flow it names the token
  only marks the request as outgoing (§5.3.2). Requests from the farm go to the
  device flow of their token or onward as the farm's Route set says.
* **Registrar** (:func:`path_refusal`): a Path is stored only as a trusted edge
  wrote it (RFC 3327 §5.3: the registrar stores what it received; here it must
  come from the edge the top entry names).
* **Single server** (:func:`dialog_seal`): in-dialog requests are relayed only
  when they carry our own Record-Route entry sealed for their Call-ID, i.e. the
  dialog passed this server's initial-request policy.

Pure: addresses, keys and the decision of ``routing.route_decision`` are passed in.
"""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from .decisions import Reply
from .errors import SipSyntaxError
from .routing import Outgoing, RouteDecision, ToFlow
from .sipmsg import parse_params, split_hostport

SEAL_PARAM = "ko"
# single server: ko_flows holds "<conn id> <aor> ..." per connection, bounded so
# that one connection cannot grow a shared-memory string with every AOR it
# registers (the next AOR over it is refused 403)
MAX_AORS_PER_FLOW = 16
MAX_FLOW_ENTRY = 4096
SEAL_BYTES = 9  # 72 bits: 12 URI-safe characters


@dataclass(frozen=True, slots=True)
class ToHome:
    """Send the request on to the home proxy farm (record-routed first)."""


@dataclass(frozen=True, slots=True)
class Onward:
    """Ordinary routing (loose_route, RFC 3261 §16.4); ``farm_only``: the next
    hop it gives must be one of the farm's addresses or names."""

    farm_only: bool


EdgeStep = Reply | ToFlow | ToHome | Onward


def edge_step(decision: RouteDecision, *, from_farm: bool, in_dialog: bool, first_hop: bool) -> EdgeStep:
    """What the edge does with a request, after ``route_decision`` read its tokens.

    * a ``Reply`` (a forged token: 403) stands;
    * ``ToFlow`` (a token names a flow that is not the request's source) only
      from the farm; from anyone else it is a token replayed from a Path or a
      Record-Route, refused 403 (RFC 5626 §5.3.1 SHOULD 403 for tokens that
      fail, and no token of another device may steer a device's request);
    * from the farm: an initial request as first hop (a farm node's own request)
      or outgoing over a flow goes home as a device's would, anything else on
      as the farm's Route set says;
    * from a device: initial requests go home, in-dialog requests on toward a
      farm next hop only.
    """
    if isinstance(decision, Reply):
        return decision
    if isinstance(decision, ToFlow):
        if from_farm:
            return decision
        return Reply(403, "Forbidden", f"flow token for {decision.flow} from outside the farm (replayed?)",
                     cause="replayed_token")
    if from_farm:
        if in_dialog:
            return Onward(farm_only=False)
        if first_hop or isinstance(decision, Outgoing):
            return ToHome()
        return Onward(farm_only=False)
    if in_dialog:
        return Onward(farm_only=True)
    return ToHome()


def single_step(decision: RouteDecision, *, from_peer: bool, in_dialog: bool, sealed: bool) -> EdgeStep:
    """The single server's policy: it is the farm itself, so devices' initial
    requests go to its home proxy (``ToHome``: lookup, where an unknown AOR gets
    404 and nothing leaves); a token steers an initial request straight to a
    flow only from a peer (``dns.peers``); an in-dialog request is relayed only
    when our Record-Route entry in its Route is sealed for its Call-ID (or a
    peer sent it), wherever its tokens point."""
    if isinstance(decision, Reply):
        return decision
    if in_dialog:
        if not (sealed or from_peer):
            return Reply(403, "Forbidden", "in-dialog request without our sealed Record-Route (not a dialog of ours)",
                         cause="relay_unsealed_dialog")
        return decision if isinstance(decision, ToFlow) else Onward(farm_only=False)
    if isinstance(decision, ToFlow) and not from_peer:
        return Reply(403, "Forbidden", f"flow token for {decision.flow} in an initial request from a device",
                     cause="token_from_device")
    return decision if isinstance(decision, ToFlow) else ToHome()


def farm_dialog_refusal(*, has_routes: bool, sealed: bool, top_route: str = "") -> Reply | None:
    """The registrar / home proxy relays an in-dialog request only along a
    Route set of ours: one of our leading entries sealed for the Call-ID
    (:func:`dialog_seal`), so the farm is no open relay. Without a Route the
    request is for us (loose_route finds nothing: 404 or the ACK absorbed)."""
    if not has_routes or sealed:
        return None
    return Reply(403, "Forbidden", f"in-dialog request without our sealed Record-Route (top Route {top_route[:80]!r})",
                 cause="relay_unsealed_dialog")


def replication_refusal(source_ip: str, *, from_farm: bool) -> Reply | None:
    """KDMQ requests (the registrar pair's replication, dmq_usrloc) write
    bindings straight into usrloc: only the farm's registrars may send them
    (``from_farm``: the source is a configured peer or a node DMQ knows).
    Anyone else could register any AOR anywhere: 403."""
    if from_farm:
        return None
    return Reply(403, "Forbidden", f"KDMQ from {source_ip}, not a registrar of this farm", cause="relay_kdmq_stranger")


def flow_room_refusal(aors_on_flow: Sequence[str], aor: str, conn_id: int) -> Reply | None:
    """Single server: one connection carries at most MAX_AORS_PER_FLOW AORs
    (and MAX_FLOW_ENTRY characters of them), so that one device cannot grow a
    shared-memory entry with every AOR it registers; the next one is 403."""
    if aor in aors_on_flow:
        return None
    entry = " ".join([str(conn_id), *aors_on_flow, aor])
    if len(aors_on_flow) >= MAX_AORS_PER_FLOW or len(entry) > MAX_FLOW_ENTRY:
        return Reply(403, "Too Many AORs On This Flow",
                     f"connection {conn_id} already carries {len(aors_on_flow)} AORs (at most {MAX_AORS_PER_FLOW})",
                     cause="relay_too_many_aors")
    return None


def foreign_route_refusal(foreign: int, *, next_is_farm: bool) -> Reply | None:
    """RFC 3261 §16.4: a proxy takes only its own entries off the Route set; a
    preloaded Route set goes on. Under the relay policy an initial request (or
    REGISTER) of a device may only go to the farm: what is left after our own
    entries must start at the farm (an edge's next hop), and the home proxy is
    the end of it (``next_is_farm`` False there). Refused 403, never dropped."""
    if foreign == 0 or next_is_farm:
        return None
    return Reply(403, "Forbidden", f"Route set goes on past us ({foreign} entries) to a hop outside the farm",
                 cause="relay_route_past_us")


def next_hop_refusal(host: str, *, host_is_ip: bool, ip_in_farm: bool, farm_names: frozenset[str]) -> Reply | None:
    """A device's in-dialog request may go only to the farm: the next hop's
    host must be a farm address (an IP) or one of the farm's configured names
    (which we resolve ourselves; a name the sender chose is never looked up)."""
    if host_is_ip:
        if ip_in_farm:
            return None
    elif host.lower().rstrip(".") in farm_names:
        return None
    return Reply(403, "Forbidden", f"in-dialog request from a device toward {host[:80]!r}, which is not the farm",
                 cause="relay_not_farm")


def path_refusal(top_path_host: str | None, *, source_ip: str, host_addresses: Sequence[str],
                 trusted_source: bool | None) -> Reply | None:
    """RFC 3327 §5.3 with RFC 5626 §6: a REGISTER's Path is stored only when a
    trusted edge wrote it. ``trusted_source`` is the answer of the configured
    edge list (``registrar.trusted_edges``), None when none is configured; then
    the top Path entry must name the sender (``host_addresses``: its host's
    addresses, the IP itself for an IP literal): an edge adds itself to Path and
    sends from that address, a device that writes Path does not."""
    if top_path_host is None:
        return None
    if trusted_source is not None:
        if trusted_source:
            return None
        return Reply(403, "Forbidden", f"Path from {source_ip}, which is no trusted edge (registrar.trusted_edges)",
                     cause="relay_untrusted_path")
    if source_ip in host_addresses:
        return None
    return Reply(403, "Forbidden",
                 f"Path names {top_path_host[:80]!r} but the REGISTER came from {source_ip}: not written by that edge",
                 cause="relay_untrusted_path")


def stray_reply_refusal(next_via: str | None) -> str | None:
    """RFC 3261 §16.11: a reply that matches no transaction goes statelessly to
    its next Via; why not (a log line), or None when it may. Never toward a
    broadcast, multicast or unspecified address (RFC 4475 §3.3.10), never toward
    a name that would need Kamailio's own resolver (no ``received`` address)."""
    if not next_via:
        return "no Via left to send it to"
    sent_by, _, params_text = next_via.partition(";")
    params = parse_params(params_text)
    host = params.get("received") or _via_host(sent_by)
    if not host:
        return f"its next Via {next_via[:80]!r} names no host"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"its next Via names {host[:80]!r}, which would be looked up by Kamailio's resolver"
    if address.is_multicast or address.is_unspecified or str(address) == "255.255.255.255":
        return f"its next Via names {host}, no unicast address"
    return None


def _via_host(sent_by: str) -> str:
    """The host of a Via's ``SIP/2.0/UDP host:port`` (IPv6 without brackets);
    "" when there is none to read."""
    parts = sent_by.strip().split(None, 1)
    if len(parts) != 2:
        return ""
    try:
        return split_hostport(parts[1])[0].strip("[]")
    except SipSyntaxError:
        return ""


# a dialog's seal is made for its Record-Route and checked on each later request
# (ACK, BYE, re-INVITE), in the same process more often than not: computed once
@functools.lru_cache(maxsize=4096)
def _seal_mac(key: bytes, call_id: str) -> str:
    digest = hmac.digest(key, b"ko-dialog\x00" + call_id.encode("utf-8", "surrogateescape"), "sha256")
    return base64.urlsafe_b64encode(digest[:SEAL_BYTES]).decode("ascii")


def dialog_seal(key: bytes, call_id: str) -> str:
    """The value of our Record-Route parameter ``ko`` for a dialog: a MAC of its
    Call-ID with the signing key (the flow-token key)."""
    return _seal_mac(key, call_id)


def seal_valid(keys: Sequence[bytes], call_id: str, value: str | None) -> bool:
    """True when ``value`` (a Route's ``ko`` parameter) seals ``call_id`` under
    one of ``keys`` (rotation: every key verifies)."""
    if not value or len(value) != SEAL_BYTES * 4 // 3:
        return False
    return any(hmac.compare_digest(_seal_mac(key, call_id), value) for key in keys)
