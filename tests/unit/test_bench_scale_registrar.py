"""Pure helpers of the registrar scale run (bench/scale_registrar.py): sizes,
usrloc hash and memory sizes, the cloned rows, the CPU split, the report
section, and report.py's handling of a results file holding only this part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import capacity  # noqa: E402
import scale_registrar as sr  # noqa: E402

import report  # noqa: E402

TEMPLATE = {
    "ruid": "uloc-6b1062c2-1cf5-1", "username": "stpl0", "domain": None,
    "contact": "sip:stpl0@127.0.40.11:5060;transport=UDP;ob", "received": None,
    "path": "<sip:EX8AKAITxH8AKAsTxAAAAABeSy3iifDuYRFl@127.0.40.2;lr;ob>", "expires": 2461377.3, "q": -1.0,
    "callid": "1-7438@127.0.40.11", "cseq": 2, "last_modified": 2461377.2, "flags": 0, "cflags": 64,
    "user_agent": "n/a", "socket": "udp:127.0.40.1:5070", "methods": None,
    "instance": "<urn:uuid:00000000-0000-4000-0093-000000000000>", "reg_id": 1, "server_id": 0,
    "connection_id": -1, "keepalive": 0, "partition": 0,
}


def test_sizes_are_parsed_sorted_and_deduplicated():
    assert sr.parse_sizes("1000000,10000,100000,10000") == (10000, 100000, 1000000)
    assert sr.parse_sizes("") == ()
    assert sr.parse_sizes("1_000_000") == (1000000,)
    with pytest.raises(ValueError):
        sr.parse_sizes("2")


def test_hash_exponent_gives_about_one_aor_per_slot_within_usrlocs_bounds():
    assert sr.hash_exponent(10_000) == 12  # 2500 AORs -> 4096 slots
    assert sr.hash_exponent(100_000) == 15  # 25000 -> 32768
    assert sr.hash_exponent(1_000_000) == 18  # 250000 -> 262144
    assert sr.hash_exponent(4) == 10  # never below the cfg default
    assert sr.hash_exponent(10**9) == 20


def test_shared_memory_grows_with_the_table():
    assert sr.shm_mb(0) == 512
    assert sr.shm_mb(1_000_000) > 512 + 1_000_000 * 1300 // 2**20


def test_uri_user_replacement_keeps_the_rest():
    assert sr.replace_uri_user("sip:a@h:5060;transport=UDP;ob", "b", "x:1") == "sip:b@x:1;transport=UDP;ob"
    assert sr.replace_uri_user("<sip:tok@e;lr;ob>", "new") == "<sip:new@e;lr;ob>"
    assert sr.uri_user("<sip:tok@e;lr;ob>") == "tok"
    assert sr.uri_user("<sip:e;lr>") == ""


def test_cloned_rows_are_distinct_bindings_shaped_as_the_template():
    rows = [sr.clone_row(TEMPLATE, i) for i in range(1000)]
    assert len({r["ruid"] for r in rows}) == 1000
    assert len({(r["username"], r["instance"], r["reg_id"]) for r in rows}) == 1000
    assert len({r["username"] for r in rows}) == 1000 // sr.BINDINGS_PER_AOR
    token = sr.uri_user(TEMPLATE["path"])
    for r in rows:
        assert len(sr.uri_user(r["path"])) == len(token)
        assert r["path"].endswith("@127.0.40.2;lr;ob>")
        assert r["contact"].startswith(f"sip:{r['username']}@198.18.") and r["contact"].endswith(";transport=UDP;ob")
        assert (r["cflags"], r["socket"], r["expires"], r["flags"]) == (64, "udp:127.0.40.1:5070", 2461377.3, 0)
    assert {r["reg_id"] for r in rows} == {1, 2}
    assert len({r["path"] for r in rows}) == 1000


def test_cpu_split_between_receivers_and_the_rest():
    before = {1: 100, 2: 50, 3: 10}
    after = {1: 150, 2: 80, 3: 30, 4: 5}  # 4 started in between
    cpu = sr.split_cpu(before, after, workers={2, 3}, clk_tck=100)
    assert cpu == {"all": 1.05, "workers": 0.5, "others": 0.55}
    assert sr.worker_pids([{"PID": 7, "DSC": "udp receiver child=0 sock=x"}, {"PID": 8, "DSC": "timer"},
                           {"PID": "9", "DSC": "tcp receiver (generic) child=1"}]) == {7, 9}
    assert sr.per_us(1.5, 1000) == 1500.0
    assert sr.per_us(1.0, 0) is None


def part(register: dict[int, float], calls: dict[int, float]) -> dict:
    return {"sizes": sorted(register), "register_rate": 100, "register_calls": 2000, "call_rate": 50,
            "calls": 500, "callees": 20, "usrloc_timer": 10, "seconds": 100.0,
            "impls": {"ours": {"template": TEMPLATE, "sizes": {
                str(n): {"bindings": n, "register_us": register[n], "call_tx_us": calls[n],
                         "shm_bytes_per_binding": 1272, "load_seconds": 1.0} for n in register}}}}


def test_cost_ratio_is_largest_over_smallest_size():
    sizes = part({10_000: 1000.0, 100_000: 1100.0, 1_000_000: 1300.0}, {10_000: 500.0, 100_000: 510.0,
                                                                        1_000_000: 550.0})["impls"]["ours"]["sizes"]
    assert sr.cost_ratio(sizes, "register_us") == 1.3
    assert sr.cost_ratio(sizes, "call_tx_us") == 1.1
    assert sr.cost_ratio({"10": {"register_us": 5.0}}, "register_us") is None


def test_section_names_the_target_honestly():
    flat = sr.render({"scale_registrar": part({10_000: 1000.0, 1_000_000: 1100.0}, {10_000: 500.0, 1_000_000: 590.0})})
    assert flat.startswith(sr.BEGIN) and flat.endswith(sr.END)
    assert "| 10,000 | 1,000,000 |" in flat
    assert "ours (10,000 -> 1,000,000): REGISTER x1.1, call transaction x1.18: met" in flat
    steep = sr.render({"scale_registrar": part({10_000: 1000.0, 1_000_000: 1300.0}, {10_000: 500.0, 1_000_000: 510.0})})
    assert "REGISTER x1.3, call transaction x1.02: not met" in steep
    failed = part({10_000: 1000.0}, {10_000: 500.0})
    failed["impls"]["ours"]["sizes"]["1000000"] = {"bindings": 1000000, "error": "pkg memory exhausted"}
    text = sr.render({"scale_registrar": failed})
    assert "ours at 1,000,000 bindings failed: `pkg memory exhausted`" in text
    assert "not met" in text
    assert "failed: `boom`" in sr.render({"scale_registrar": {"error": "boom"}})


def test_report_on_a_scale_only_results_file_replaces_only_its_section(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"head\n{report.BEGIN}\nMAIN RESULTS\n{report.END}\nmiddle\n{sr.BEGIN}\nold\n{sr.END}\ntail\n")
    results = {"command": "bench/run.py --only-scale", "machine": {"cpu": "x", "cores": 2}, "rounds": [],
               "scale_registrar": part({10_000: 1000.0, 100_000: 1010.0}, {10_000: 500.0, 100_000: 505.0})}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert report.main([str(path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "MAIN RESULTS" in text and "old" not in text
    assert text.startswith("head\n") and text.endswith("tail\n") and "| 10,000 | 100,000 |" in text
    assert (tmp_path / "scale-registrar.png").stat().st_size > 0
    assert capacity.main([str(path), "--skip-incomplete"]) == 0
    assert capacity.main([str(path)]) == 1
