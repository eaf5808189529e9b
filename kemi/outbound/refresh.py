"""Refreshing and removing instance bindings (RFC 3261 §10.3 step 7, RFC 5626 §6).

Kamailio 5.6's usrloc finds a binding with ``+sip.instance`` by (instance,
reg-id) alone (``get_ucontact_by_instance``) and skips the Call-ID/CSeq check
it makes for plain bindings; with a new Call-ID it removes every other binding
of the instance too (kamailio-5.6-notes, flaw 9). These pure functions decide,
from the bindings already stored for the AOR, which REGISTERs to refuse and
which single bindings to replace, so that the binding key stays (AOR,
instance, reg-id) and the §10.3 ordering still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bindings import normalize_instance
from .decisions import Reply
from .policy import REG_ID_DIGITS
from .sipmsg import NameAddr, is_digits

InstanceKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StoredBinding:
    """One stored binding of the AOR, as far as refreshing is concerned."""

    ruid: str
    instance: str
    reg_id: int
    callid: str
    cseq: int
    contact: str = ""

    @property
    def key(self) -> InstanceKey:
        return (normalize_instance(self.instance), self.reg_id)


def instance_keys(contacts: tuple[NameAddr, ...]) -> frozenset[InstanceKey]:
    """(instance, reg-id) of each Contact with ``+sip.instance``, the way Kamailio's
    usrloc matches it (reg-id 0 when absent). A malformed reg-id is left to the
    registrar decision, which answers 400 before this is asked."""
    keys = set()
    for contact in contacts:
        raw = contact.params.get("+sip.instance")
        if not raw or not raw.strip('"<> '):
            continue
        reg_id = 0
        text = (contact.params.get("reg-id") or "").strip('"')
        if is_digits(text) and len(text) <= REG_ID_DIGITS:  # never int() on 5000 digits
            reg_id = int(text)
        keys.add((normalize_instance(raw), reg_id))
    return frozenset(keys)


def out_of_order(stored: list[StoredBinding] | tuple[StoredBinding, ...], keys: frozenset[InstanceKey],
                 callid: str, cseq: int) -> Reply | None:
    """RFC 3261 §10.3 step 7: a binding refreshed or removed with the Call-ID it was
    stored with needs a higher CSeq; otherwise "the update MUST be aborted and the
    request fails" (400, like Kamailio's registrar for plain bindings). An
    equal CSeq is a retransmission of the request already applied: let it through,
    as Kamailio does (its cseq_delay)."""
    for binding in stored:
        if binding.key in keys and binding.callid == callid and cseq < binding.cseq:
            return Reply(400, "Out-of-Order Request",  # not "...CSeq...": SIPp 3.6.1 then misreads the CSeq
                         f"CSeq {cseq} is older than {binding.cseq} stored for binding {binding.ruid}")
    return None


def replaced_by_new_call_id(stored: list[StoredBinding] | tuple[StoredBinding, ...],
                            keys: frozenset[InstanceKey], callid: str) -> list[str]:
    """RUIDs of bindings that the REGISTER replaces under a new Call-ID (a rebooted
    UA, RFC 3261 §10.3 step 7: "the binding MUST be ... updated"). Removing just
    these before the save keeps usrloc from dropping the instance's other flows."""
    return [b.ruid for b in stored if b.key in keys and b.callid != callid]
