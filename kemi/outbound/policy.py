"""Does outbound apply? Decisions for the edge (RFC 5626 §5.1) and registrar (§6).

Pure functions of a request snapshot; no Kamailio, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decisions import PathKind, Reply, SaveBinding
from .errors import SipSyntaxError
from .sipmsg import NameAddr, parse_delta_seconds, parse_uint

REG_ID_MAX = 2**31 - 1
REG_ID_DIGITS = len(str(REG_ID_MAX))  # ten: a longer reg-id is out of range whatever it says


@dataclass(frozen=True, slots=True)
class RegisterView:
    """What outbound needs to know about one REGISTER."""

    first_hop: bool  # sipmsg.Headers.first_hop
    contacts: tuple[NameAddr, ...]
    paths: tuple[NameAddr, ...]
    expires_header: int | None
    supported: frozenset[str]
    required: frozenset[str] = frozenset()


# Option tags this registrar understands in a REGISTER's Require (RFC 3261 §10.3
# step 2, §8.2.2.3): Path (RFC 3327), outbound (RFC 5626) and GRUU (RFC 5627
# §5.1: understood even where none is given out, WITH_NOGRUU).
REGISTRAR_EXTENSIONS = frozenset({"path", "outbound", "gruu"})


def edge_path_kind(first_hop: bool, contacts: tuple[NameAddr, ...], force_outbound: bool) -> PathKind:
    """RFC 5626 §5.1: a REGISTER whose Contact has ``reg-id``, received as first hop,
    gets a flow token and ``;ob`` in the Path. ``force_outbound``
    makes the edge treat every REGISTER as an outbound one from a first hop (for
    edges behind a load balancer that adds its own Via, checklist D5)."""
    if force_outbound:
        return PathKind.FLOW
    if first_hop and any("reg-id" in c.params for c in contacts):
        return PathKind.FLOW
    return PathKind.PLAIN


# RFC 5626 §4.4.1: without Flow-Timer a UA sends TCP/TLS keepalives every 95-120 s
DEFAULT_STREAM_KEEPALIVE = 120


def idle_lifetime(flow_timer_header: str | None, grace_seconds: int) -> int:
    """How long an edge keeps a device's TCP/TLS flow without traffic (RFC 5626
    §5.4: longer than Flow-Timer): the Flow-Timer of the registrar's 2xx, which
    is what the device keeps alive by, plus the grace; without one (or an
    unreadable one), the longest interval a UA uses then (§4.4.1)."""
    try:
        seconds = parse_uint((flow_timer_header or "").strip(), "Flow-Timer", 10)
    except SipSyntaxError:
        seconds = DEFAULT_STREAM_KEEPALIVE
    return (seconds if seconds > 0 else DEFAULT_STREAM_KEEPALIVE) + grace_seconds


def has_instance(contact: NameAddr) -> bool:
    value = contact.params.get("+sip.instance")
    return bool(value and value.strip('"<> '))


def contact_expiry(contact: NameAddr, expires_header: int | None, default_expires: int) -> int:
    value = contact.params.get("expires")
    if value is not None:
        return parse_delta_seconds(value)  # type: ignore[return-value]  # a str gives an int
    return default_expires if expires_header is None else expires_header


def reg_id_value(contact: NameAddr) -> int | None:
    """The reg-id of a Contact, validated against RFC 5626 §10 (1..2^31-1)."""
    if "reg-id" not in contact.params:
        return None
    text = (contact.params["reg-id"] or "").strip('"')  # a bare ";reg-id" has no value: invalid
    value = parse_uint(text, "reg-id", REG_ID_DIGITS)  # never int() on 5000 digits
    if not 1 <= value <= REG_ID_MAX:
        raise SipSyntaxError(f"reg-id {text!r} outside 1..{REG_ID_MAX}")
    return value


def registrar_decision(
    view: RegisterView, *, default_expires: int, flow_timer: int, holds_flows: bool = True
) -> Reply | SaveBinding:
    """Validate a REGISTER at the registrar and decide whether outbound applies.

    Order of the checks (each one cites its rule):
    * an option tag in Require that we lack: 420 with Unsupported (RFC 3261
      §10.3 step 2, §8.2.2.3);
    * ``Contact: *`` only alone and with ``Expires: 0`` (RFC 3261 §10.3 step 6);
    * Path without ``Supported: path`` is stored all the same (RFC 3327 §5.3
      lets local policy accept it; most phones never send the tag, and the
      registrar module's lazy path_mode echoes Path only to a UA that does);
    * reg-id must be 1..2^31-1 when it counts (with +sip.instance; §10): 400;
      reg-id without +sip.instance is ignored (§6);
    * more than one Contact with non-zero expiry when one has reg-id: 400 (§6);
    * not first hop and the top Path lacks ``ob``: no outbound; 439 when the UA
      also sent ``Supported: outbound``, otherwise reg-id is ignored (§6). A
      registrar that cannot send over a device's own connection
      (``holds_flows`` False: the registrar role, which serves devices through
      edges) is a first hop without outbound support, as §6 and §11.6 mean
      439: it never claims a flow it cannot use (checklist A3.8);
    * outbound applied: ``Require: outbound`` and ``Flow-Timer`` (§6, §5.4),
      only when the UA sent ``Supported: outbound`` (RFC 3261 §8.2.2.3).
    """
    unknown = view.required - REGISTRAR_EXTENSIONS
    if unknown:
        listed = ", ".join(sorted(unknown))
        return Reply(420, "Bad Extension", f"Require lists {listed[:80]!r}, which this registrar lacks",
                     headers=(f"Unsupported: {listed}",), cause="unsupported_extension")
    contacts = view.contacts
    if not contacts:
        return SaveBinding(outbound=False)
    if any(c.star for c in contacts):
        if len(contacts) != 1 or view.expires_header != 0:
            return Reply(400, "Invalid Contact *", "Contact: * needs to be alone with Expires: 0",
                         cause="bad_contact_star")
        return SaveBinding(outbound=False)
    try:
        expiries = [contact_expiry(c, view.expires_header, default_expires) for c in contacts]
    except SipSyntaxError as exc:
        return Reply(400, "Bad Request", str(exc), cause="bad_register")
    outbound_contacts = []
    for contact in contacts:
        if not has_instance(contact) or "reg-id" not in contact.params:
            continue
        try:
            reg_id_value(contact)
        except ValueError:
            return Reply(
                400, "Invalid reg-id",
                f"reg-id {contact.params.get('reg-id')!r} outside 1..{REG_ID_MAX}",
                cause="bad_reg_id",
            )
        outbound_contacts.append(contact)
    if not outbound_contacts:
        return SaveBinding(outbound=False)
    if sum(1 for e in expiries if e > 0) > 1:
        return Reply(400, "Multiple Contacts with reg-id", "more than one live Contact with reg-id",
                     cause="multiple_reg_id")
    edge_ob = bool(view.paths) and "ob" in view.paths[0].sip_uri.params
    if not ((view.first_hop and holds_flows) or edge_ob):
        if "outbound" in view.supported:
            return Reply(439, "First Hop Lacks Outbound Support", "reg-id via an edge without ;ob",
                         cause="first_hop_lacks_outbound")
        return SaveBinding(outbound=False, ignore_reg_id=True)
    if "outbound" not in view.supported:
        # a server never requires an extension the request did not declare
        # (RFC 3261 §8.2.2.3); Flow-Timer goes only with Require: outbound (§5.4)
        return SaveBinding(outbound=True)
    headers = ["Require: outbound"]
    if flow_timer > 0 and any(e > 0 for e in expiries):
        headers.append(f"Flow-Timer: {flow_timer}")
    return SaveBinding(outbound=True, reply_headers=tuple(headers))
