"""The pure parts of bench/instructions.py (issue 17): reading callgrind's
output and turning counts into per-transaction figures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import instructions  # noqa: E402

import report  # noqa: E402

# the shape callgrind 3.19 writes with --compress-strings=no --compress-pos=no
CALLGRIND_OUT = """\
version: 1
creator: callgrind-3.19.0
events: Ir
fl=???
fn=receive_msg
10 100
cfl=???
cfn=apy_exec
calls=2 0
11 700
cfn=parse_headers
calls=3 0
12 50
fn=apy_exec
20 300
cfn=sr_apy_kemi_exec_func_ex
calls=4 0
21 400
cfn=apy_exec'2
calls=1 0
22 5
fn=sr_apy_kemi_exec_func_ex
30 400
summary: 1255
totals: 1255
"""


def test_callgrind_totals_calls_and_inclusive_costs_are_read(tmp_path: Path) -> None:
    got = instructions.parse_callgrind(CALLGRIND_OUT)
    assert got["total"] == 1255
    assert got["calls"] == {"apy_exec": 2, "parse_headers": 3, "sr_apy_kemi_exec_func_ex": 4, "apy_exec'2": 1}
    assert got["inclusive"]["apy_exec"] == 700
    assert "apy_exec'2" not in got["inclusive"]
    assert got["inclusive"]["sr_apy_kemi_exec_func_ex"] == 400
    (tmp_path / "callgrind.edge.1").write_text(CALLGRIND_OUT)
    (tmp_path / "callgrind.edge.2").write_text("summary: 45\n")
    role = instructions.role_counts(sorted(tmp_path.glob("callgrind.edge.*")))
    # apy_exec'2 is apy_exec called from itself: its 5 are inside the 700 already
    # (counted as a call, not again as cost)
    assert role == {"total": 1300, "python": 700, "ksr": 400, "messages": 0, "python_entries": 3, "processes": 2}


def counts(total: float, python: float = 0, ksr: float = 0, messages: float = 0, entries: float = 0) -> dict:
    return {"total": total, "python": python, "ksr": ksr, "messages": messages, "python_entries": entries}


def work_run(ok: int, callees: int, edge: dict, registrar: dict) -> dict:
    """What CountedWork.registrations / calls return."""
    return {"ok": ok, "failed": 0, "retransmissions": 0, "callee_registrations": callees,
            "counts": {"edge": edge, "registrar": registrar}}


def test_a_call_run_pays_for_its_callees_registrations_at_the_registration_rate() -> None:
    reg = work_run(10, 0, counts(1000, 800, 300, 40, 50), counts(500, 400, 100, 20, 20))
    call = work_run(4, 5, counts(2500, 2000, 500, 76, 85), counts(1250, 1000, 250, 42, 42))
    got = instructions.per_transaction(reg, call)
    assert got["register"]["edge"] == {"total": 100, "python": 80, "ksr": 30, "messages": 4, "python_entries": 5}
    # (2500 - 5 * 100) / 4
    assert got["call"]["edge"]["total"] == 500
    assert got["call"]["edge"]["messages"] == 14
    assert got["call"]["registrar"]["total"] == (1250 - 5 * 50) / 4
    assert got["summary"]["registrar"] == {"register_ir": 50, "call_ir": 250}


def test_the_report_shows_the_ratios_of_the_counts() -> None:
    def impl(reg_edge: float, call_edge: float) -> dict:
        return instructions.per_transaction(work_run(1, 0, counts(reg_edge), counts(reg_edge / 2)),
                                            work_run(1, 0, counts(call_edge), counts(call_edge / 2)))

    results = {"instructions": {"registrations": 1, "calls": 1, "entry_functions": ["receive_msg"],
                                "impls": {"native": impl(1e6, 4e6), "floor": impl(1.5e6, 5e6),
                                          "ours": impl(3e6, 6e6)}}}
    text = report.instructions_section(results)
    assert "| edge | per registration | 1.00 M | 1.50 M | 3.00 M | 2.00 | 1.50 | 3.00 |" in text
    assert "| edge | per call | 4.00 M | 5.00 M | 6.00 M | 1.20 | 1.25 | 1.50 |" in text
    assert report.instructions_section({"instructions": {"error": "no callgrind files"}}).startswith(
        "Instructions: failed")


TRACE = """\
----------------------------------------------- 2026-12-02 14:46:36.430363
UDP message sent (332 bytes):

INVITE sip:fo0@example.com SIP/2.0
Call-ID: 1-7673@127.0.0.42
CSeq: 1 INVITE

----------------------------------------------- 2026-12-02 14:46:36.430436
UDP message received [444] bytes :

SIP/2.0 407 Proxy Authentication Required
Call-ID: 1-7673@127.0.0.42
CSeq: 1 INVITE

----------------------------------------------- 2026-12-02 14:46:36.430500
UDP message sent (340 bytes):

INVITE sip:fo0@example.com SIP/2.0
Call-ID: 1-7673@127.0.0.42
CSeq: 2 INVITE

----------------------------------------------- 2026-12-02 14:46:36.432863
UDP message received [400] bytes :

SIP/2.0 200 OK
Call-ID: 1-7673@127.0.0.42
CSeq: 2 INVITE

----------------------------------------------- 2026-12-02 14:46:36.433000
UDP message received [300] bytes :

SIP/2.0 200 OK
Call-ID: 1-7673@127.0.0.42
CSeq: 3 BYE

----------------------------------------------- 2026-12-02 14:46:36.440000
UDP message sent (332 bytes):

INVITE sip:fo1@example.com SIP/2.0
Call-ID: 2-7673@127.0.0.42
CSeq: 1 INVITE
"""


def test_call_setup_time_runs_from_the_first_invite_to_the_invites_200() -> None:
    import analysis

    (only,) = analysis.setup_times_ms(TRACE)  # the second call never got its 200: left out
    assert abs(only - 2.5) < 1e-3
