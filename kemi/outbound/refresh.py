"""Saving a REGISTER's bindings over those stored (RFC 3261 §10.3 steps 6-7, RFC 5626 §6).

Kamailio 5.6's usrloc finds a binding with ``+sip.instance`` by (instance,
reg-id) alone (``get_ucontact_by_instance``) and skips the Call-ID/CSeq check
it makes for plain bindings; with a new Call-ID it removes every other binding
of the instance too, the instance's other flows included. :func:`save_plan`
decides, from the bindings already stored for the AOR, which REGISTERs to
refuse and which single bindings to replace first, so that the binding key
stays (AOR, instance, reg-id) and the §10.3 ordering still holds; it also
applies the contact limit and says what Kamailio's registrar must store as
"received".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .authz import over_contact_limit
from .bindings import Binding, InstanceKey, normalize_instance
from .decisions import Reply, SaveBinding
from .policy import REG_ID_DIGITS, RegisterView, contact_expiry
from .sipmsg import NameAddr, format_name_addr, is_digits


@dataclass(frozen=True, slots=True)
class SavePlan:
    """What the adapter does before handing the REGISTER to Kamailio's save().

    ``contact_header``: the Contact header to write instead of the request's
    (the reg-id taken off, outbound does not apply: RFC 5626 §6 "MUST ignore
    the reg-id", and Kamailio's registrar would still key the binding by it),
    empty to keep it; ``replace``: RUIDs to remove first (replaced under a new
    Call-ID); ``received``: the value of the registrar's received_avp (a
    first-hop REGISTER without Path: calls go back to where it came from, NAT
    and no lookup of a name the Contact may carry), empty for none.
    """

    contact_header: str = ""
    replace: tuple[str, ...] = ()
    received: str = ""


def save_plan(view: RegisterView, decision: SaveBinding, stored: Sequence[Binding], *, callid: str, cseq: int,
              came_from: str, max_contacts: int, default_expires: int) -> Reply | SavePlan:
    """The registrar's save of a REGISTER that ``policy.registrar_decision``
    accepted, against the AOR's ``stored`` bindings: a refusal (an out-of-order
    CSeq: 400; past the contact limit: 403) or what to do first.
    ``came_from`` is the REGISTER's source as a ``$du`` URI."""
    contacts = view.contacts
    header = ""
    if decision.ignore_reg_id and any("reg-id" in c.params for c in contacts):
        contacts = tuple(c.without("reg-id") for c in contacts)
        header = ", ".join(format_name_addr(c) for c in contacts)
    keys = instance_keys(contacts)
    replace: tuple[str, ...] = ()
    if keys:
        refusal = out_of_order(stored, keys, callid, cseq)
        if refusal is not None:
            return refusal
        if len(stored) >= 2:  # else nothing of this AOR that usrloc could wrongly drop
            replace = tuple(replaced_by_new_call_id(stored, keys, callid))
    refusal = over_contact_limit(len(stored), bindings_added(stored, contacts, view.expires_header, default_expires),
                                 max_contacts)
    if refusal is not None:
        return refusal
    first_hop = view.first_hop and not view.paths
    return SavePlan(header, replace, came_from if first_hop else "")


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


def out_of_order(stored: Sequence[Binding], keys: frozenset[InstanceKey], callid: str, cseq: int) -> Reply | None:
    """RFC 3261 §10.3 step 7: a binding refreshed or removed with the Call-ID it was
    stored with needs a higher CSeq; otherwise "the update MUST be aborted and the
    request fails" (400, like Kamailio's registrar for plain bindings). An
    equal CSeq is a retransmission of the request already applied: let it through,
    as Kamailio does (its cseq_delay)."""
    for binding in stored:
        if binding.key in keys and binding.callid == callid and cseq < binding.cseq:
            return Reply(400, "Out-of-Order Request",  # not "...CSeq...": SIPp 3.6.1 then misreads the CSeq
                         f"CSeq {cseq} is older than {binding.cseq} stored for binding {binding.ruid}",
                         cause="cseq_out_of_order")
    return None


def replaced_by_new_call_id(stored: Sequence[Binding], keys: frozenset[InstanceKey], callid: str) -> list[str]:
    """RUIDs of bindings that the REGISTER replaces under a new Call-ID (a rebooted
    UA, RFC 3261 §10.3 step 7: "the binding MUST be ... updated"). Removing just
    these before the save keeps usrloc from dropping the instance's other flows."""
    return [b.ruid for b in stored if b.key in keys and b.callid != callid]


def bindings_added(stored: Iterable[Binding], contacts: tuple[NameAddr, ...], expires_header: int | None,
                   default_expires: int) -> int:
    """How many new bindings a REGISTER would add: live Contacts that match no
    stored binding (an instance binding by (instance, reg-id), as usrloc keys
    it; a plain one by its Contact URI). Refreshes and removals add none."""
    stored = list(stored)
    keys = {b.key for b in stored if b.instance}
    uris = {b.contact for b in stored}
    added = 0
    for contact in contacts:
        if contact.star or contact_expiry(contact, expires_header, default_expires) == 0:
            continue
        own = instance_keys((contact,))
        if own and own <= keys:
            continue
        if not own and contact.uri in uris:
            continue
        added += 1
    return added
