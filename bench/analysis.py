"""Pure helpers of the benchmark: /proc accounting, SIPp statistics, ramp and
latency analysis. No processes, sockets or clocks here (unit-tested in
tests/unit/test_bench_analysis.py)."""

from __future__ import annotations

import datetime
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# A ramp step passes when fewer than this share of its calls failed ...
MAX_FAILURE_RATIO = 0.001
# ... and the server kept up: this share of the offered rate was carried.
MIN_CARRIED_RATIO = 0.95


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark reads (proc(5))."""

    pid: int
    ppid: int
    utime: int  # clock ticks
    stime: int


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line. The command name (field 2) is in
    parentheses and may itself hold spaces or parentheses: split after the
    last ')'."""
    pid_text, _, rest = text.partition(" (")
    close = rest.rfind(")")
    if not pid_text.strip().isdigit() or close < 0:
        raise ValueError(f"not a /proc/PID/stat line: {text[:60]!r}")
    fields = rest[close + 1:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15
    return ProcStat(int(pid_text), int(fields[1]), int(fields[11]), int(fields[12]))


def descendants(root: int, stats: Iterable[ProcStat]) -> list[ProcStat]:
    """``root`` and every process below it, from a snapshot of all processes."""
    by_parent: dict[int, list[ProcStat]] = {}
    found: dict[int, ProcStat] = {}
    for stat in stats:
        by_parent.setdefault(stat.ppid, []).append(stat)
        found[stat.pid] = stat
    out = [found[root]] if root in found else []
    todo = [root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def cpu_ticks(root: int, stats: Iterable[ProcStat]) -> int:
    """utime + stime of ``root`` and all its descendants, in clock ticks."""
    return sum(s.utime + s.stime for s in descendants(root, stats))


@dataclass(frozen=True, slots=True)
class SippStats:
    """Final counters of one SIPp run (from its -trace_stat CSV)."""

    created: int
    successful: int
    failed: int
    elapsed: float  # seconds
    retransmissions: int

    @property
    def throughput(self) -> float:
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0


def parse_sipp_epoch(cell: str) -> float:
    """SIPp's time cells are ``date<TAB>time<TAB>epoch.micro``: the epoch."""
    parts = cell.strip().split("\t")
    try:
        return float(parts[-1])
    except ValueError:
        raise ValueError(f"not a SIPp time cell: {cell!r}") from None


def parse_sipp_stat_csv(text: str) -> SippStats:
    """The last row of a SIPp ``-trace_stat`` file (cumulative columns ``(C)``)."""
    rows = [line.rstrip(";").split(";") for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError("SIPp stat file has no data row")
    header, last = rows[0], rows[-1]
    cell = dict(zip(header, last, strict=False))
    return SippStats(
        created=int(cell["TotalCallCreated"]),
        successful=int(cell["SuccessfulCall(C)"]),
        failed=int(cell["FailedCall(C)"]),
        # ElapsedTime(C) has whole seconds only: use the epoch columns
        elapsed=parse_sipp_epoch(cell["CurrentTime"]) - parse_sipp_epoch(cell["StartTime"]),
        retransmissions=int(cell.get("Retransmissions(C)", "0") or 0),
    )


@dataclass(frozen=True, slots=True)
class Step:
    """One ramp step: the offered rate and what SIPp measured."""

    offered: float
    stats: SippStats

    @property
    def failure_ratio(self) -> float:
        total = self.stats.successful + self.stats.failed
        unfinished = max(0, self.stats.created - total)
        total += unfinished
        return 1.0 if total == 0 else (self.stats.failed + unfinished) / total

    @property
    def passed(self) -> bool:
        return (self.failure_ratio < MAX_FAILURE_RATIO
                and self.stats.throughput >= MIN_CARRIED_RATIO * self.offered)


def highest_passing_rate(steps: Sequence[Step]) -> float:
    """The highest offered rate below the first failing step (0 when the
    lowest step already failed). A pass above a failure does not count."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s.offered):
        if not step.passed:
            break
        best = step.offered
    return best


LATENCY_LINE = re.compile(r"(request|reply)-route executed in: (\d+) usec")


def route_latencies(log_text: str) -> dict[str, list[int]]:
    """Microseconds of every ``latency_cfg_log`` line, by route kind."""
    out: dict[str, list[int]] = {"request": [], "reply": []}
    for match in LATENCY_LINE.finditer(log_text):
        out[match.group(1)].append(int(match.group(2)))
    return out


TRACE_BLOCK = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$", re.M)


def setup_times_ms(trace: str) -> list[float]:
    """Call setup times in ms from a SIPp ``-trace_msg`` file (its stamps have
    microseconds; SIPp's own response times tick in 4 ms steps here): for each
    Call-ID, from the first INVITE sent to the first 200 received for an INVITE.
    Calls without a 200 are left out (SIPp counts them as failed)."""
    parts = TRACE_BLOCK.split(trace)
    first_invite: dict[str, float] = {}
    answered: dict[str, float] = {}
    for stamp_text, body in zip(parts[1::2], parts[2::2], strict=False):
        stamp = datetime.datetime.strptime(stamp_text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        lines = [line.strip() for line in body.strip().splitlines()]
        if len(lines) < 2:
            continue
        sent = " sent" in lines[0]
        start = lines[2] if len(lines) > 2 and not lines[1] else lines[1]
        call_id = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("call-id:")), "")
        cseq = next((line for line in lines if line.lower().startswith("cseq:")), "")
        if not call_id:
            continue
        if sent and start.startswith("INVITE "):
            first_invite.setdefault(call_id, stamp)
        elif not sent and start.startswith("SIP/2.0 200") and cseq.endswith("INVITE"):
            answered.setdefault(call_id, stamp)
    return [(answered[c] - first_invite[c]) * 1000 for c in answered if c in first_invite]


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(ours: float | None, native: float | None) -> float | None:
    if ours is None or native is None or native == 0:
        return None
    return ours / native


def per_thousand(cpu_seconds: float, transactions: int) -> float | None:
    return None if transactions <= 0 else cpu_seconds * 1000.0 / transactions


def merge_samples(rounds: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Median of each metric over rounds (a metric missing in a round is skipped)."""
    keys = sorted({k for r in rounds for k in r})
    return {k: median(r.get(k) for r in rounds) for k in keys}
