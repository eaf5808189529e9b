"""REGISTER handling shared by the registrar and single-server roles (RFC 5626 §6).

The decisions are the core's (``outbound.policy.registrar_decision``: does
outbound apply; ``outbound.refresh.save_plan``: CSeq order, which binding a
new Call-ID replaces, the contact limit, the "received" of a first-hop
REGISTER); this module reads the REGISTER and usrloc and carries them out.
"""

from __future__ import annotations

import KSR

from outbound.config import Config
from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView, registrar_decision
from outbound.refresh import save_plan
from outbound.sipmsg import bracket, parse_delta_seconds, parse_name_addrs

from . import usrloc
from .names import FLB_OUTBOUND, RECEIVED_AVP
from .runtime import Snapshot, send_reply, snapshot


def register_view(snap: Snapshot) -> RegisterView:
    headers = snap.headers
    return RegisterView(
        first_hop=headers.first_hop,
        contacts=tuple(parse_name_addrs(headers, "contact")),
        paths=tuple(parse_name_addrs(headers, "path")),
        expires_header=parse_delta_seconds(headers.first("expires")),
        supported=headers.option_tags("supported"),
        required=headers.option_tags("require"),
    )


def decide(config: Config, view: RegisterView, *, holds_flows: bool) -> Reply | SaveBinding:
    """``holds_flows``: this role sends over a first-hop device's own connection
    (single server); the registrar role does not (outbound.policy.registrar_decision)."""
    return registrar_decision(view, default_expires=config.default_expires, flow_timer=config.flow_timer,
                              holds_flows=holds_flows)


def save(config: Config, decision: SaveBinding, view: RegisterView, callid: str) -> bool:
    """Save through Kamailio's registrar; True when it accepted the REGISTER."""
    table = config.location_table
    aor = KSR.kx.get_turi()
    came_from = (f"sip:{bracket(KSR.kx.get_srcip())}:{KSR.kx.get_srcport()}"
                 f";transport={str(KSR.kx.get_proto()).lower()}")
    plan = save_plan(view, decision, usrloc.bindings(table, aor), callid=callid, cseq=int(KSR.pv.get("$cs") or 0),
                     came_from=came_from, max_contacts=config.max_contacts, default_expires=config.default_expires)
    if isinstance(plan, Reply):
        send_reply(plan)
        return False
    if plan.contact_header:
        KSR.hdr.remove("Contact")
        KSR.hdr.append(f"Contact: {plan.contact_header}\r\n")
        KSR.textopsx.msg_apply_changes()
        KSR.info(f"kemi-outbound: outbound does not apply to REGISTER for {aor}: reg-id ignored\n")
    for ruid in plan.replace:
        KSR.info(f"kemi-outbound: new Call-ID for a flow of {aor}: replacing binding {ruid} only\n")
        usrloc.unregister(table, aor, ruid)
    if plan.received:
        KSR.pv.sets(RECEIVED_AVP, plan.received)
    if decision.outbound:
        KSR.setbflag(FLB_OUTBOUND)
    for header in decision.reply_headers:
        KSR.hdr.append_to_reply(header + "\r\n")
    if KSR.registrar.save(table, 0) < 0:
        KSR.notice(f"kemi-outbound: registrar refused REGISTER for {aor}\n")
        return False
    return True


def current() -> tuple[Snapshot, RegisterView]:
    snap = snapshot()
    return snap, register_view(snap)
