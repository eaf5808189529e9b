"""The edge scale run (issue 17; docs/benchmarks.md, "Edge scale"): one edge
holding many concurrent registered TCP flows, and what a flow, a REGISTER
refresh and a call cost at each size.

For each implementation (ours, native, floor; started as in the rounds, with
bench/run.py's impl_defines and BenchKamailio) a registrar and one edge are
started fresh. Ten callee UAs (one TCP flow each, answering calls) and a fixed
set of refresh users (registered once over one TCP connection) come first;
then the held flows are built up cumulatively to each size (e.g. 10k, then
+40k, then +50k) by several SIPp processes, each ``-t tn`` (one TCP connection
per user) from its own source address with its own range of users
(bench/sipp/scale-hold/register.xml: register, then hold the flow open). At
each size, with no transaction left:

* shared memory per flow: ``core.shmmem`` real_used of the edge and of the
  registrar, less the same figure before the first held flow, divided by the
  held flows (a flow is held when the registrar has its binding and the edge
  its connection open: the smaller of the contacts and of the edge's open TCP
  connections added since then);
* the time to register the increment (SIPp's start until the registrar holds
  every binding) and flows per second;
* idle CPU: the edge's and registrar's CPU (utime + stime of every process,
  /proc) over a few seconds with nothing sent, per second;
* CPU per REGISTER refresh: the refresh users registered again at a fixed
  modest rate over one TCP connection, CPU of each role over that window per
  successful REGISTER (a registration: REGISTER, 401, REGISTER, 200);
* CPU per call transaction: calls at a fixed modest rate over UDP to the
  callees (bench/sipp/caller/uac.xml, as in the rounds), CPU per INVITE or BYE
  (two per call).

The held flows cost file descriptors: the edge's tcp main process holds one
per connection, and a SIPp one per call. The run raises the soft RLIMIT_NOFILE
of its own process to the hard limit (its SIPp and Kamailio children inherit
it) and, if it may, the hard limit too; sizes above what the limit allows are
not attempted but recorded as clipped with the reason. Kamailio's TCP
connection limit (2048 by default; 5.6 refuses to raise it at run time with
``cfg.seti``) is set at start: ``-A KO_TCP_MAX_CONNECTIONS`` (cfg/edge.cfg and
bench/native/edge.cfg, tcp_max_connections).

The pure helpers (sizes, ceilings, ratios, rendering) are unit-tested in
tests/unit/test_bench_scale_edge.py.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BEGIN = "<!-- bench:scale-edge:begin -->"
END = "<!-- bench:scale-edge:end -->"
IMPLS = ("ours", "native", "floor")
DEFAULT_SIZES = "10000,50000,100000"
USERS_PER_SIPP = 10_000  # one SIPp process's range of users (well below its ~28k ephemeral ports)
FD_RESERVE = 300  # descriptors of the edge's tcp main process that are not held flows (sockets, pipes, logs)
SHM_BYTES_PER_FLOW_BUDGET = 40_000  # -m of the edge: native measured ~17 kB per flow here
REFERENCE_SIZE = 10_000  # the cost at this size is the one the targets compare against
REACH_SHARE = 0.995  # a size is reached when this share of its flows is held
FLAT_TARGET = 1.2  # issue 17: cost at the largest size within 1.2x of the cost at 10k
CALLEES = 10
# addresses of the run's /24: servers, then SIPp sources
REGISTRAR_HOST, EDGE_HOST = 61, 62
REFRESH_HOST, CALLEE_HOST, CALLER_HOST = 90, 91, 92
HOLD_HOST = 100  # held flows: 100, 101, ... (one address per SIPp process)
# registrations per second offered over all the hold SIPps of an increment: a modest rate
# that every implementation carries on this shared 2-core machine (ours carried about 130-180/s
# of it here while other runs loaded the machine), so that the run measures held flows, not
# an overload
HOLD_RATE = 250
REFRESH_USERS = 1000
REFRESH_RATE = 200
REFRESH_COUNT = 2000  # each refresh user twice per size
CALL_RATE = 50
CALL_COUNT = 500
IDLE_SECONDS = 3.0
RECV_TIMEOUT_MS = 10_000
FLOW_TIMER = 999  # the registrars' Flow-Timer for the run (s; ours' highest): longer than the holds
# SIPp ends a test once its watchdog (its main loop late by 500 ms, 3 s) has tripped 120
# (10) times: the held flows' SIPps live for minutes on a loaded shared machine, and all
# their flows would close at once. They count the trips but never stop for them.
LONG_LIVED = ["-watchdog_minor_maxtriggers", "100000000", "-watchdog_major_maxtriggers", "100000000"]


# ---------------------------------------------------------------- pure helpers


def parse_sizes(text: str) -> list[int]:
    """``--scale-flows`` "10000,50000,100000": the sizes, ascending and distinct
    ("" gives none: the scale run is skipped)."""
    sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    if any(s <= 0 for s in sizes):
        raise ValueError(f"flow counts must be positive: {text!r}")
    return sizes


def flow_ceiling(nofile: int, other_connections: int, reserve: int = FD_RESERVE) -> int:
    """Held flows one edge can take when each of its processes may open
    ``nofile`` descriptors: the tcp main process holds one per TCP connection,
    besides its ``reserve`` and the run's ``other_connections`` (callees,
    the refresh connection)."""
    return max(0, nofile - reserve - other_connections)


def clip_sizes(sizes: Sequence[int], ceiling: int) -> tuple[list[int], list[int]]:
    """(sizes to run, sizes not attempted): the sizes above ``ceiling`` are
    replaced by the ceiling itself, once, so the largest reachable size is
    still measured."""
    run = [s for s in sizes if s <= ceiling]
    over = [s for s in sizes if s > ceiling]
    if over and ceiling > 0 and ceiling not in run:
        run.append(ceiling)
    return run, over


def increments(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(first user, count) of each cumulative step: 10k, 50k, 100k gives
    (0, 10000), (10000, 40000), (50000, 50000)."""
    out, held = [], 0
    for size in sizes:
        out.append((held, size - held))
        held = size
    return out


def chunks(first: int, count: int, per_sipp: int = USERS_PER_SIPP) -> list[tuple[int, int]]:
    """(first user, count) of each SIPp process of one increment: at most
    ``per_sipp`` users each and at least two processes (when there are two users),
    split evenly."""
    if count <= 0:
        return []
    parts = max(min(2, count), math.ceil(count / per_sipp))
    base, extra = divmod(count, parts)
    out, start = [], first
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append((start, n))
        start += n
    return out


def per_flow(after: int, before: int, flows: int) -> float | None:
    """Bytes per flow of a memory figure's growth (None without flows)."""
    return None if flows <= 0 else (after - before) / flows


def us_per(cpu_seconds: float, transactions: int) -> float | None:
    """CPU µs per transaction (None without transactions)."""
    return None if transactions <= 0 else cpu_seconds * 1e6 / transactions


def edge_shm_mb(largest: int) -> int:
    """-m (MB) of the scale run's edge: room for ``largest`` flows at
    SHM_BYTES_PER_FLOW_BUDGET each, and the rounds' 512 MB at least."""
    return max(512, math.ceil(largest * SHM_BYTES_PER_FLOW_BUDGET / 2**20) + 256)


def raise_nofile(wanted: int) -> dict:
    """Raise this process's RLIMIT_NOFILE (inherited by the SIPp and Kamailio
    children started after it) to ``wanted``, or as far as allowed: the soft
    limit up to the hard one, the hard one only with CAP_SYS_RESOURCE. What
    was asked, got and refused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict = {"wanted": wanted, "soft_before": soft, "hard_before": hard}
    if hard != resource.RLIM_INFINITY and wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError) as exc:
            out["refused"] = (f"setrlimit(RLIMIT_NOFILE, {wanted}) refused: {exc} (hard limit {hard}; raising it "
                              "needs CAP_SYS_RESOURCE, which this machine's processes lack)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    out["soft"], out["hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)
    return out


def flatness(values: dict[int, float | None], reference: int = REFERENCE_SIZE) -> float | None:
    """Cost at the largest size over the cost at ``reference`` (or at the
    smallest size when the run has no ``reference``); None when either is missing."""
    present = {k: v for k, v in values.items() if v is not None}
    if len(present) < 2:
        return None
    ref = reference if reference in present else min(present)
    top = max(present)
    if top == ref or not present[ref]:
        return None
    return present[top] / present[ref]


# figures of one size: (key, label, unit, getter)
def _get(*path: str) -> Callable[[dict], float | None]:
    def get(row: dict) -> float | None:
        value: object = row
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) else None
    return get


COSTS: list[tuple[str, str, Callable[[dict], float | None]]] = [
    ("CPU per REGISTER refresh, edge", "µs", _get("refresh", "cpu_us", "edge")),
    ("CPU per REGISTER refresh, registrar", "µs", _get("refresh", "cpu_us", "registrar")),
    ("CPU per call transaction, edge", "µs", _get("calls", "cpu_us_per_tx", "edge")),
    ("CPU per call transaction, registrar", "µs", _get("calls", "cpu_us_per_tx", "registrar")),
    ("shared memory per flow, edge", "B", _get("shm_bytes_per_flow", "edge")),
    ("shared memory per flow, registrar", "B", _get("shm_bytes_per_flow", "registrar")),
]


def reached(row: dict) -> bool:
    """A size counts (for the targets, and for going on to the next size) when
    the edge held at least REACH_SHARE of its flows: on this loaded machine one
    registration in thousands can time out (SIPp's 10 s receive timeout), and
    its flow is then missing; the figures are per flow actually held."""
    return "size" in row and row.get("flows", 0) >= REACH_SHARE * row["size"]


def by_size(rows: list[dict], get: Callable[[dict], float | None]) -> dict[int, float | None]:
    """A figure at each size that was reached."""
    return {int(r["size"]): get(r) for r in rows if reached(r)}


def targets(part: dict) -> list[dict]:
    """The issue's two scale targets, per implementation and figure: CPU per
    transaction at the largest size within FLAT_TARGET of the cost at 10k, and
    ours' shared memory per flow at most native's (at the largest size both
    reached). Sizes not reached (fewer flows held) are left out."""
    out = []
    impls = part.get("impls", {})
    for impl in IMPLS:
        rows = impls.get(impl, {}).get("sizes", [])
        for label, _unit, get in COSTS[:4]:
            rat = flatness(by_size(rows, get))
            out.append({"impl": impl, "figure": label, "ratio": rat,
                        "met": None if rat is None else rat <= FLAT_TARGET})
    ours, native = impls.get("ours", {}).get("sizes", []), impls.get("native", {}).get("sizes", [])
    shared = sorted(set(by_size(ours, COSTS[4][2])) & set(by_size(native, COSTS[4][2])))
    if shared:
        top = shared[-1]
        o, n = by_size(ours, COSTS[4][2])[top], by_size(native, COSTS[4][2])[top]
        out.append({"impl": "ours", "figure": f"edge shared memory per flow at {top:,} flows, ours / native",
                    "ratio": None if o is None or not n else o / n,
                    "met": None if o is None or n is None else o <= n})
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def render(results: dict) -> str:
    """The doc section (between BEGIN and END) for ``results["scale_edge"]``."""
    part = results.get("scale_edge")
    if not part:
        return f"{BEGIN}\n\nNo edge scale run in these results.\n\n{END}"
    if "error" in part and not part.get("impls"):
        return f"{BEGIN}\n\nEdge scale run failed: `{part['error'][:500]}`\n\n{END}"
    lim = part.get("limits", {})
    lines = [BEGIN, "", f"From `{results.get('command', 'bench/run.py')}` "
             f"({results.get('machine', {}).get('cpu', '')}, {results.get('machine', {}).get('cores', '?')} cores, "
             f"{fmt(part.get('seconds'))} s). Sizes asked: {', '.join(f'{s:,}' for s in part.get('asked', []))}; "
             f"measured: {', '.join(f'{s:,}' for s in part.get('sizes', []))}."]
    if part.get("clipped"):
        lines += ["", f"Not attempted: {', '.join(f'{s:,}' for s in part['clipped'])} flows. {lim.get('why', '')}"]
    s = part.get("settings", {})
    lines += ["", f"Held flows registered at {s.get('hold_rate')}/s offered (over all SIPp processes of a step, "
              f"at most {s.get('users_per_sipp', USERS_PER_SIPP):,} users each, one source address each); refresh: "
              f"{s.get('refresh_count')} REGISTERs of {s.get('refresh_users')} users at {s.get('refresh_rate')}/s over "
              f"one TCP connection; calls: {s.get('call_count')} at {s.get('call_rate')}/s over UDP to "
              f"{s.get('callees')} TCP callees; idle window {s.get('idle_seconds')} s. Registrars: usrloc in memory "
              f"(db_mode 0), hash_size 2^{s.get('usrloc_hash')}, Flow-Timer {s.get('flow_timer', 25)} s (the held "
              "flows send no keepalives; our edge closes a flow idle for Flow-Timer + 20 s). CPU is utime + stime of "
              "every process of the role over the window (idle cost included), per successful REGISTER or per "
              "INVITE/BYE.", ""]
    head = ("| impl | flows held | edge TCP connections | register step s | flows/s | edge shm B/flow | "
            "registrar shm B/flow | idle CPU ms/s edge, registrar | REGISTER µs edge | REGISTER µs registrar "
            "| call tx µs edge | call tx µs registrar | failed (hold, refresh, calls) |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for impl in IMPLS:
        got = part.get("impls", {}).get(impl)
        if not got:
            continue
        if got.get("error"):
            lines.append(f"| {impl} | error: {got['error'][:200]} |" + " |" * 11)
        for r in got.get("sizes", []):
            idle = r.get("idle_cpu_ms_per_s", {})
            lines.append(
                f"| {impl} | {r.get('flows', 0):,} | {r.get('edge_tcp_connections', 0):,} | "
                f"{fmt(r.get('register_seconds'))} | {fmt(r.get('flows_per_second'))} | "
                f"{fmt(_get('shm_bytes_per_flow', 'edge')(r))} | {fmt(_get('shm_bytes_per_flow', 'registrar')(r))} | "
                f"{fmt(idle.get('edge'))}, {fmt(idle.get('registrar'))} | "
                f"{fmt(COSTS[0][2](r))} | {fmt(COSTS[1][2](r))} | {fmt(COSTS[2][2](r))} | {fmt(COSTS[3][2](r))} | "
                f"{r.get('hold_failed', 0)}, {_get('refresh', 'failed')(r) or 0:g}, "
                f"{_get('calls', 'failed')(r) or 0:g} |")
    lines += ["", f"Targets (issue 17): CPU per transaction at the largest size within {FLAT_TARGET}x of the cost "
              f"at {REFERENCE_SIZE:,} flows (the smallest size when {REFERENCE_SIZE:,} was not run); ours' shared "
              "memory per flow at most native's.", "", "| impl | figure | ratio | target met |", "|---|---|---|---|"]
    for t in targets(part):
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['impl']} | {t['figure']} | {fmt(t['ratio'], 3)} | {met} |")
    lines += ["", "![cost against size](scale-edge.png)", "", END]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """CPU per REGISTER, per call transaction (edge + registrar) and edge
    shared memory per flow against the flows held, one line per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = results.get("scale_edge") or {}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    colours = {"ours": "tab:blue", "native": "tab:orange", "floor": "tab:green"}
    panels = [("CPU per REGISTER refresh (edge + registrar)", "µs", (0, 1)),
              ("CPU per call transaction (edge + registrar)", "µs", (2, 3)),
              ("edge shared memory per flow", "kB", (4,))]
    for ax, (title, unit, which) in zip(axes, panels, strict=True):
        for impl in IMPLS:
            rows = part.get("impls", {}).get(impl, {}).get("sizes", [])
            xs, ys = [], []
            for r in rows:
                values = [COSTS[i][2](r) for i in which]
                if r.get("flows") and all(v is not None for v in values):
                    xs.append(r["flows"])
                    total = sum(v for v in values if v is not None)
                    ys.append(total / 1000 if unit == "kB" else total)
            if xs:
                ax.plot(xs, ys, "o-", color=colours[impl], label=impl)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("registered TCP flows held by the edge")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Edge scale run: cost against size (bench/scale_edge.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ---------------------------------------------------------------- the run


class ScaleRun:
    """One implementation's registrar and edge, the held flows built up to
    each size, the figures at each size. ``run_mod`` is bench/run.py (its
    Kamailio and SIPp helpers)."""

    def __init__(self, run_mod, settings, impl: str, folder: Path, largest: int, log: Callable[[str], None]) -> None:
        self.run, self.s, self.impl, self.dir, self.log = run_mod, settings, impl, folder, log
        self.largest = largest
        folder.mkdir(parents=True, exist_ok=True)
        self.kams: list = []
        self.sipps: list = []
        self.next_host = HOLD_HOST
        self.out: dict = {"sizes": []}  # what was measured so far (kept when a later step fails)

    def kamailio(self, name: str, role: str, host: int, port: int, registrar_uri: str = "", shm_mb: int = 512):
        run = self.run
        defines = run.impl_defines(self.impl, role, registrar_uri)
        if role == "registrar":
            defines["KO_USRLOC_DB_MODE"] = "0"  # memory only: what a binding costs, not SQLite's writes
            defines["KO_USRLOC_HASH"] = str(usrloc_hash(self.largest))
            # the held flows send no keepalives: our edge closes a flow idle for Flow-Timer + grace
            # (RFC 5626 §5.4; 25 + 20 s by default), native's keeps it for tcp_connection_lifetime
            defines["KO_FLOW_TIMER"] = str(FLOW_TIMER)
        else:
            # Kamailio's TCP connection limit (2048 by default) can only be lowered at run
            # time ("cannot override hard tcp_max_connections limit"): set at start
            defines["KO_TCP_MAX_CONNECTIONS"] = str(self.largest + CALLEES + 100)
        kam = run.BenchKamailio(name, run.IMPLS[self.impl][role].name, self.dir, self.s.addr(host), port,
                                defines=defines, env={"KO_FLOW_KEYS": run.TEST_KEY},
                                cfg_path=run.IMPLS[self.impl][role], shm_mb=shm_mb)
        kam.start()
        self.kams.append(kam)
        return kam

    def sipp(self, tag: str, scenario: str, host: int, transport: str, calls: int, rate: float, inf: Path,
             timeout: float, **options):
        run = self.run
        auth = (run.CALLER, run.password_for(run.CALLER)) if scenario.startswith("caller/") else None
        sipp = run.start_sipp(scenario, f"{self.edge.addr}:{self.edge.port}", workdir=self.dir, name=f"sipp-{tag}",
                              scenarios=run.SIPP, local_ip=self.s.addr(host), transport=transport, auth=auth,
                              rate=rate, calls=calls, recv_timeout_ms=RECV_TIMEOUT_MS, stat_csv=True,
                              trace_messages=False, timeout_error=False, timeout=timeout, inf=inf, **options)
        self.sipps.append(sipp)
        return sipp

    def contacts(self) -> int:
        return self.registrar.stat("usrloc:location_contacts")

    def wait_contacts(self, target: int, timeout: float, sipps: list, missing: int = 0,
                      quiet_s: float = 10.0) -> tuple[int, float]:
        """The registrar's contacts once it holds ``target``, or ``target`` less at
        most ``missing`` with no new binding for ``quiet_s`` (a registration that
        timed out is not retried), or at ``timeout``, or when every SIPp of
        ``sipps`` has ended; and the monotonic time of the last new binding."""
        deadline = time.monotonic() + timeout
        count = self.contacts()
        last = time.monotonic()
        while count < target and time.monotonic() < deadline and any(p.alive for p in sipps):
            if count >= target - missing and time.monotonic() - last > quiet_s:
                break
            time.sleep(0.2)
            now = self.contacts()
            if now > count:
                count, last = now, time.monotonic()
        return count, last

    def cpu(self) -> dict[str, float]:
        return {"edge": self.edge.cpu_seconds(), "registrar": self.registrar.cpu_seconds()}

    def settle(self) -> None:
        self.run.Round.settle((self.edge, self.registrar), timeout=30.0)

    def measure(self, sizes: list[int]) -> dict:
        hold_s = 120 + len(sizes) * 90 + 3 * max(sizes) / HOLD_RATE
        if hold_s + 20 > FLOW_TIMER:  # our edge would close the first flows before the end
            self.log(f"  scale {self.impl}: warning: the run holds flows {hold_s:.0f} s, Flow-Timer {FLOW_TIMER} s")
        out = self.out
        try:
            self.registrar = self.kamailio("registrar", "registrar", REGISTRAR_HOST, 5070,
                                           shm_mb=max(512, 256 + self.largest * 8000 // 2**20))
            self.edge = self.kamailio("edge", "edge", EDGE_HOST, 5060, self.registrar.uri,
                                      shm_mb=edge_shm_mb(self.largest))
            out["tcp_max_connections"] = self.edge.rpc("core.tcp_options").get("max_connections(soft)")
            out["edge_nofile"] = nofile_of(self.edge.proc.pid)
            self.start_fixed(hold_s)
            self.settle()
            base = {"edge": self.edge.shm_used(), "registrar": self.registrar.shm_used(),
                    "contacts": self.contacts(), "pss_edge": self.edge.pss_kib(),
                    "connections": self.edge.stat("tcp:current_opened_connections")}
            out["baseline"] = base
            for (first, count), size in zip(increments(sizes), sizes, strict=True):
                row = self.grow(first, count, size, base, hold_s)
                out["sizes"].append(row)
                if not reached(row):
                    out["stopped"] = f"{size:,} flows not reached: {row['flows']:,} held ({row.get('why', '')})"
                    self.log(f"  scale {self.impl}: {out['stopped']}")
                    break
        finally:
            for sipp in self.sipps:
                sipp.kill()
            for kam in reversed(self.kams):
                kam.stop()
        return out

    def start_fixed(self, hold_s: float) -> None:
        """The callees (TCP, one flow each, answering calls) and the refresh
        users' first registration, before the baseline."""
        run = self.run
        self.callee_users = run.write_users(self.dir / "callees.csv", "sec", CALLEES, 81)
        before = self.contacts()
        callees = self.sipp("callees", "callee/register.xml", CALLEE_HOST, "tn", CALLEES, 20, self.callee_users,
                            hold_s, keys={"regid": "1", "cseq": "1", "cseq_auth": "2", "who": "scale"},
                            oocsf="callee/uas.xml", call_limit=CALLEES + 10,
                            extra=["-d", str(int(hold_s * 1000)), "-max_socket", str(CALLEES + 10), *LONG_LIVED])
        if self.wait_contacts(before + CALLEES, 30, [callees])[0] < before + CALLEES:
            raise run.ProcessError(f"scale {self.impl}: callees did not register (see {callees.run_dir})")
        self.refresh_users = run.write_users(self.dir / "refresh.csv", "ser", REFRESH_USERS, 82)
        first = self.sipp("refresh-first", "register/uac.xml", REFRESH_HOST, "t1", REFRESH_USERS, REFRESH_RATE,
                          self.refresh_users, REFRESH_USERS / REFRESH_RATE * 3 + 30, call_limit=REFRESH_RATE * 6)
        first.wait()
        stats = run.sipp_stats(first)
        if stats.successful < REFRESH_USERS:
            raise run.ProcessError(f"scale {self.impl}: {stats.successful} of {REFRESH_USERS} refresh users "
                                   f"registered (see {first.run_dir})")

    def grow(self, first: int, count: int, size: int, base: dict, hold_s: float) -> dict:
        """Register ``count`` more held flows (users ``first``..), then the
        figures at ``size``."""
        run = self.run
        parts = chunks(first, count)
        sipps = []
        target = base["contacts"] + size
        started = time.monotonic()
        for start, n in parts:
            # its own users and instance ids (uuid group 8100 + its address)
            users = run.write_users(self.dir / f"hold-{start}.csv", f"seh{start}x", n, 8000 + self.next_host)
            sipps.append(self.sipp(f"hold-{start}", "scale-hold/register.xml", self.next_host, "tn", n,
                                   HOLD_RATE / len(parts), users, hold_s, call_limit=n + 10,
                                   extra=["-d", str(int(hold_s * 1000)), "-max_socket", str(n + 100), *LONG_LIVED]))
            self.next_host += 1
        missing = int((1 - REACH_SHARE) * count)
        reached, last = self.wait_contacts(target, 60 + 3 * count / HOLD_RATE, sipps, missing)
        seconds = last - started  # until the last new binding
        row: dict = {"size": size, "increment": count, "sipp_processes": len(parts), "loadavg": os.getloadavg(),
                     "register_seconds": round(seconds, 2),
                     "flows_per_second": round((reached - (target - count)) / seconds, 1) if seconds > 0 else None}
        self.settle()
        # a flow is held when its binding is at the registrar and its connection open at the edge
        row["edge_tcp_connections"] = self.edge.stat("tcp:current_opened_connections")
        row["bindings"] = self.contacts() - base["contacts"]
        row["flows"] = min(row["bindings"], row["edge_tcp_connections"] - base["connections"])
        row["hold_failed"] = sum(failed_so_far(p) for p in sipps)
        if row["flows"] < size:
            row["why"] = why_short(self.edge, sipps)
        shm = {"edge": self.edge.shm_used(), "registrar": self.registrar.shm_used()}
        row["shm_bytes_per_flow"] = {k: rounded(per_flow(shm[k], base[k], row["flows"])) for k in shm}
        row["pss_kib_per_flow_edge"] = rounded(per_flow(self.edge.pss_kib(), base["pss_edge"], row["flows"]), 2)
        before = self.cpu()
        time.sleep(IDLE_SECONDS)
        after = self.cpu()
        row["idle_cpu_ms_per_s"] = {k: round((after[k] - before[k]) * 1000 / IDLE_SECONDS, 1) for k in before}
        row["refresh"] = self.refresh(size)
        self.settle()
        row["calls"] = self.calls(size)
        self.log(f"  scale {self.impl} {row['flows']:,} flows: registered in {row['register_seconds']} s "
                 f"({row['flows_per_second']}/s), shm B/flow {row['shm_bytes_per_flow']}, "
                 f"idle {row['idle_cpu_ms_per_s']} ms/s, REGISTER µs {row['refresh']['cpu_us']}, "
                 f"call tx µs {row['calls']['cpu_us_per_tx']}")
        return row

    def refresh(self, size: int) -> dict:
        """The refresh users registered again, REFRESH_COUNT REGISTERs at REFRESH_RATE over one TCP connection."""
        stats, cpu = self.measured(f"refresh-{size}", "register/uac.xml", REFRESH_HOST, "t1", REFRESH_COUNT,
                                   REFRESH_RATE, self.refresh_users)
        return {"registrations": stats.successful, "failed": stats.failed, "seconds": round(stats.elapsed, 2),
                "cpu_us": {k: rounded(us_per(used, stats.successful)) for k, used in cpu.items()}}

    def calls(self, size: int) -> dict:
        """CALL_COUNT calls at CALL_RATE over UDP to the callees; CPU per INVITE or BYE."""
        stats, cpu = self.measured(f"calls-{size}", "caller/uac.xml", CALLER_HOST, "u1", CALL_COUNT, CALL_RATE,
                                   self.callee_users)
        tx = stats.successful * 2
        return {"calls": stats.successful, "failed": stats.failed, "seconds": round(stats.elapsed, 2),
                "cpu_us_per_tx": {k: rounded(us_per(used, tx)) for k, used in cpu.items()}}

    def measured(self, tag: str, scenario: str, host: int, transport: str, count: int, rate: int,
                 users: Path) -> tuple:
        """One bounded SIPp run of ``count`` calls at ``rate``; its statistics and the
        CPU seconds each role used meanwhile."""
        before = self.cpu()
        sipp = self.sipp(tag, scenario, host, transport, count, rate, users, count / rate * 3 + 30,
                         call_limit=rate * 6)
        sipp.wait()
        after = self.cpu()
        return self.run.sipp_stats(sipp), {k: after[k] - before[k] for k in before}


def rounded(value: float | None, digits: int = 0) -> float | None:
    """``value`` rounded (an int for 0 digits); None stays None (no transactions, no flows)."""
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


def usrloc_hash(largest: int) -> int:
    """usrloc hash_size (2^N slots) of the scale run's registrars, the same for
    every implementation: about 8 bindings a slot at the largest size, 2^10
    (the cfgs' default) at least, 2^16 at most."""
    return max(10, min(16, math.ceil(math.log2(max(1, largest) / 8))))


def nofile_of(pid: int) -> str:
    """The "Max open files" line of /proc/PID/limits (soft and hard)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return ""


def failed_so_far(sipp) -> int:
    """Failed calls of a SIPp still running, from its stat.csv (written every second)."""
    try:
        text = (sipp.run_dir / "stat.csv").read_text()
    except OSError:
        return 0
    rows = [line.rstrip(";").split(";") for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        return 0
    cell = dict(zip(rows[0], rows[-1], strict=False))
    try:
        return int(cell.get("FailedCall(C)", "0") or 0)
    except ValueError:
        return 0


def why_short(edge, sipps: list) -> str:
    """What the edge's log and the SIPps' error logs say about flows that did not register."""
    hints = []
    for line in edge.log().splitlines()[-4000:]:
        if any(w in line for w in ("Too many open files", "maximum number of connections", "max_connections",
                                   "out of memory", "no more shm", "accept")):
            hints.append(line.strip()[:200])
    for p in sipps:
        text = (p.run_dir / "errors.log").read_text(errors="replace") if (p.run_dir / "errors.log").exists() else ""
        hints += [line.strip()[:200] for line in text.splitlines()[-3:]]
    return " | ".join(dict.fromkeys(hints).keys())[:1500] or "no error logged"


def measure(run_mod, settings, sizes: list[int], impls: list[str], log: Callable[[str], None]) -> dict:
    """The edge scale run of every implementation in ``impls`` at ``sizes``
    (flows, ascending). Sizes the descriptor limit cannot hold are clipped
    and recorded."""
    started = time.monotonic()
    other = CALLEES + 1
    limits = raise_nofile(max(sizes) + FD_RESERVE + other)
    ceiling = flow_ceiling(limits["soft"], other)
    run_sizes, over = clip_sizes(sizes, ceiling)
    if over:
        limits["why"] = (f"RLIMIT_NOFILE: {limits.get('refused', '')}; with {limits['soft']} descriptors per process "
                         f"the edge's tcp main process (one descriptor per TCP connection, {FD_RESERVE} kept for its "
                         f"own sockets, {other} for the callee and refresh connections) holds at most {ceiling:,} "
                         f"flows, so {ceiling:,} was measured instead of "
                         f"{', '.join(f'{s:,}' for s in over)}.")
        log(f"scale edge: {limits['why']}")
    out: dict = {"asked": list(sizes), "sizes": run_sizes, "clipped": over, "limits": limits,
                 "settings": {"hold_rate": HOLD_RATE, "users_per_sipp": USERS_PER_SIPP, "refresh_users": REFRESH_USERS,
                              "refresh_rate": REFRESH_RATE, "refresh_count": REFRESH_COUNT, "call_rate": CALL_RATE,
                              "call_count": CALL_COUNT, "callees": CALLEES, "idle_seconds": IDLE_SECONDS,
                              "usrloc_hash": usrloc_hash(max(run_sizes, default=1)), "flow_timer": FLOW_TIMER,
                              "edge_shm_mb": edge_shm_mb(max(run_sizes, default=1))},
                 "impls": {}}
    if not run_sizes:
        out["error"] = f"no size fits: {limits}"
        return out
    for impl in impls:
        log(f"scale edge: {impl}: {', '.join(f'{s:,}' for s in run_sizes)} flows")
        t0 = time.monotonic()
        scale = ScaleRun(run_mod, settings, impl, settings.workdir / f"se-{impl}", max(run_sizes), log)
        try:
            got = scale.measure(run_sizes)
        except (run_mod.ProcessError, RuntimeError, KeyError, OSError) as exc:
            log(f"scale edge: {impl} failed: {exc}")
            got = {**scale.out, "error": str(exc)[:2000]}
        got["seconds"] = round(time.monotonic() - t0, 1)
        out["impls"][impl] = got
    out["seconds"] = round(time.monotonic() - started, 1)
    out["loadavg_end"] = os.getloadavg()
    return out
