"""REGISTER handling shared by the registrar and single-server roles (RFC 5626 §6)."""

from __future__ import annotations

import KSR

from outbound.bindings import normalize_instance
from outbound.config import Config
from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView, has_instance, reg_id_value, registrar_decision
from outbound.sipmsg import NameAddr, parse_delta_seconds, parse_name_addrs

from .runtime import FLB_OUTBOUND, Snapshot, snapshot


def register_view(snap: Snapshot) -> RegisterView:
    headers = snap.headers
    return RegisterView(
        via_count=len(headers.values("via")),
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
    if decision.outbound:
        KSR.setbflag(FLB_OUTBOUND)
        _release_rebooted_flows(table, view.contacts, callid)
    for header in decision.reply_headers:
        KSR.hdr.append_to_reply(header + "\r\n")
    if KSR.registrar.save(table, 0) < 0:
        KSR.notice(f"kemi-outbound: registrar refused REGISTER for {KSR.kx.get_turi()}\n")
        return False
    return True


def _release_rebooted_flows(table: str, contacts: tuple[NameAddr, ...], callid: str) -> None:
    """Kamailio 5.6 usrloc, on a new Call-ID for a known (instance, reg-id), deletes
    *every* binding of that instance, other reg-ids too (kamailio-5.6-notes,
    flaw 9). RFC 5626 §6 keys bindings by (AOR, instance, reg-id): we remove just
    the binding being replaced, so that save() inserts instead of updating."""
    keys = set()
    for contact in contacts:
        if has_instance(contact) and "reg-id" in contact.params:
            keys.add((normalize_instance(contact.params.get("+sip.instance") or ""), reg_id_value(contact)))
    if not keys:
        return
    aor = KSR.kx.get_turi()
    if KSR.registrar.reg_fetch_contacts(table, aor, "korel") < 0:
        return
    try:
        count = int(KSR.pv.get("$ulc(korel=>count)") or 0)
        stale: list[str] = []
        if count < 2:
            return  # nothing else of this AOR that usrloc could wrongly drop
        for i in range(count):
            instance = normalize_instance(str(KSR.pv.get(f"$(ulc(korel=>instance)[{i}])") or ""))
            reg_id = int(KSR.pv.get(f"$(ulc(korel=>regid)[{i}])") or 0)
            stored_callid = str(KSR.pv.get(f"$(ulc(korel=>callid)[{i}])") or "")
            if (instance, reg_id) in keys and stored_callid != callid:
                stale.append(str(KSR.pv.get(f"$(ulc(korel=>ruid)[{i}])")))
    finally:
        KSR.registrar.reg_free_contacts("korel")
    for ruid in stale:
        KSR.info(f"kemi-outbound: new Call-ID for a flow of {aor}: replacing binding {ruid} only\n")
        KSR.registrar.unregister_ruid(table, aor, ruid)


def current() -> tuple[Snapshot, RegisterView]:
    snap = snapshot()
    return snap, register_view(snap)
