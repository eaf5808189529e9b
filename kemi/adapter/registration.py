"""REGISTER handling shared by the registrar and single-server roles (RFC 5626 §6).

The decisions are the core's (``outbound.policy.registrar_decision``: does
outbound apply; ``outbound.refresh.save_plan``: CSeq order, which binding a
new Call-ID replaces, the contact limit, the "received" of a first-hop
REGISTER); this module reads the REGISTER and usrloc and carries them out.

Every REGISTER is saved without Kamailio's reply: a refusal is Kamailio's own
answer (reg_send_reply), without our outbound headers; a 2xx gets them, the
Path echoed (RFC 3327 §5.3, only to a UA that supports it) and, for a
REGISTER that asks for GRUUs (RFC 5627 §4.1, ``outbound.gruu.wanted``), is
ours: the Contact list as Kamailio writes it plus ``pub-gruu`` and
``temp-gruu`` (``outbound.gruu.register_answer``; Kamailio's own GRUUs do not
meet §5.1, docs/design.md "GRUU").
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


def decide(config: Config, view: RegisterView, *, holds_flows: bool) -> Reply | SaveBinding:
    """``holds_flows``: this role sends over a first-hop device's own connection
    (single server); the registrar role does not (outbound.policy.registrar_decision)."""
    return registrar_decision(view, default_expires=config.default_expires, flow_timer=config.flow_timer,
                              holds_flows=holds_flows)


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
    if plan.replace:
        usrloc.drop_lingering(table, aor, plan.replace)
    if plan.received:
        KSR.pv.sets(RECEIVED_AVP, plan.received)
    if decision.outbound:
        KSR.setbflag(FLB_OUTBOUND)
    if KSR.registrar.save(table, SAVE_NO_REPLY) < 0:
        # the registrar's own error answer, without Require: outbound / Flow-Timer:
        # those belong to a 2xx only (RFC 5626 §5.4, §6)
        KSR.notice(f"kemi-outbound: registrar refused REGISTER for {aor}\n")
        KSR.registrar.reg_send_reply()
        return False
    for header in (*decision.reply_headers, *path_echo(view)):
        KSR.hdr.append_to_reply(header + "\r\n")
    if gruus is not None and gruu.wanted(view.supported, view.required):
        _answer_with_gruus(table, aor, gruus)
    else:
        KSR.registrar.reg_send_reply()
    return True


def path_echo(view: RegisterView) -> tuple[str, ...]:
    """RFC 3327 §5.3: the 2xx repeats the Path of this registration, to a UA
    that said Supported: path only (the registrar module sends no Path itself
    when save() leaves the reply to reg_send_reply)."""
    if not view.paths or "path" not in view.supported:
        return ()
    return ("Path: " + ", ".join(format_name_addr(path) for path in view.paths),)


def _answer_with_gruus(table: str, aor: str, gruus: gruu.TempGruuCodec) -> None:
    """The 2xx of a saved REGISTER that asked for GRUUs (RFC 5627 §5.2): the
    Contact list as usrloc has it now, with pub-gruu and temp-gruu."""
    answer = gruu.register_answer(usrloc.bindings(table, aor), to_uri=aor, now=int(time.time()), codec=gruus,
                                  nonce=secrets.token_bytes)
    known = gruu.aor_of(aor)
    for instance in answer.instances if known is not None else ():
        usrloc.remember_gruu(known, instance)
    if answer.contact:
        KSR.hdr.append_to_reply(f"Contact: {answer.contact}\r\n")
    KSR.sl.send_reply(200, "OK")


def current() -> tuple[Snapshot, RegisterView]:
    snap = snapshot()
    return snap, register_view(snap)
