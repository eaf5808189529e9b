"""Registrar scale run (issue 17): one registrar holding 10k, 100k and 1M bindings.

For each implementation (ours, native, floor; started as in the bench rounds,
bench/run.py impl_defines and BenchKamailio) and each size N:

1. **The table.** A template binding is taken once per implementation from its
   own REGISTER: its registrar and edge start on an empty SQLite location file,
   one outbound UA registers through the edge, usrloc's write-back writes the
   row, both stop. N rows are then written by SQL, each a copy of that row with
   its own AOR (4 bindings per AOR: 2 instances x reg-id 1 and 2), Contact
   user/host/port, Path user part (the edge's flow token, same length), ruid,
   Call-ID and +sip.instance; flags, cflags, socket, the Path's shape and the
   expiry come from the template. So each registrar loads rows shaped as it
   writes them.
2. **Memory per binding and load time.** The same registrar (usrloc db_mode 2,
   ``hash_size`` 2^ceil(log2(N/4)), enough shm and private memory for the child
   that preloads the table, durability.pkg_mb) is started once on an empty file
   (``core.shmmem`` real_used) and once on the N rows: the load time is from exec
   until usrloc holds all N and the RPC answers; the shm delta over N is the
   memory per binding.
3. **CPU per REGISTER.** An edge of the same implementation in front, then
   REGISTER_CALLS new outbound registrations (REGISTER, 401, REGISTER, 200) at
   REGISTER_RATE/s over UDP through the edge; utime+stime of every registrar
   process from /proc before and after (bench/run.py Round.measured_step) and
   until usrloc's write-back has written the new rows, per successful REGISTER.
   Before it, the registrar's idle CPU per second over one usrloc timer period
   (the timer walks the whole table). Also split: the SIP receiver processes (``core.psx``
   "receiver") and the rest (usrloc's timer walk over the whole table, the
   write-back, main, RPC).
4. **CPU per lookup.** CALLEES outbound UAs register through the edge and
   answer; a caller places CALLS_PER_STEP calls at CALL_RATE/s through the
   edge (INVITE, 407, ACK, INVITE, 200, ACK, BYE); registrar CPU per call and
   per transaction (INVITE or BYE, 2 per call, as in the rounds). Every call's
   INVITE is a usrloc lookup in the full table.

Pure helpers (sizes, hash exponent, memory sizes, row cloning, the per-size
figures, the report section, the plot) are unit-tested in
tests/unit/test_bench_scale_registrar.py; everything else starts processes,
each stopped by its own PID, every wait and every SIPp run bounded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

BEGIN = "<!-- bench:scale-registrar:begin -->"
END = "<!-- bench:scale-registrar:end -->"
IMPLS = ("ours", "native", "floor")
BINDINGS_PER_AOR = 4  # 2 instances x reg-id 1 and 2, as bench/durability.py fill_location
REGISTER_RATE = 100  # REGISTER/s, a modest fixed rate (the rounds' CPU reference was 500)
REGISTER_SECONDS = 20.0  # -> 2000 REGISTERs
CALL_RATE = 50  # calls/s (the rounds' CPU reference was 100)
CALL_SECONDS = 10.0  # -> 500 calls, 1000 transactions
CALLEES = 20
USRLOC_TIMER = 10  # cfg/registrar.cfg's default: the timer walks the whole table this often
LOAD_TIMEOUT = 600.0
TARGET_RATIO = 1.2  # issue 17: CPU per transaction at 1M within 1.2x of the cost at 10k
COLUMNS = ("ruid", "username", "domain", "contact", "received", "path", "expires", "q", "callid", "cseq",
           "last_modified", "flags", "cflags", "user_agent", "socket", "methods", "instance", "reg_id",
           "server_id", "connection_id", "keepalive", "partition")


# ---------------------------------------------------------------- pure helpers


def parse_sizes(text: str) -> tuple[int, ...]:
    """``--scale-bindings`` "10000,100000,1000000" -> sizes, ascending; "" -> none."""
    sizes = sorted({int(part) for part in text.replace("_", "").split(",") if part.strip()})
    if any(size < BINDINGS_PER_AOR for size in sizes):
        raise ValueError(f"a scale size must be at least {BINDINGS_PER_AOR} bindings: {text!r}")
    return tuple(sizes)


def hash_exponent(bindings: int, per_aor: int = BINDINGS_PER_AOR) -> int:
    """usrloc ``hash_size`` (2^N slots) for ``bindings``: about one AOR per slot,
    never below the cfg default (10) nor above 2^20 slots."""
    aors = max(1, math.ceil(bindings / per_aor))
    return min(20, max(10, math.ceil(math.log2(aors))))


def shm_mb(bindings: int) -> int:
    """Shared memory (-m) for a registrar holding ``bindings``: the rounds' 512 MB
    plus 3 kB a binding (measured ~1.3 kB, docs/benchmarks.md durability)."""
    return 512 + math.ceil(bindings * 3000 / 2**20)


_URI_USER_HOST = re.compile(r"^(?P<pre><?sips?:)(?:(?P<user>[^@;>]*)@)?(?P<host>[^;>]*)(?P<rest>.*)$", re.S)


def replace_uri_user(uri: str, user: str, host: str | None = None) -> str:
    """``uri`` (optionally in <>) with its user part (and host[:port]) replaced."""
    match = _URI_USER_HOST.match(uri)
    if not match:
        raise ValueError(f"not a SIP URI: {uri!r}")
    return f"{match['pre']}{user}@{host if host is not None else match['host']}{match['rest']}"


def uri_user(uri: str) -> str:
    match = _URI_USER_HOST.match(uri or "")
    return (match["user"] or "") if match else ""


def clone_row(template: dict[str, Any], i: int) -> dict[str, Any]:
    """The ``i``-th preloaded binding made from ``template`` (a location row the
    implementation wrote itself): user ``scl<aor>``, 2 instances x reg-id 1, 2
    per AOR, its own Contact address, a Path user part of the template's length,
    ruid and Call-ID; every other column as in the template."""
    aor, instance, reg_id = i // BINDINGS_PER_AOR, (i // 2) % 2, i % 2 + 1
    user = f"scl{aor:07d}"
    row = dict(template)
    host = f"198.18.{i % 250}.{i % 200 + 1}:{5060 + i % 4000}"
    row["username"] = user
    row["contact"] = replace_uri_user(template["contact"], user, host)
    path = template.get("path") or ""
    token = uri_user(path.split(",")[0])
    if token:
        row["path"] = replace_uri_user(path, f"{i:x}".rjust(len(token), "A")[-len(token):])
    row["ruid"] = f"uloc-scale-{i:08x}"
    row["callid"] = f"scale-{aor:07d}-{instance}@bench"
    row["instance"] = f"<urn:uuid:00000000-0000-4000-8000-{aor * 2 + instance:012x}>"
    row["reg_id"] = reg_id
    return row


def per_us(cpu_seconds: float, count: int) -> float | None:
    """CPU µs per unit (None for no units)."""
    return None if count <= 0 else round(cpu_seconds * 1e6 / count, 1)


def split_cpu(before: dict[int, int], after: dict[int, int], workers: set[int], clk_tck: int) -> dict[str, float]:
    """CPU seconds between two per-PID tick snapshots: all processes, the SIP
    receivers (``workers``) and the rest."""
    delta = {pid: after[pid] - before.get(pid, 0) for pid in after}
    total = sum(delta.values()) / clk_tck
    work = sum(v for pid, v in delta.items() if pid in workers) / clk_tck
    return {"all": round(total, 3), "workers": round(work, 3), "others": round(total - work, 3)}


def worker_pids(psx: list[dict]) -> set[int]:
    """PIDs of the SIP receiver processes in a ``core.psx`` answer."""
    return {int(p["PID"]) for p in psx if "receiver" in str(p.get("DSC", "")).lower()}


def cost_ratio(sizes: dict[str, dict], key: str) -> float | None:
    """``key`` (a figure per transaction) at the largest size over the smallest."""
    done = sorted((int(n), v) for n, v in sizes.items() if isinstance(v, dict) and v.get(key) is not None)
    if len(done) < 2 or not done[0][1][key]:
        return None
    return round(done[-1][1][key] / done[0][1][key], 2)


# ---------------------------------------------------------------- report


FIGURES = (
    ("load_seconds", "load at start (exec until all are served)", "s"),
    ("idle_ms_per_s", "idle CPU per second (timers: usrloc's walk of the table)", "ms"),
    ("shm_bytes_per_binding", "shared memory per binding", "B"),
    ("register_us", "CPU per REGISTER, all registrar processes, its write-back included", "µs"),
    ("register_workers_us", "CPU per REGISTER, SIP receivers only", "µs"),
    ("call_tx_us", "CPU per call transaction (INVITE or BYE), all processes", "µs"),
    ("call_tx_workers_us", "CPU per call transaction, SIP receivers only", "µs"),
)
RATIO_KEYS = ("register_us", "register_workers_us", "call_tx_us", "call_tx_workers_us", "shm_bytes_per_binding")


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def render(results: dict) -> str:
    """The docs/benchmarks.md section of ``results["scale_registrar"]``."""
    part = results.get("scale_registrar") or {}
    lines = [BEGIN, ""]
    if not part or "error" in part and "impls" not in part:
        lines += [f"Registrar scale run: failed: `{str(part.get('error', 'no results'))[:300]}`", "", END]
        return "\n".join(lines)
    impls = [i for i in IMPLS if i in part.get("impls", {})]
    sizes = sorted({int(n) for i in impls for n in part["impls"][i]["sizes"]})
    lines.append(
        f"From `{results.get('command', 'bench/run.py')}` ({results.get('machine', {}).get('cpu', '')}, "
        f"{results.get('machine', {}).get('cores', '?')} cores, shared), {fmt(part.get('seconds'))} s in all. "
        f"One registrar per implementation and size, usrloc db_mode 2 on SQLite, hash_size 2^ceil(log2(N/4)), "
        f"timer every {part.get('usrloc_timer', USRLOC_TIMER)} s; {part.get('register_calls')} REGISTERs at "
        f"{part.get('register_rate')}/s and {part.get('calls')} calls at {part.get('call_rate')}/s "
        f"(to {part.get('callees')} UAs registered for it), UDP, through an edge of the same implementation; "
        "CPU at the registrar only (bench/scale_registrar.py).")
    lines.append("")
    head = "| figure | impl | " + " | ".join(f"{n:,}" for n in sizes) + " | largest / smallest |"
    lines += [head, "| --- | --- |" + " ---: |" * len(sizes) + " ---: |"]
    for key, label, unit in FIGURES:
        for impl in impls:
            by_size = part["impls"][impl]["sizes"]
            cells = []
            for n in sizes:
                got = by_size.get(str(n)) or {}
                cells.append("failed" if "error" in got else fmt(got.get(key)))
            ratio = cost_ratio(by_size, key) if key in RATIO_KEYS else None
            lines.append(f"| {label} ({unit}) | {impl} | " + " | ".join(cells) + f" | {fmt(ratio)} |")
    lines += ["", failures_line(part, impls), "", target_line(part, impls), ""]
    errors = [(impl, n, got["error"]) for impl in impls for n, got in part["impls"][impl]["sizes"].items()
              if isinstance(got, dict) and "error" in got]
    for impl, n, error in errors:
        lines += [f"- {impl} at {int(n):,} bindings failed: `{error[:300]}`"]
    if errors:
        lines.append("")
    lines += ["![registrar cost against bindings](scale-registrar.png)", "", END]
    return "\n".join(lines)


def failures_line(part: dict, impls: list[str]) -> str:
    """SIPp's failed REGISTERs and calls of each measured step (0 expected)."""
    bad = []
    for impl in impls:
        for n, got in sorted(part["impls"][impl]["sizes"].items(), key=lambda kv: int(kv[0])):
            for what in ("register", "calls"):
                failed = (got.get(what) or {}).get("failed", 0)
                if failed:
                    bad.append(f"{impl} {int(n):,} {what}: {failed}")
    return "Failed transactions in the measured steps: " + ("; ".join(bad) if bad else "none") + "."


def target_line(part: dict, impls: list[str]) -> str:
    """Issue 17's target, per implementation: CPU per transaction at the largest
    size within TARGET_RATIO of the smallest (all processes)."""
    texts = []
    for impl in impls:
        by_size = part["impls"][impl]["sizes"]
        reg, call = cost_ratio(by_size, "register_us"), cost_ratio(by_size, "call_tx_us")
        sizes = sorted(int(n) for n, v in by_size.items() if "error" not in v)
        span = f"{sizes[0]:,} -> {sizes[-1]:,}" if sizes else "none"
        met = reg is not None and call is not None and reg <= TARGET_RATIO and call <= TARGET_RATIO
        texts.append(f"{impl} ({span}): REGISTER x{fmt(reg)}, call transaction x{fmt(call)}: "
                     f"{'met' if met else 'not met'}")
    return (f"Target (issue 17: CPU per transaction at 1M bindings within {TARGET_RATIO}x of the cost at 10k, "
            "all registrar processes): " + "; ".join(texts) + ".")


def plot(results: dict, path: Path) -> None:
    """CPU per REGISTER, per call transaction and memory per binding against the
    number of bindings (log x), one line per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = results["scale_registrar"]
    colours = {"ours": "tab:blue", "native": "tab:orange", "floor": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (("register_us", "register_workers_us", "CPU µs per REGISTER (registrar)"),
              ("call_tx_us", "call_tx_workers_us", "CPU µs per call transaction (registrar)"),
              ("shm_bytes_per_binding", "", "shared memory per binding (B)"))
    for ax, (key, workers_key, title) in zip(axes, panels, strict=True):
        top = 0.0
        for impl in IMPLS:
            by_size = part.get("impls", {}).get(impl, {}).get("sizes", {})
            for k, style, label in ((key, "o-", impl), (workers_key, "x--", f"{impl}, SIP receivers only")):
                points = sorted((int(n), v[k]) for n, v in by_size.items() if k and v.get(k) is not None)
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colours[impl],
                            label=label, alpha=1.0 if k == key else 0.5)
                    top = max(top, *(p[1] for p in points))
        ax.set_xscale("log")
        ax.set_ylim(0, top * 1.25 or 1)
        ax.set_xlabel("bindings held by the registrar")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Registrar cost against the number of bindings (issue 17; bench/scale_registrar.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ---------------------------------------------------------------- processes


@dataclasses.dataclass
class Plan:
    """What one scale run does (constants above; bench/run.py passes the sizes)."""

    sizes: tuple[int, ...]
    impls: tuple[str, ...]
    register_rate: int = REGISTER_RATE
    register_seconds: float = REGISTER_SECONDS
    call_rate: int = CALL_RATE
    call_seconds: float = CALL_SECONDS
    callees: int = CALLEES


def read_rows(url: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{url.removeprefix('sqlite://')}?mode=ro", uri=True)
    try:
        present = [c for c in COLUMNS if c in {r[1] for r in conn.execute("PRAGMA table_info(location)")}]
        return [dict(zip(present, row, strict=True))
                for row in conn.execute(f"SELECT {', '.join(present)} FROM location").fetchall()]
    finally:
        conn.close()


def fill(url: str, count: int, template: dict[str, Any]) -> float:
    """``count`` bindings cloned from ``template`` into the empty location table; seconds taken."""
    started = time.monotonic()
    columns = [c for c in template if c != "id"]
    conn = sqlite3.connect(url.removeprefix("sqlite://"))
    try:
        sql = f"INSERT INTO location ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        chunk = 50_000
        for start in range(0, count, chunk):
            rows = (clone_row(template, i) for i in range(start, min(count, start + chunk)))
            conn.executemany(sql, ([row[c] for c in columns] for row in rows))
        conn.commit()
    finally:
        conn.close()
    return round(time.monotonic() - started, 2)


class ScaleRun:
    """One scale run: bench/run.py's module (``run``) gives BenchKamailio,
    impl_defines, Round, write_users and the run's Settings."""

    def __init__(self, run: ModuleType, settings: Any, plan: Plan, log: Callable[[str], None]) -> None:
        self.run = run
        self.s = settings
        self.plan = plan
        self.log = log
        self.dir = settings.workdir / "scale-registrar"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self.reg_users = run.write_users(self.dir / "scale-reg.csv", "sreg", int(plan.register_rate
                                                                              * plan.register_seconds), 91)
        self.callee_users = run.write_users(self.dir / "scale-callees.csv", "scallee", plan.callees, 92)
        self.template_users = run.write_users(self.dir / "scale-template.csv", "stpl", 1, 93)

    # -- processes

    def registrar(self, impl: str, tag: str, location: str, bindings: int) -> Any:
        defines = {**self.run.impl_defines(impl, "registrar"), "KO_USRLOC_DB_MODE": "2",
                   "KO_USRLOC_TIMER": str(USRLOC_TIMER if bindings else 1),
                   "KO_USRLOC_HASH": str(hash_exponent(max(bindings, 1))), "KO_USRLOC_DB_URL": f'"{location}"'}
        return self.run.BenchKamailio(
            f"sreg-{impl}-{tag}", self.run.IMPLS[impl]["registrar"].name, self.dir, self.s.addr(1), 5070,
            defines=defines, env={"KO_FLOW_KEYS": self.run.TEST_KEY}, cfg_path=self.run.IMPLS[impl]["registrar"],
            shm_mb=shm_mb(bindings), pkg_mb=self.run.durability.pkg_mb(bindings))

    def edge(self, impl: str, tag: str, registrar: Any) -> Any:
        return self.run.BenchKamailio(
            f"sedge-{impl}-{tag}", self.run.IMPLS[impl]["edge"].name, self.dir, self.s.addr(2), 5060,
            defines=self.run.impl_defines(impl, "edge", registrar.uri), env={"KO_FLOW_KEYS": self.run.TEST_KEY},
            cfg_path=self.run.IMPLS[impl]["edge"])

    def round(self, impl: str, registrar: Any, edge: Any, seconds: float) -> Any:
        """A bench Round on these processes (for its SIPp helpers and measured_step)."""
        self.index += 1
        r = self.run.Round(impl, self.index, dataclasses.replace(self.s, step_seconds=seconds))
        r.dir, r.registrar, r.edge1, r.kams = self.dir, registrar, edge, [registrar, edge]
        r.step_no = self.index * 100
        return r

    def location(self, name: str) -> str:
        path = self.dir / f"{name}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return self.run.sqlite_location_db(path)

    # -- the template row

    def template(self, impl: str) -> dict[str, Any]:
        """One binding as ``impl`` writes it: a REGISTER through its edge, the row
        its write-back wrote (timer every second), both stopped."""
        url = self.location(f"template-{impl}")
        reg = self.registrar(impl, "template", url, 0)
        edge = self.edge(impl, "template", reg)
        started = []
        try:
            for kam in (reg, edge):
                kam.start()
                started.append(kam)
            r = self.round(impl, reg, edge, 1.0)
            step = r.measured_step("template", "register/uac.xml", f"{edge.addr}:5060", self.s.addr(11), "u1", 1,
                                   self.template_users, 1)
            if step["successful"] != 1:
                raise RuntimeError(f"scale: {impl}'s template REGISTER failed: {step}")
            self.run.durability.wait_for(lambda: self.run.durability.row_count(url) >= 1,
                                         f"{impl}'s template row", timeout=20)
        finally:
            for kam in reversed(started):
                kam.stop()
        rows = read_rows(url)
        if len(rows) != 1:
            raise RuntimeError(f"scale: {impl}'s template table holds {len(rows)} rows")
        return rows[0]

    # -- one size

    def shm_empty(self, impl: str, bindings: int) -> int:
        reg = self.registrar(impl, f"{bindings}-empty", self.location(f"empty-{impl}"), bindings)
        reg.start()
        try:
            return reg.shm_used()
        finally:
            reg.stop()

    def psx_workers(self, kam: Any) -> set[int]:
        return worker_pids(kam.rpc("core.psx") or [])

    def ticks(self, kam: Any) -> dict[int, int]:
        return {s.pid: s.utime + s.stime
                for s in self.run.analysis.descendants(kam.proc.pid, self.run.all_proc_stats())}

    def measured(self, r: Any, reg: Any, workers: set[int], *args: Any,
                 settled: Callable[[dict], None] = lambda step: None) -> tuple[dict, dict[str, float]]:
        """Round.measured_step(*args) with the registrar's per-process CPU read
        around it, up to ``settled(step)`` (e.g. the write-back of what it saved)."""
        before = self.ticks(reg)
        step = r.measured_step(*args)
        settled(step)
        return step, split_cpu(before, self.ticks(reg), workers, self.run.CLK_TCK)

    def idle(self, reg: Any, workers: set[int], seconds: float) -> dict[str, float]:
        """The registrar's CPU per second with no load (usrloc's timer walking the
        table, the other timers), over ``seconds`` (one timer period)."""
        before = self.ticks(reg)
        time.sleep(seconds)
        cpu = split_cpu(before, self.ticks(reg), workers, self.run.CLK_TCK)
        return {k: round(v / seconds, 4) for k, v in cpu.items()}

    def one(self, impl: str, bindings: int, template: dict[str, Any]) -> dict:
        """Every figure of ``impl`` holding ``bindings``."""
        out: dict[str, Any] = {"bindings": bindings, "hash_size": hash_exponent(bindings), "loadavg": os.getloadavg(),
                               "shm_mb": shm_mb(bindings), "pkg_mb": self.run.durability.pkg_mb(bindings)}
        out["shm_empty"] = self.shm_empty(impl, bindings)
        url = self.location(f"loc-{impl}-{bindings}")
        out["fill_seconds"] = fill(url, bindings, template)
        reg = self.registrar(impl, str(bindings), url, bindings)
        edge = self.edge(impl, str(bindings), reg)
        callees = None
        try:
            started = time.monotonic()
            reg.start(timeout=LOAD_TIMEOUT)
            self.run.durability.wait_for(lambda: self.run.durability.contacts(reg) >= bindings,
                                         f"{impl} to load {bindings}", timeout=LOAD_TIMEOUT)
            out["load_seconds"] = round(time.monotonic() - started, 2)
            out["shm_loaded"] = reg.shm_used()
            out["shm_bytes_per_binding"] = round((out["shm_loaded"] - out["shm_empty"]) / bindings)
            out["contacts_loaded"] = reg.stat("usrloc:location_contacts")
            self.log(f"  scale {impl} {bindings}: filled in {out['fill_seconds']} s, loaded in "
                     f"{out['load_seconds']} s, {out['shm_bytes_per_binding']} B shm per binding")
            edge.start()
            workers = self.psx_workers(reg)
            p = self.plan
            out["idle_cpu_per_s"] = self.idle(reg, workers, USRLOC_TIMER)
            out["idle_ms_per_s"] = round(out["idle_cpu_per_s"]["all"] * 1000, 1)
            r = self.round(impl, reg, edge, p.register_seconds)
            remote = f"{edge.addr}:5060"

            def written(step: dict) -> None:
                # the window ends once usrloc's write-back has written what the REGISTERs saved
                want = bindings + step["successful"]
                self.run.durability.wait_for(lambda: self.run.durability.row_count(url) >= want,
                                             f"{impl}'s write-back of {step['successful']} rows",
                                             timeout=3 * USRLOC_TIMER + 30)

            step, cpu = self.measured(r, reg, workers, f"scale-register-{bindings}", "register/uac.xml", remote,
                                      self.s.addr(10), "u1", p.register_rate, self.reg_users, 1, settled=written)
            ok = step["successful"]
            out["register"] = {k: step[k] for k in ("offered", "calls", "successful", "failed", "retransmissions")}
            out["register"]["cpu"] = cpu
            out["register_us"] = per_us(cpu["all"], ok)
            out["register_workers_us"] = per_us(cpu["workers"], ok)
            r = self.round(impl, reg, edge, p.call_seconds)
            callees = r.start_callees("scale-callees", "udp", "u1", self.callee_users, p.callees, self.s.addr(20),
                                      p.call_seconds * 3 + 60, edge)
            step, cpu = self.measured(r, reg, workers, f"scale-calls-{bindings}", "caller/uac.xml", remote,
                                      self.s.addr(30), "u1", p.call_rate, self.callee_users, 2)
            ok = step["successful"]
            out["calls"] = {k: step[k] for k in ("offered", "calls", "successful", "failed", "retransmissions")}
            out["calls"]["cpu"] = cpu
            out["call_us"] = per_us(cpu["all"], ok)
            out["call_tx_us"] = per_us(cpu["all"], 2 * ok)
            out["call_tx_workers_us"] = per_us(cpu["workers"], 2 * ok)
            out["contacts_end"] = reg.stat("usrloc:location_contacts")
            self.log(f"  scale {impl} {bindings}: REGISTER {out['register_us']} µs ({out['register_workers_us']} in "
                     f"receivers; {out['register']['successful']} ok, {out['register']['failed']} failed), call tx "
                     f"{out['call_tx_us']} µs ({out['call_tx_workers_us']}; {out['calls']['successful']} ok, "
                     f"{out['calls']['failed']} failed)")
        finally:
            if callees is not None:
                callees.kill()
            edge.stop()
            reg.stop()
            for suffix in ("", "-wal", "-shm"):  # 1M rows are ~400 MB: not kept
                Path(f"{url.removeprefix('sqlite://')}{suffix}").unlink(missing_ok=True)
        return out

    def measure(self) -> dict:
        started = time.monotonic()
        p = self.plan
        out: dict[str, Any] = {
            "sizes": list(p.sizes), "register_rate": p.register_rate,
            "register_calls": int(p.register_rate * p.register_seconds), "call_rate": p.call_rate,
            "calls": int(p.call_rate * p.call_seconds), "callees": p.callees, "usrloc_timer": USRLOC_TIMER,
            "bindings_per_aor": BINDINGS_PER_AOR, "through": "edge (UDP)", "impls": {}}
        templates = {}
        for impl in p.impls:
            templates[impl] = self.template(impl)
            out["impls"][impl] = {"template": templates[impl], "sizes": {}}
            self.log(f"  scale {impl}: template row {templates[impl]}")
        for bindings in p.sizes:  # size by size, implementations alternated within each size
            for impl in p.impls:
                try:
                    got = self.one(impl, bindings, templates[impl])
                except (self.run.ProcessError, RuntimeError, OSError, KeyError) as exc:
                    self.log(f"  scale {impl} {bindings} failed: {exc}")
                    got = {"bindings": bindings, "error": str(exc)[:2000]}
                out["impls"][impl]["sizes"][str(bindings)] = got
        out["seconds"] = round(time.monotonic() - started, 1)
        return out


def measure(run: ModuleType, settings: Any, log: Callable[[str], None]) -> dict:
    """bench/run.py's entry: the scale run of ``settings.scale_bindings`` for the run's implementations."""
    plan = Plan(sizes=tuple(settings.scale_bindings), impls=tuple(i for i in IMPLS if i in settings.impls))
    log(f"registrar scale run: {', '.join(f'{n:,}' for n in plan.sizes)} bindings, {' '.join(plan.impls)}")
    try:
        return ScaleRun(run, settings, plan, log).measure()
    except (run.ProcessError, RuntimeError, OSError, KeyError) as exc:
        log(f"registrar scale run failed: {exc}")
        return {"error": str(exc)[:2000]}
