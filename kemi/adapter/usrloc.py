"""Kamailio's usrloc, read and written in one place (registrar module: reg_fetch_contacts, $ulc, unregister_ruid).

Every binding the Python side looks at (the home proxy forking to an AOR, the
registrar checking a REGISTER against what is stored, the single server
dropping the bindings of a closed flow) is read here into one record,
``outbound.bindings.Binding``.
"""

from __future__ import annotations

import KSR

from outbound.bindings import Binding, normalize_instance

from .names import FLB_OUTBOUND, LOOKUP_HANDLE


def bindings(table: str, aor: str) -> list[Binding]:
    """The AOR's bindings as usrloc has them now; none when the AOR is unknown."""
    if KSR.registrar.reg_fetch_contacts(table, aor, LOOKUP_HANDLE) < 0:
        return []
    try:
        count = int(KSR.pv.get(f"$ulc({LOOKUP_HANDLE}=>count)") or 0)
        return [_binding(index) for index in range(count)]
    finally:
        KSR.registrar.reg_free_contacts(LOOKUP_HANDLE)


def unregister(table: str, aor: str, ruid: str) -> None:
    KSR.registrar.unregister_ruid(table, aor, ruid)


def _binding(index: int) -> Binding:
    def field(name: str) -> object:
        return KSR.pv.get(f"$(ulc({LOOKUP_HANDLE}=>{name})[{index}])")

    q = int(field("q") or -1)  # in thousandths
    return Binding(
        ruid=str(field("ruid") or ""),
        contact=str(field("addr") or ""),
        path=str(field("path") or ""),
        instance=normalize_instance(str(field("instance") or "")),
        reg_id=int(field("regid") or 0),
        q=1.0 if q < 0 else q / 1000.0,
        modified=int(field("modified") or 0),
        outbound=bool(int(field("cflags") or 0) & (1 << FLB_OUTBOUND)),
        received=str(field("received") or ""),
        callid=str(field("callid") or ""),
        cseq=int(field("cseq") or 0),
    )
