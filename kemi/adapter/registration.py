"""REGISTER handling shared by the registrar and single-server roles (RFC 5626 §6).

The decisions are the core's (``outbound.policy.registrar_decision``: does
outbound apply; ``outbound.refresh.save_plan``: CSeq order, which binding a
new Call-ID replaces, the contact limit, the "received" of a first-hop
REGISTER); this module reads the REGISTER and usrloc and carries them out.

A REGISTER that asks for GRUUs (RFC 5627 §4.1, ``outbound.gruu.wanted``) is
saved without Kamailio's reply (its own GRUUs do not meet §5.1, docs/design.md
"GRUU"): the 2xx is ours, the Contact list as Kamailio writes it plus
``pub-gruu`` and ``temp-gruu`` (``outbound.gruu.register_answer``), the Path
echoed as Kamailio would (RFC 3327 §5.3, only to a UA that supports it). A
refusal of Kamailio's save is still Kamailio's own answer (reg_send_reply).
"""

from __future__ import annotations

import secrets
import time

import KSR

from outbound import gruu
from outbound.config import Config
from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView, registrar_decision
from outbound.refresh import save_plan
from outbound.sipmsg import bracket, format_name_addr, parse_delta_seconds, parse_name_addrs

from . import usrloc
from .names import FLB_OUTBOUND, RECEIVED_AVP
from .runtime import Snapshot, send_reply, snapshot

# registrar save() flag REG_SAVE_NORPL_FL: store, send no reply (ours follows)
SAVE_NO_REPLY = 0x02


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


def decide(config: Config, view: RegisterView) -> Reply | SaveBinding:
    return registrar_decision(view, default_expires=config.default_expires, flow_timer=config.flow_timer)


def save(config: Config, decision: SaveBinding, view: RegisterView, callid: str, *,
         gruus: gruu.TempGruuCodec | None = None) -> bool:
    """Save through Kamailio's registrar; True when it accepted the REGISTER.
    With ``gruus`` (GRUU on) a REGISTER that asks for GRUUs gets them (RFC 5627 §5)."""
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
    ours = gruus is not None and gruu.wanted(view.supported, view.required)
    if KSR.registrar.save(table, SAVE_NO_REPLY if ours else 0) < 0:
        KSR.notice(f"kemi-outbound: registrar refused REGISTER for {aor}\n")
        if ours:
            KSR.registrar.reg_send_reply()  # Kamailio's answer to what it refused
        return False
    if gruus is not None and ours:
        _answer_with_gruus(table, aor, view, gruus)
    return True


def _answer_with_gruus(table: str, aor: str, view: RegisterView, gruus: gruu.TempGruuCodec) -> None:
    """The 2xx of a saved REGISTER that asked for GRUUs (RFC 5627 §5.2)."""
    answer = gruu.register_answer(usrloc.bindings(table, aor), to_uri=aor, now=int(time.time()), codec=gruus,
                                  nonce=secrets.token_bytes)
    known = gruu.aor_of(aor)
    for instance in answer.instances if known is not None else ():
        usrloc.remember_gruu(known, instance)
    if answer.contact:
        KSR.hdr.append_to_reply(f"Contact: {answer.contact}\r\n")
    if view.paths and "path" in view.supported:
        KSR.hdr.append_to_reply("Path: " + ", ".join(format_name_addr(p) for p in view.paths) + "\r\n")
    KSR.sl.send_reply(200, "OK")


def current() -> tuple[Snapshot, RegisterView]:
    snap = snapshot()
    return snap, register_view(snap)
