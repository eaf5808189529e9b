"""Refresh ordering and replacement of instance bindings (RFC 3261 §10.3 step 7, RFC 5626 §6)."""

from outbound.decisions import Reply
from outbound.refresh import StoredBinding, instance_keys, out_of_order, replaced_by_new_call_id
from outbound.sipmsg import parse_name_addr

URN = "urn:uuid:00000000-0000-1000-8000-000A95A0E128"
FLOW_1 = StoredBinding("r1", f"<{URN}>", 1, "cid-1", 5)
FLOW_2 = StoredBinding("r2", f"<{URN}>", 2, "cid-2", 9)
PLAIN = StoredBinding("r3", "", 0, "cid-1", 50)


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
