"""Pure helpers of the edge scale run (bench/scale_edge.py): sizes, steps,
descriptor ceilings, per-flow and per-transaction figures, the targets, the
doc section, and report.py / capacity.py on a results file that has only the
scale run."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import capacity  # noqa: E402
import scale_edge as se  # noqa: E402

import report  # noqa: E402


def test_sizes_are_sorted_distinct_and_empty_means_skip():
    assert se.parse_sizes("100000,10000,50000,10000") == [10000, 50000, 100000]
    assert se.parse_sizes("") == []
    assert se.parse_sizes(" 1000 , 3000 ") == [1000, 3000]
    with pytest.raises(ValueError):
        se.parse_sizes("1000,0")


def test_increments_are_cumulative():
    assert se.increments([10000, 50000, 100000]) == [(0, 10000), (10000, 40000), (50000, 50000)]
    assert se.increments([1000]) == [(0, 1000)]


def test_chunks_cover_the_increment_with_bounded_processes():
    parts = se.chunks(10000, 40000)
    assert parts == [(10000, 10000), (20000, 10000), (30000, 10000), (40000, 10000)]
    odd = se.chunks(0, 25001)
    assert len(odd) == 3 and sum(n for _, n in odd) == 25001 and max(n for _, n in odd) <= se.USERS_PER_SIPP
    assert [s for s, _ in odd] == [0, odd[0][1], odd[0][1] + odd[1][1]]
    # small increments still use two processes (two source addresses)
    assert se.chunks(0, 1000) == [(0, 500), (500, 500)]
    assert se.chunks(5, 1) == [(5, 1)]
    assert se.chunks(0, 0) == []


def test_flow_ceiling_and_clipping():
    ceiling = se.flow_ceiling(20000, 11)
    assert ceiling == 20000 - se.FD_RESERVE - 11
    assert se.clip_sizes([10000, 50000, 100000], ceiling) == ([10000, ceiling], [50000, 100000])
    assert se.clip_sizes([1000, 3000], ceiling) == ([1000, 3000], [])
    assert se.clip_sizes([ceiling, 50000], ceiling) == ([ceiling], [50000])
    assert se.flow_ceiling(100, 11) == 0
    assert se.clip_sizes([1000], 0) == ([], [1000])


def test_per_flow_and_per_transaction():
    assert se.per_flow(2_000_000 + 17_000 * 100, 2_000_000, 100) == 17_000
    assert se.per_flow(5, 1, 0) is None
    assert se.us_per(0.5, 1000) == pytest.approx(500.0)
    assert se.us_per(0.5, 0) is None


def test_edge_shm_covers_the_largest_size():
    assert se.edge_shm_mb(1000) == 512
    assert se.edge_shm_mb(100_000) * 2**20 >= 100_000 * se.SHM_BYTES_PER_FLOW_BUDGET
    assert se.usrloc_hash(1000) == 10
    assert se.usrloc_hash(100_000) == 14
    assert se.usrloc_hash(10_000_000) == 16


def test_flatness_against_10k_or_the_smallest_size():
    assert se.flatness({1000: 90.0, 10000: 100.0, 19000: 115.0}) == pytest.approx(1.15)
    assert se.flatness({1000: 100.0, 3000: 130.0}) == pytest.approx(1.3)
    assert se.flatness({10000: 100.0}) is None
    assert se.flatness({10000: 100.0, 50000: None}) is None
    assert se.flatness({10000: 0.0, 50000: 10.0}) is None


def row(size: int, reg_edge: float, call_edge: float, shm_edge: int) -> dict:
    return {"size": size, "flows": size, "register_seconds": 2.0, "flows_per_second": size / 2.0,
            "edge_tcp_connections": size + 11, "hold_failed": 0,
            "shm_bytes_per_flow": {"edge": shm_edge, "registrar": 1480},
            "idle_cpu_ms_per_s": {"edge": 0.0, "registrar": 0.0},
            "refresh": {"registrations": 2000, "failed": 0, "cpu_us": {"edge": reg_edge, "registrar": 500}},
            "calls": {"calls": 500, "failed": 0, "cpu_us_per_tx": {"edge": call_edge, "registrar": 600}}}


def scale_results() -> dict:
    return {"command": "bench/run.py --only-scale", "machine": {"cpu": "test cpu", "cores": 2}, "rounds": [],
            "scale_edge": {
                "asked": [10000, 50000, 100000], "sizes": [10000, 19689], "clipped": [50000, 100000],
                "limits": {"why": "RLIMIT_NOFILE hard 20000"}, "seconds": 300,
                "settings": {"hold_rate": 500, "refresh_users": 1000, "refresh_rate": 200, "refresh_count": 2000,
                             "call_rate": 50, "call_count": 500, "callees": 10, "idle_seconds": 3,
                             "usrloc_hash": 12},
                "impls": {"ours": {"sizes": [row(10000, 1000, 2000, 17900), row(19689, 1300, 2100, 17900)]},
                          "native": {"sizes": [row(10000, 500, 1000, 17500), row(19689, 520, 1050, 17500)]},
                          "floor": {"error": "edge exited", "sizes": []}}}}


def test_targets_say_what_was_met():
    got = {(t["impl"], t["figure"]): t for t in se.targets(scale_results()["scale_edge"])}
    ours_reg = got[("ours", "CPU per REGISTER refresh, edge")]
    assert ours_reg["ratio"] == pytest.approx(1.3) and ours_reg["met"] is False
    native_call = got[("native", "CPU per call transaction, edge")]
    assert native_call["ratio"] == pytest.approx(1.05) and native_call["met"] is True
    assert got[("floor", "CPU per REGISTER refresh, edge")]["met"] is None
    shm = got[("ours", "edge shared memory per flow at 19,689 flows, ours / native")]
    assert shm["met"] is False and shm["ratio"] == pytest.approx(17900 / 17500)


def test_render_shows_sizes_clipping_errors_and_targets():
    text = se.render(scale_results())
    assert text.startswith(se.BEGIN) and text.endswith(se.END)
    assert "Not attempted: 50,000, 100,000 flows. RLIMIT_NOFILE hard 20000" in text
    assert "| ours | 19,689 |" in text and "| native | 10,000 |" in text
    assert "| floor | error: edge exited |" in text
    assert "| ours | CPU per REGISTER refresh, edge | 1.3 | no |" in text
    assert se.render({"rounds": []}).count("No edge scale run") == 1


DOC = f"""# doc
<!-- bench:results:begin -->
the rounds' tables
<!-- bench:results:end -->
between
{se.BEGIN}
old scale text
{se.END}
tail
"""


def test_report_on_a_scale_only_file_replaces_only_the_scale_section(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(scale_results()))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    png = tmp_path / "benchmarks.png"
    assert report.main([str(results), "--doc", str(doc), "--png", str(png)]) == 0
    text = doc.read_text()
    assert "the rounds' tables" in text and "old scale text" not in text
    assert "| ours | 19,689 |" in text and text.endswith("tail\n") and "between" in text
    assert not png.exists() and (tmp_path / "scale-edge.png").stat().st_size > 0


def test_capacity_skips_a_scale_only_file(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(scale_results()))
    doc = tmp_path / "scaling.md"
    doc.write_text("<!-- capacity:begin -->\nold\n<!-- capacity:end -->\n")
    assert capacity.main([str(results), "--doc", str(doc), "--skip-incomplete"]) == 0
    assert "old" in doc.read_text()
    assert "docs not updated" in capsys.readouterr().err


def test_raise_nofile_never_lowers_the_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = se.raise_nofile(1)
    assert (got["soft"], got["hard"]) == (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert "refused" not in got


def test_rounded_keeps_missing_figures_missing():
    assert se.rounded(None) is None
    assert se.rounded(1234.6) == 1235 and isinstance(se.rounded(1234.6), int)
    assert se.rounded(1.23456, 2) == 1.23


def test_a_size_not_reached_is_left_out_of_the_targets():
    part = scale_results()["scale_edge"]
    short = row(19689, 5000, 9000, 9000)
    short["flows"] = 15000
    part["impls"]["native"]["sizes"][1] = short
    got = {(t["impl"], t["figure"]): t for t in se.targets(part)}
    assert got[("native", "CPU per REGISTER refresh, edge")]["ratio"] is None
    assert ("ours", "edge shared memory per flow at 10,000 flows, ours / native") in got


def test_a_size_is_reached_with_a_few_flows_missing():
    assert se.reached({"size": 10000, "flows": 9999})
    assert se.reached({"size": 10000, "flows": 9950})
    assert not se.reached({"size": 10000, "flows": 9949})
    assert not se.reached({"flows": 10000})
