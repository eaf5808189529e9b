"""Refresh ordering and replacement of instance bindings, the registrar's save plan
(RFC 3261 §10.3 steps 6-7, RFC 5626 §6)."""

import pytest

from outbound.bindings import Binding, normalize_instance
from outbound.decisions import Reply, SaveBinding
from outbound.policy import RegisterView
from outbound.refresh import SavePlan, instance_keys, out_of_order, replaced_by_new_call_id, save_plan
from outbound.sipmsg import parse_name_addr

URN = "urn:uuid:00000000-0000-1000-8000-000A95A0E128"


def stored(ruid: str, instance: str, reg_id: int, callid: str, cseq: int) -> Binding:
    """A binding as adapter.usrloc reads it (the instance normalized)."""
    return Binding(ruid, f"sip:{ruid}@192.0.2.1", instance=normalize_instance(instance), reg_id=reg_id,
                   callid=callid, cseq=cseq)


FLOW_1 = stored("r1", f"<{URN}>", 1, "cid-1", 5)
FLOW_2 = stored("r2", f"<{URN}>", 2, "cid-2", 9)
PLAIN = stored("r3", "", 0, "cid-1", 50)


def keys(*contacts: str):
    return instance_keys(tuple(parse_name_addr(c) for c in contacts))


def test_keys_are_instance_as_urn_and_reg_id():
    found = keys(f'<sip:a@192.0.2.1>;+sip.instance="<{URN.lower()}>";reg-id=1',
                 f'<sip:a@192.0.2.1>;+sip.instance="<{URN}>"', "<sip:plain@192.0.2.1>")
    assert found == {(URN.lower(), 1), (URN.lower(), 0)}


def test_lower_cseq_with_the_same_call_id_is_refused():
    refusal = out_of_order([FLOW_1, FLOW_2], keys(f'<sip:b@192.0.2.9>;+sip.instance="<{URN}>";reg-id=1'),
                           "cid-1", 4)
    assert isinstance(refusal, Reply) and refusal.code == 400 and "r1" in refusal.log


def test_equal_or_higher_cseq_or_another_call_id_is_in_order():
    key = keys(f'<sip:a@192.0.2.1>;+sip.instance="<{URN}>";reg-id=1')
    assert out_of_order([FLOW_1], key, "cid-1", 5) is None  # a retransmission
    assert out_of_order([FLOW_1], key, "cid-1", 6) is None
    assert out_of_order([FLOW_1], key, "rebooted", 1) is None


def test_only_the_binding_with_the_same_key_counts():
    # reg-id 2 has CSeq 9 under cid-2; a REGISTER for reg-id 1 with cid-2 / CSeq 3 is fine
    key = keys(f'<sip:a@192.0.2.1>;+sip.instance="<{URN}>";reg-id=1')
    assert out_of_order([FLOW_1, FLOW_2, PLAIN], key, "cid-2", 3) is None


def test_new_call_id_replaces_only_the_binding_with_that_key():
    key = keys(f'<sip:a@192.0.2.1>;+sip.instance="<{URN}>";reg-id=1')
    assert replaced_by_new_call_id([FLOW_1, FLOW_2, PLAIN], key, "rebooted") == ["r1"]
    assert replaced_by_new_call_id([FLOW_1, FLOW_2, PLAIN], key, "cid-1") == []


# --- save_plan: what the registrar does before Kamailio's save() --------------------------------

FROM = "sip:198.51.100.7:49152;transport=tcp"
FLOW_CONTACT = f'<sip:a@198.51.100.7:49152;transport=tcp;ob>;+sip.instance="<{URN}>";reg-id=1'
EDGE_PATH = "<sip:token@edge.example.com;lr;ob>"
OUTBOUND = SaveBinding(outbound=True)
NO_OUTBOUND = SaveBinding(outbound=False, ignore_reg_id=True)


def register(*contacts: str, vias: int = 2, path: str | None = EDGE_PATH, expires: int | None = 600) -> RegisterView:
    return RegisterView(first_hop=vias == 1, contacts=tuple(parse_name_addr(c) for c in contacts),
                        paths=(parse_name_addr(path),) if path else (), expires_header=expires,
                        supported=frozenset({"outbound", "path"}))


def plan(view, decision=OUTBOUND, stored_now=(), callid="cid-1", cseq=10, max_contacts=10):
    return save_plan(view, decision, list(stored_now), callid=callid, cseq=cseq, came_from=FROM,
                     max_contacts=max_contacts, default_expires=3600)


SAVE_CASES = [
    # (id, view, decision, stored, callid, cseq, max_contacts, expected: a reply code or a SavePlan)
    ("rfc3261-10-3-step7-lower-cseq-same-call-id-400",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1,), "cid-1", 4, 10, 400),
    ("rfc3261-10-3-step7-retransmission-is-saved",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1,), "cid-1", 5, 10, SavePlan()),
    ("rfc3261-10-3-step7-new-call-id-replaces-that-binding-only",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1, FLOW_2, PLAIN), "rebooted", 1, 10, SavePlan(replace=("r1",))),
    ("new-call-id-with-one-binding-stored-replaces-nothing",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1,), "rebooted", 1, 10, SavePlan()),
    ("out-of-order-is-refused-before-the-contact-limit",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1,), "cid-1", 4, 1, 400),
    ("contact-limit-a-new-flow-past-it-403",
     register(FLOW_CONTACT.replace("reg-id=1", "reg-id=3")), OUTBOUND, (FLOW_1, FLOW_2), "cid-3", 1, 2, 403),
    ("contact-limit-refused-before-any-binding-is-replaced",
     register(FLOW_CONTACT, "<sip:b@198.51.100.8>"), OUTBOUND, (FLOW_1, FLOW_2), "rebooted", 1, 2, 403),
    ("contact-limit-a-refresh-adds-nothing",
     register(FLOW_CONTACT), OUTBOUND, (FLOW_1, FLOW_2), "cid-1", 6, 2, SavePlan()),
    ("rfc5626-6-first-hop-without-path-stores-received",
     register(FLOW_CONTACT, vias=1, path=None), OUTBOUND, (), "cid-1", 1, 10, SavePlan(received=FROM)),
    ("first-hop-with-path-no-received",
     register(FLOW_CONTACT, vias=1), OUTBOUND, (), "cid-1", 1, 10, SavePlan()),
    ("behind-an-edge-no-received",
     register(FLOW_CONTACT, vias=2, path=None), OUTBOUND, (), "cid-1", 1, 10, SavePlan()),
    ("rfc5626-6-reg-id-ignored-is-taken-off-the-contact",
     register(FLOW_CONTACT, path="<sip:edge.example.com;lr>"), NO_OUTBOUND, (), "cid-1", 1, 10,
     SavePlan(contact_header=f'<sip:a@198.51.100.7:49152;transport=tcp;ob>;+sip.instance="<{URN}>"')),
    ("no-reg-id-to-ignore-contact-kept",
     register("<sip:b@198.51.100.8>", path="<sip:edge.example.com;lr>"), NO_OUTBOUND, (), "cid-1", 1, 10,
     SavePlan()),
]


@pytest.mark.parametrize(("view", "decision", "stored_now", "callid", "cseq", "max_contacts", "expected"),
                         [case[1:] for case in SAVE_CASES], ids=[case[0] for case in SAVE_CASES])
def test_save_plan(view, decision, stored_now, callid, cseq, max_contacts, expected):
    result = plan(view, decision, stored_now, callid, cseq, max_contacts)

    if isinstance(expected, int):
        assert isinstance(result, Reply) and result.code == expected, result
    else:
        assert result == expected


def test_ignored_reg_id_keys_the_binding_by_instance_alone():
    """With the reg-id taken off, the instance binding stored with reg-id 0 is the one
    an out-of-order CSeq is checked against."""
    old = stored("r9", f"<{URN}>", 0, "cid-1", 20)
    view = register(FLOW_CONTACT, path="<sip:edge.example.com;lr>")

    assert plan(view, NO_OUTBOUND, (old,), "cid-1", 19).code == 400
    assert plan(view, OUTBOUND, (old,), "cid-1", 19) == SavePlan()
