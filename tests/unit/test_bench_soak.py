"""Pure logic of the soak (bench/soak.py): failed-call classification against
the kill windows, the flatness judgement, bindings against live flows."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "kemi"))

import soak  # noqa: E402
from soak import CallStart, Kill  # noqa: E402

from outbound.tokens import Flow, FlowTokenCodec, parse_key  # noqa: E402

KEY = "hex:9f9a95f1f24968cd191273341861ce06e3446dd05ced9654970d91ea69ba7ab9"


def test_caller_log_gives_starts_and_successes():
    text = ("start 1-77@127.0.30.30 u0 1796236191.000000 71600.000000\nok 1-77@127.0.30.30\n"
            "start 2-77@127.0.30.30 u1 1796236191.000000 900000.000000\nsomething else\n")
    starts, oks = soak.parse_caller_log(text)
    assert starts == [CallStart("1-77@127.0.30.30", "u0", 1796236191.0716),
                      CallStart("2-77@127.0.30.30", "u1", 1796236191.9)]
    assert oks == {"1-77@127.0.30.30"}


def test_registrations_are_read_with_their_time():
    text = "registered soak0x1 100.000000 500000.000000\nregistered soak0x2 101.000000 0.000000\n"
    assert soak.parse_registrations(text) == [("soak0x1", 100.5), ("soak0x2", 101.0)]


def kill(at: float, back: dict[str, float], deadline: float = 20.0, group: int = 0) -> Kill:
    return Kill(group, at, back, at + deadline)


def test_a_failure_between_the_kill_and_the_callee_registering_again_is_explained():
    k = kill(100.0, {"u0": 105.0})
    assert soak.explained_by(CallStart("c", "u0", 103.0), [k]) is k
    # a call in flight when the flow died (started up to PRE_KILL_S before)
    assert soak.explained_by(CallStart("c", "u0", 100.0 - soak.PRE_KILL_S + 0.1), [k]) is k
    assert soak.explained_by(CallStart("c", "u0", 105.0 + soak.POST_REGISTER_S - 0.1), [k]) is k


def test_a_failure_outside_the_kill_window_is_not_explained():
    k = kill(100.0, {"u0": 105.0})
    assert soak.explained_by(CallStart("c", "u0", 100.0 - soak.PRE_KILL_S - 0.5), [k]) is None
    assert soak.explained_by(CallStart("c", "u0", 105.0 + soak.POST_REGISTER_S + 0.5), [k]) is None


def test_a_callee_that_never_registered_again_is_explained_only_until_the_deadline():
    k = kill(100.0, {}, deadline=20.0)
    assert soak.explained_by(CallStart("c", "u0", 119.0), [k]) is k
    assert soak.explained_by(CallStart("c", "u0", 100.0 + 20.0 + soak.POST_REGISTER_S + 1), [k]) is None


def test_classification_counts_each_failure_by_its_callees_group():
    starts = [CallStart("ok1", "a0", 50.0), CallStart("f1", "a0", 101.0), CallStart("f2", "b0", 101.0),
              CallStart("f3", "a0", 300.0), CallStart("f4", "stranger", 101.0)]
    group_of = {"a0": 0, "b0": 1}
    got = soak.classify_failures(starts, {"ok1"}, group_of, [kill(100.0, {"a0": 104.0}, group=0)])
    assert (got["started"], got["succeeded"], got["failed"]) == (5, 1, 4)
    assert got["explained"] == 1  # f1 only: b0's group was not killed, f3 came long after a0 was back
    assert got["unexplained"] == 3
    assert {c["call_id"] for c in got["unexplained_calls"]} == {"f2", "f3", "f4"}
    assert sorted(got["unexplained_at"]) == [101.0, 101.0, 300.0]


def test_unexplained_failures_are_counted_per_ten_seconds():
    assert soak.per_10s([0.5, 9.9, 10.0, 158.2, 159.9]) == {"0": 2, "10": 1, "150": 2}


def test_flatness_uses_ten_minute_windows_for_long_soaks_and_thirds_for_short_ones():
    assert soak.flat_windows(1800)[0] == 600
    assert soak.flat_windows(1200)[0] == 600
    assert soak.flat_windows(600)[0] == 200


def test_flat_within_five_percent_and_not_beyond():
    steady = [(t, 100.0 + (t % 20) / 10) for t in range(0, 1801, 10)]
    assert soak.flatness(steady, 1800)["flat"] is True
    growing = [(t, 100.0 + t / 100) for t in range(0, 1801, 10)]  # +18 % over the soak
    got = soak.flatness(growing, 1800)
    assert got["flat"] is False
    assert got["ratio"] > 1.05
    shrinking = [(t, 100.0 - t / 100) for t in range(0, 1801, 10)]
    assert soak.flatness(shrinking, 1800)["flat"] is False


def test_flatness_compares_the_means_of_the_windows_only():
    # a bump in the middle third does not count
    samples = [(t, 200.0 if 100 <= t < 200 else 100.0) for t in range(0, 301, 10)]
    assert soak.flatness(samples, 300)["flat"] is True
    assert soak.flatness([], 300)["flat"] is None


CODEC = FlowTokenCodec([parse_key(KEY)])


def binding(aor: str, edge: str, conn_id: int, port: int, expires: int = 50) -> dict:
    token = CODEC.encode(Flow("tcp", edge, 5060, "127.0.30.20", port, conn_id))
    return {"AoR": aor, "Path": f"<sip:{token}@{edge};lr;ob>", "Expires": expires}


def test_path_flow_reads_the_token_of_the_first_path_entry():
    flow = soak.path_flow(binding("u0", "127.0.30.2", 7, 40000)["Path"])
    assert (flow.local_ip, flow.conn_id, flow.remote_ip, flow.remote_port) == ("127.0.30.2", 7, "127.0.30.20", 40000)
    assert soak.path_flow("<sip:127.0.30.2;lr>") is None


def test_live_connections_from_the_edges_tcp_lists():
    got = soak.live_connections({"127.0.30.2": [{"id": 3, "src_ip": "127.0.30.20", "src_port": 41000}]})
    assert got == {("127.0.30.2", 3, "127.0.30.20", 41000)}


def test_bindings_of_live_flows_are_live():
    live = {("127.0.30.2", 1, "127.0.30.20", 40001)}
    got = soak.check_bindings([binding("u0", "127.0.30.2", 1, 40001)], live, {"u0"})
    assert (got["live"], got["pending"], got["left_behind"], got["missing"]) == (1, 0, 0, 0)


def test_a_dead_flows_binding_is_pending_until_its_ua_registers_again_or_it_expires():
    live: set = set()
    dead = binding("u0", "127.0.30.2", 1, 40001, expires=30)
    got = soak.check_bindings([dead], live, set())
    assert (got["pending"], got["left_behind"]) == (1, 0)
    # the UA registered again over a new flow, yet the old binding stays: left behind
    got = soak.check_bindings([dead], live, {"u0"})
    assert (got["pending"], got["left_behind"], got["missing"]) == (0, 1, 1)
    # expired long ago and not removed: left behind, whatever the UA did
    overdue = binding("u1", "127.0.30.2", 2, 40002, expires=-int(soak.EXPIRY_SLACK_S) - 1)
    got = soak.check_bindings([overdue], live, set())
    assert got["left_behind"] == 1
    assert got["left_behind_bindings"][0]["why"] == "expired"


def test_a_connection_id_reused_by_another_peer_is_not_the_bindings_flow():
    live = {("127.0.30.2", 1, "127.0.30.20", 49999)}  # same id, other port
    got = soak.check_bindings([binding("u0", "127.0.30.2", 1, 40001)], live, {"u0"})
    assert (got["live"], got["left_behind"]) == (0, 1)


def test_duplicates_and_missing_registrations_are_counted():
    live = {("127.0.30.2", 1, "127.0.30.20", 40001), ("127.0.30.2", 2, "127.0.30.20", 40002)}
    bindings = [binding("u0", "127.0.30.2", 1, 40001), binding("u0", "127.0.30.2", 2, 40002)]
    got = soak.check_bindings(bindings, live, {"u0", "u9"})
    assert got["duplicates"] == 1
    assert got["missing"] == 1  # u9 registered but has no binding on a live flow


def test_verdict_needs_every_figure():
    base = {"calls": {"unexplained": 0}, "bindings": {"left_behind": 0},
            "memory": {"shm": {"edge1": {"flat": True}}, "rss": {"edge1:1": {"flat": True}}, "rss_anon": {}}}
    assert soak.verdict(base) == {"no_unexplained_failures": True, "memory_flat": True,
                                  "no_binding_left_behind": True, "private_memory_flat": False}
    base["memory"]["rss"]["edge1:1"]["flat"] = False
    base["calls"]["unexplained"] = 2
    got = soak.verdict(base)
    assert got["memory_flat"] is False
    assert got["no_unexplained_failures"] is False


def test_the_report_section_of_a_soak_carries_its_markers_rate_and_verdicts():
    import json

    results = json.loads((ROOT / "docs" / "soak-short.json").read_text())
    text = soak.render(results["soak"], results["command"])
    assert text.startswith(soak.BEGIN) and text.endswith(soak.END)
    assert f"calls at **{results['soak']['calls']['rate']} calls/s**" in text
    assert "A short validation run" in text  # shorter than 30 minutes: never shown as the figure
    failed = soak.render({"minutes": 30, "error": "edge1 exited"})
    assert "failed: `edge1 exited`" in failed


def native_binding(aor: str, edge: str, port: int, expires: int = 50) -> dict:
    """A binding whose Path token is laid out as the C outbound module makes
    it: MAC (10 bytes, not checked), protocol, edge address and port, device
    address and port, standard base64."""
    import base64
    import ipaddress

    raw = (bytes(10) + bytes([2]) + ipaddress.ip_address(edge).packed + (5060).to_bytes(2, "big")
           + ipaddress.ip_address("127.0.30.20").packed + port.to_bytes(2, "big"))
    token = base64.b64encode(raw).decode()
    return {"AoR": aor, "Path": f"<sip:{token}@{edge};lr;ob>", "Expires": expires}


def test_native_path_flow_reads_the_c_modules_token_layout():
    flow = soak.native_path_flow(native_binding("u0", "127.0.30.2", 40000)["Path"])
    assert (flow.local_ip, flow.conn_id, flow.remote_ip, flow.remote_port) == ("127.0.30.2", None, "127.0.30.20",
                                                                               40000)
    assert soak.native_path_flow("<sip:127.0.30.2;lr>") is None
    assert soak.native_path_flow("<sip:bm90LWEtdG9rZW4@127.0.30.2;lr>") is None  # base64, not 23 or 47 bytes


def test_a_token_without_a_connection_id_is_live_by_its_addresses():
    live = {("127.0.30.2", 5, "127.0.30.20", 40001)}
    got = soak.check_bindings([native_binding("u0", "127.0.30.2", 40001)], live, {"u0"},
                              flow_of=soak.native_path_flow)
    assert (got["live"], got["left_behind"]) == (1, 0)
    got = soak.check_bindings([native_binding("u0", "127.0.30.2", 40009)], live, {"u0"},
                              flow_of=soak.native_path_flow)
    assert (got["live"], got["left_behind"]) == (0, 1)


def test_a_soak_of_native_has_its_own_section_and_plot_and_names_each_processs_memory_parts():
    import json

    results = json.loads((ROOT / "docs" / "soak-short.json").read_text())
    data = {**results["soak"], "impl": "native"}
    memory = data["memory"] = dict(data["memory"])
    proc = next(iter(memory["rss"]))
    memory["names"] = {proc: "tcp main process"}
    memory["rss_shmem"] = {proc: {"first": 2048, "last": 4096, "ratio": 2.0, "flat": False}}
    text = soak.render(data, results["command"])
    begin, end = soak.markers("native")
    assert text.startswith(begin) and text.endswith(end) and begin != soak.BEGIN
    assert "(soak-native.png)" in text and soak.plot_name("native") == "soak-native.png"
    row = next(line for line in text.splitlines() if line.startswith(f"| {proc} |"))
    assert "| tcp main process |" in row and row.endswith("| 2.0 | 4.0 |")
