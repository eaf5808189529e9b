"""Pure helpers of the benchmark (bench/analysis.py): /proc parsing, SIPp
statistics, ramp verdicts, latency lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import analysis  # noqa: E402
from analysis import ProcStat, SippStats, Step  # noqa: E402


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 1 0"


def test_proc_stat_fields_even_with_spaces_and_parens_in_the_name():
    stat = analysis.parse_proc_stat(stat_line(42, "kamailio (udp) x)", 7, 1500, 230))
    assert stat == ProcStat(pid=42, ppid=7, utime=1500, stime=230)


def test_proc_stat_rejects_garbage():
    with pytest.raises(ValueError):
        analysis.parse_proc_stat("not a stat line")


def test_cpu_ticks_sum_the_whole_process_tree_and_nothing_else():
    stats = [ProcStat(10, 1, 5, 1), ProcStat(11, 10, 7, 3), ProcStat(12, 11, 2, 2),
             ProcStat(20, 1, 100, 100), ProcStat(21, 20, 50, 0)]
    assert analysis.cpu_ticks(10, stats) == 5 + 1 + 7 + 3 + 2 + 2
    assert [s.pid for s in analysis.descendants(10, stats)] == [10, 11, 12]
    assert analysis.cpu_ticks(99, stats) == 0


SIPP_CSV = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(C);TotalCallCreated;SuccessfulCall(C);FailedCall(C);"
    "Retransmissions(C);\n"
    "2026-11-22\t02:51:31.000000\t1000.000000;x;2026-11-22\t02:51:31.000000\t1000.000000;00:00:00;0;0;0;0;\n"
    "2026-11-22\t02:51:31.000000\t1000.000000;x;2026-11-22\t02:51:33.500000\t1002.500000;00:00:02;"
    "1000;998;2;7;\n"
)


def test_sipp_stat_csv_last_row_and_epoch_elapsed_time():
    stats = analysis.parse_sipp_stat_csv(SIPP_CSV)
    assert stats == SippStats(created=1000, successful=998, failed=2, elapsed=2.5, retransmissions=7)
    assert stats.throughput == pytest.approx(399.2)


def test_sipp_stat_csv_without_data_row_is_an_error():
    with pytest.raises(ValueError):
        analysis.parse_sipp_stat_csv(SIPP_CSV.splitlines()[0])


def step(offered: float, ok: int, failed: int = 0, elapsed: float = 1.0, created: int | None = None) -> Step:
    return Step(offered, SippStats(created if created is not None else ok + failed, ok, failed, elapsed, 0))


def test_step_passes_below_one_per_mille_failures_and_when_it_kept_up():
    assert step(1000, ok=1000).passed
    assert step(1000, ok=9991, failed=9, elapsed=10).passed  # 0.09 %
    assert not step(1000, ok=9990, failed=10, elapsed=10).passed  # 0.1 %
    assert not step(1000, ok=1000, elapsed=1.2).passed  # carried 833/s of 1000/s offered
    assert not step(1000, ok=999, created=1010).passed  # calls never finished count as failed


def test_highest_passing_rate_stops_at_the_first_failure():
    steps = [step(500, ok=500), step(1000, ok=1000), step(1500, ok=1400, failed=100), step(2000, ok=2000)]
    assert analysis.highest_passing_rate(steps) == 1000
    assert analysis.highest_passing_rate([step(500, ok=0, failed=500)]) == 0


def test_route_latencies_from_kamailio_log_lines():
    log = (" 1(123) INFO: <core> [core/receive.c:528]: receive_msg(): request-route executed in: 17 usec\n"
           " 2(124) INFO: <core> [core/receive.c:617]: receive_msg(): reply-route executed in: 5 usec\n"
           " 1(123) NOTICE: something else\n"
           " 1(123) INFO: <core> [core/receive.c:528]: receive_msg(): request-route executed in: 230 usec\n")
    assert analysis.route_latencies(log) == {"request": [17, 230], "reply": [5]}


def test_percentile_nearest_rank_and_median_ratio_helpers():
    values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert analysis.percentile(values, 0.5) == 50
    assert analysis.percentile(values, 0.9) == 90
    assert analysis.percentile([], 0.5) == 0.0
    assert analysis.median([3, None, 1, 2]) == 2
    assert analysis.median([None]) is None
    assert analysis.ratio(2.0, 4.0) == 0.5
    assert analysis.ratio(None, 4.0) is None and analysis.ratio(1.0, 0) is None
    assert analysis.per_thousand(0.5, 2000) == 0.25 and analysis.per_thousand(1.0, 0) is None


def test_report_says_when_the_figures_include_authentication():
    import report

    base = {"machine": {"cores": 2, "cpu": "x", "kernel": "k", "kamailio": "kam", "sipp": "sipp", "python": "3"},
            "command": "bench/run.py", "rounds": [], "seconds": 1}
    assert "authentication" not in report.machine(base)  # a run from before issue 11
    text = report.machine({**base, "auth": {"on": True, "db": "sqlite", "challenged": "every REGISTER (401)"}})
    assert "digest authentication on for both sides" in text and "REGISTER, 401, REGISTER, 200" in text
