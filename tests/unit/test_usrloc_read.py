"""How adapter.usrloc reads a fetched binding's $ulc fields: all of them in one
pv call, field by field when that cannot be trusted, and the Contact's q as
registered (RFC 3261 §10.2.1.2: q=0 is the lowest preference, not "no q").

``KSR`` exists only inside Kamailio: a stand-in records the calls and returns
scripted answers (it implements none of Kamailio's behaviour). That a real
registrar's bindings read this way fork, fail over and persist is shown by the
integration tests (test_failover.py, test_persistence.py, test_registration.py).
"""

from __future__ import annotations

import re
import sys
import types

import pytest

from ksr_script import Script

KSR = sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter import usrloc  # noqa: E402
from adapter.names import FLB_OUTBOUND, LOOKUP_HANDLE  # noqa: E402

STORED = {
    "ruid": "uloc-1-5f0a-1", "addr": "sip:bob@192.0.2.20:5060;transport=tcp;ob",
    "path": "<sip:tok@192.0.2.1;lr;ob>", "instance": "<urn:uuid:00000000-0000-4000-8000-000000000001>",
    "regid": 1, "q": 500, "modified": 1700000000, "cflags": 1 << FLB_OUTBOUND, "received": "",
    "callid": "c1@192.0.2.20", "cseq": 7, "expires": 1700000600,
}
FIELD = re.compile(r"=>(\w+)\)\[(\d+)\]\)$")


def joined(values: dict[str, object]) -> str:
    """$_s's rendering: a null value is written "<null>"."""
    return "\x1f".join("<null>" if values[name] is None else str(values[name]) for name in usrloc._BINDING_FIELDS)


def scripted(monkeypatch, stored: dict[str, object], whole: str | None = None) -> Script:
    def pv_get(spec: str) -> object:
        if spec.startswith("$_s("):
            return joined(stored) if whole is None else whole
        match = FIELD.search(spec)
        assert match and match.group(2) == "0", spec
        return stored[match.group(1)]

    s = Script(**{"pv.get": pv_get})
    monkeypatch.setattr(KSR, "pv", s.namespace("pv.", "get"), raising=False)
    return s


def test_a_binding_is_read_in_one_pv_call(monkeypatch):
    s = scripted(monkeypatch, STORED)

    binding = usrloc._binding(0)

    assert s.names() == ["pv.get"]
    assert binding.ruid == "uloc-1-5f0a-1" and binding.contact == STORED["addr"] and binding.path == STORED["path"]
    assert binding.instance == "urn:uuid:00000000-0000-4000-8000-000000000001"  # normalized
    assert (binding.reg_id, binding.q, binding.cseq, binding.outbound) == (1, 0.5, 7, True)
    assert (binding.modified, binding.expires, binding.received, binding.callid) == (1700000000, 1700000600, "",
                                                                                    "c1@192.0.2.20")


def test_a_value_holding_the_join_byte_makes_the_binding_read_field_by_field(monkeypatch):
    """A quoted-pair may carry the control byte; the parts no longer line up."""
    stored = {**STORED, "instance": '"<urn:x\x1fy>"'}
    s = scripted(monkeypatch, stored)

    binding = usrloc._binding(0)

    assert len(s.calls) == 1 + len(usrloc._BINDING_FIELDS)
    assert binding.callid == "c1@192.0.2.20" and binding.cseq == 7 and "\x1f" in binding.instance


@pytest.mark.parametrize("literal", [None, "<null>"], ids=["null", "a-device-wrote-<null>"])
def test_a_text_field_reading_null_is_read_again_alone(monkeypatch, literal):
    """$_s writes a null value and a literal "<null>" alike; only the field's own read tells them apart."""
    s = scripted(monkeypatch, {**STORED, "callid": literal, "instance": None})

    binding = usrloc._binding(0)

    assert binding.callid == ("" if literal is None else "<null>")
    assert binding.instance == ""
    again = [args[0] for _, args in s.calls[1:]]
    assert again == [f"$(ulc({LOOKUP_HANDLE}=>{name})[0])" for name in ("instance", "callid")]


@pytest.mark.parametrize("thousandths,q", [(0, 0.0), (1, 0.001), (1000, 1.0), (-1, 1.0)],
                         ids=["q=0", "q=0.001", "q=1", "no-q"])
def test_q_is_read_as_registered_and_no_q_ranks_as_1(monkeypatch, thousandths, q):
    scripted(monkeypatch, {**STORED, "q": thousandths})

    assert usrloc._binding(0).q == q
