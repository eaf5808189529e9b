"""REGISTER handling shared by the registrar and single-server roles (RFC 5626 §6)."""

from __future__ import annotations

import KSR

from outbound.authz import bindings_added, over_contact_limit
from outbound.config import Config
from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView, registrar_decision
from outbound.refresh import StoredBinding, instance_keys, out_of_order, replaced_by_new_call_id
from outbound.sipmsg import NameAddr, bracket, format_name_addr, parse_delta_seconds, parse_name_addrs

from .names import FLB_OUTBOUND, RECEIVED_AVP, STORED_HANDLE
from .runtime import Snapshot, send_reply, snapshot

# registrar module received_avp (cfg/registrar.cfg, cfg/single.cfg)


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


def save(config: Config, decision: SaveBinding, view: RegisterView, callid: str) -> bool:
    """Save through Kamailio's registrar; True when it accepted the REGISTER."""
    table = config.location_table
    contacts = view.contacts
    if decision.ignore_reg_id:
        contacts = _drop_reg_id(contacts)
    aor = KSR.kx.get_turi()
    stored = _stored_bindings(table, aor)
    if not _refresh_in_order(table, aor, stored, contacts, callid):
        return False
    refusal = over_contact_limit(len(stored), bindings_added(stored, contacts, view.expires_header,
                                                            config.default_expires), config.max_contacts)
    if refusal is not None:
        send_reply(refusal)
        return False
    if view.first_hop and not view.paths:
        # first hop without Path: calls go back to where the REGISTER came from
        # (the registrar stores this as "received"; NAT, and no lookup of a name
        # the Contact may carry)
        KSR.pv.sets(RECEIVED_AVP, f"sip:{bracket(KSR.kx.get_srcip())}:{KSR.kx.get_srcport()}"
                                  f";transport={str(KSR.kx.get_proto()).lower()}")
    if decision.outbound:
        KSR.setbflag(FLB_OUTBOUND)
    for header in decision.reply_headers:
        KSR.hdr.append_to_reply(header + "\r\n")
    if KSR.registrar.save(table, 0) < 0:
        KSR.notice(f"kemi-outbound: registrar refused REGISTER for {KSR.kx.get_turi()}\n")
        return False
    return True


def _drop_reg_id(contacts: tuple[NameAddr, ...]) -> tuple[NameAddr, ...]:
    """Outbound does not apply, so the reg-id is ignored (RFC 5626 §6): rewrite the
    Contact without it before the save, because Kamailio 5.6's registrar (with
    outbound_mode 0) would still key the binding by (instance, reg-id)."""
    if not any("reg-id" in c.params for c in contacts):
        return contacts
    stripped = tuple(
        NameAddr(c.uri, {k: v for k, v in c.params.items() if k != "reg-id"}, c.star) for c in contacts
    )
    KSR.hdr.remove("Contact")
    KSR.hdr.append("Contact: " + ", ".join(format_name_addr(c) for c in stripped) + "\r\n")
    KSR.textopsx.msg_apply_changes()
    KSR.info(f"kemi-outbound: outbound does not apply to REGISTER for {KSR.kx.get_turi()}: reg-id ignored\n")
    return stripped


def _refresh_in_order(table: str, aor: str, stored: list[StoredBinding], contacts: tuple[NameAddr, ...],
                      callid: str) -> bool:
    """Bindings with +sip.instance, which Kamailio 5.6's usrloc matches by
    (instance, reg-id) alone (outbound.refresh): refuse an out-of-order CSeq
    (RFC 3261 §10.3 step 7, answered here); under a new Call-ID remove just the
    binding being replaced, so that usrloc does not drop the instance's other
    flows (kamailio-5.6-notes, flaw 9; RFC 5626 §6 keys by (AOR, instance, reg-id)).
    False when a reply was sent."""
    keys = instance_keys(contacts)
    if not keys:
        return True
    refusal = out_of_order(stored, keys, callid, int(KSR.pv.get("$cs") or 0))
    if refusal is not None:
        send_reply(refusal)
        return False
    if len(stored) < 2:
        return True  # nothing else of this AOR that usrloc could wrongly drop
    for ruid in replaced_by_new_call_id(stored, keys, callid):
        KSR.info(f"kemi-outbound: new Call-ID for a flow of {aor}: replacing binding {ruid} only\n")
        KSR.registrar.unregister_ruid(table, aor, ruid)
    return True


def _stored_bindings(table: str, aor: str) -> list[StoredBinding]:
    if KSR.registrar.reg_fetch_contacts(table, aor, STORED_HANDLE) < 0:
        return []
    try:
        count = int(KSR.pv.get(f"$ulc({STORED_HANDLE}=>count)") or 0)

        def field(name: str, i: int) -> str:
            return str(KSR.pv.get(f"$(ulc({STORED_HANDLE}=>{name})[{i}])") or "")

        return [StoredBinding(field("ruid", i), field("instance", i), int(field("regid", i) or 0),
                              field("callid", i), int(field("cseq", i) or 0), field("addr", i))
                for i in range(count)]
    finally:
        KSR.registrar.reg_free_contacts(STORED_HANDLE)


def current() -> tuple[Snapshot, RegisterView]:
    snap = snapshot()
    return snap, register_view(snap)
