"""Instructions per transaction under valgrind's callgrind, and the Python
profile of our routes (issue 17; docs/benchmarks.md, "Instructions per
transaction").

CPU seconds on a shared 2-core machine swing by 10-30 % between runs; the
number of instructions a Kamailio executes for one REGISTER or one call does
not. For each implementation (ours, native, floor) the registrar and one edge
are started under ``valgrind --tool=callgrind`` (Kamailio's forked children
stay under it: a fork does not leave valgrind) and SIPp sends a fixed, low
rate of work: registrations over UDP in one start, calls to registered UAs in
another. Callgrind counts only inside the functions that do a message's work,
ENTRY_FUNCTIONS (receive_msg for every SIP message read from UDP, TCP or
WebSocket; tm's retransmission/final-response and wait timers; tcpops' close
event), so start-up, idle timers and the RPC polling of the run are not in the
figures. The machine's other load does not change a count; each process's
first messages, which cost more once, are in it (hence 100 registrations by
default).

Per process, the counts split into:
* ``python``: inclusive in app_python3's route entry (apy_exec), that is
  every instruction spent from entering Python to leaving it;
* ``ksr``: inclusive in sr_apy_kemi_exec_func_ex, the KSR.* calls made from
  Python (the C work itself: t_relay, save, lookup, $pv reads ...);
* so ``python - ksr`` is the interpreter's share: our Python code, the
  objects it makes, the entry and exit of each route.

The profile: ours once more, not under valgrind, with KO_PROFILE_DIR set
(kemi/adapter/profiling.py): cProfile in every Kamailio process, merged;
which Python functions and which KSR calls take the time.
"""

from __future__ import annotations

import io
import pstats
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ENTRY_FUNCTIONS = ("receive_msg", "retr_buf_handler", "wait_handler", "tcpops_handle_tcp_closed")
PYTHON_ENTRY = "apy_exec"
KSR_CALL = "sr_apy_kemi_exec_func_ex"
# callgrind slows Kamailio 30-100x: a low rate, long timeouts, retransmission
# timers (SIPp's and tm's) far above the slowed answer times
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 180.0
SIPP_RECV_TIMEOUT_MS = 30000
TM_RETR_T1_MS = 4000


def valgrind_prefix(out_dir: Path, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--collect-atstart=no",
            *[f"--toggle-collect={fn}" for fn in ENTRY_FUNCTIONS],
            "--compress-strings=no", "--compress-pos=no",
            f"--callgrind-out-file={out_dir}/callgrind.{name}.%p", f"--log-file={out_dir}/valgrind.{name}.log"]


# ---------------------------------------------------------------- callgrind files


def parse_callgrind(text: str) -> dict:
    """Total instructions of one callgrind.out file, the calls made to each
    function and the instructions inclusive in PYTHON_ENTRY and KSR_CALL.

    The inclusive cost of a function is the sum of the costs that callgrind
    writes after each ``calls=`` line whose callee (``cfn=``) is that function,
    made from a caller that is not the function itself (app_python3 does not
    recurse, so nothing is counted twice)."""
    total = 0
    calls: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    fn = cfn = ""
    pending_call = False
    for line in text.splitlines():
        if line.startswith("fn="):
            fn, pending_call = line[3:].strip(), False
        elif line.startswith("cfn="):
            cfn = line[4:].strip()
        elif line.startswith("calls="):
            calls[cfn] += int(line[6:].split()[0])
            pending_call = True
        elif line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split(":", 1)[1].split()[0]))
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2:
                cost = int(parts[1])
                if pending_call:
                    if function_name(cfn) != function_name(fn):  # a recursion is inside the outer call
                        inclusive[cfn] += cost
                    pending_call = False
    return {"total": total, "calls": dict(calls), "inclusive": dict(inclusive)}


def function_name(spec: str) -> str:
    """``apy_exec`` of ``apy_exec'2`` or a name with an object file in it."""
    return spec.split("'")[0].strip()


def role_counts(files: list[Path]) -> dict:
    """One role's processes summed: total, python, ksr and the calls to
    receive_msg (SIP messages read) and apy_exec (Python entries)."""
    out = {"total": 0, "python": 0, "ksr": 0, "messages": 0, "python_entries": 0, "processes": len(files)}
    for path in files:
        got = parse_callgrind(path.read_text(errors="replace"))
        out["total"] += got["total"]
        for spec, value in got["inclusive"].items():
            name = function_name(spec)
            if name == PYTHON_ENTRY:
                out["python"] += value
            elif name == KSR_CALL:
                out["ksr"] += value
        for spec, value in got["calls"].items():
            name = function_name(spec)
            if name == "receive_msg":
                out["messages"] += value
            elif name == PYTHON_ENTRY:
                out["python_entries"] += value
    return out


# ---------------------------------------------------------------- the runs


def measure(run_mod, settings, impls: list[str], registrations: int, calls: int, log: Callable[[str], None]) -> dict:
    """Instructions per registration and per call of each implementation, and
    ours' profile. ``run_mod`` is bench/run.py (its Kamailio and SIPp helpers)."""
    folder = settings.workdir / "instructions"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"registrations": registrations, "calls": calls, "entry_functions": list(ENTRY_FUNCTIONS),
                 "impls": {}}
    for impl in impls:
        log(f"instructions: {impl}: {registrations} registrations over UDP under callgrind")
        reg = CountedWork(run_mod, settings, impl, folder / f"{impl}-register").registrations(registrations)
        log(f"instructions: {impl}: {calls} calls under callgrind")
        call = CountedWork(run_mod, settings, impl, folder / f"{impl}-calls").calls(calls)
        out["impls"][impl] = per_transaction(reg, call)
        log(f"  {impl}: {out['impls'][impl]['summary']}")
    if "ours" in impls:
        log("instructions: ours' Python profile (cProfile, not under callgrind)")
        out["profile"] = CountedWork(run_mod, settings, "ours", folder / "ours-profile", valgrind=False).profile(
            registrations, calls)
    return out


def per_transaction(reg: dict, call: dict) -> dict:
    """Counts per registration and per call, by role; the call run's own
    registrations (its callees) are taken off at the registration run's rate."""
    result: dict = {"register": {}, "call": {}, "summary": {}}
    for role in ("edge", "registrar"):
        r, c = reg["counts"][role], call["counts"][role]
        n_reg = max(reg["ok"], 1)
        per_reg = {k: r[k] / n_reg for k in ("total", "python", "ksr", "messages", "python_entries")}
        n_call = max(call["ok"], 1)
        per_call = {k: max(0.0, (c[k] - per_reg[k] * call["callee_registrations"]) / n_call)
                    for k in ("total", "python", "ksr", "messages", "python_entries")}
        result["register"][role] = {k: round(v, 2 if k in ("messages", "python_entries") else 0)
                                    for k, v in per_reg.items()}
        result["call"][role] = {k: round(v, 2 if k in ("messages", "python_entries") else 0)
                                for k, v in per_call.items()}
        result["summary"][role] = {"register_ir": round(per_reg["total"]), "call_ir": round(per_call["total"])}
    result["runs"] = {"register": {k: v for k, v in reg.items() if k != "counts"},
                      "call": {k: v for k, v in call.items() if k != "counts"}}
    return result


class CountedWork:
    """One start of a registrar and an edge (under callgrind unless told not
    to), one workload, a clean stop, the counts."""

    def __init__(self, run_mod, settings, impl: str, folder: Path, valgrind: bool = True) -> None:
        self.run, self.s, self.impl, self.dir, self.valgrind = run_mod, settings, impl, folder, valgrind
        folder.mkdir(parents=True, exist_ok=True)
        self.kams: list = []
        self.sipps: list = []

    def kamailio(self, name: str, role: str, addr: str, port: int, registrar_uri: str = "", env: dict | None = None):
        run = self.run
        defines = run.impl_defines(self.impl, role, registrar_uri)
        if role == "registrar":
            defines["KO_USRLOC_DB_MODE"] = "0"  # memory only: the SQLite timer is not a message's work
        prefix = valgrind_prefix(self.dir, name) if self.valgrind else []

        class Counted(run.BenchKamailio):
            def command(self, *, check: bool = False) -> list[str]:
                return prefix + super().command()

        kam = Counted(name, run.IMPLS[self.impl][role].name, self.dir, addr, port, defines=defines,
                      env={"KO_FLOW_KEYS": run.TEST_KEY, **(env or {})}, cfg_path=run.IMPLS[self.impl][role])
        kam.start(timeout=START_TIMEOUT_S if self.valgrind else 20.0)
        self.kams.append(kam)
        # tm's retransmissions would count as work: its first interval far above the slowed answers
        kam.rpc("cfg.seti", "tm", "retr_timer1", TM_RETR_T1_MS)
        kam.rpc("cfg.seti", "tm", "retr_timer2", TM_RETR_T1_MS * 2)
        return kam

    def start(self, profile_dirs: dict[str, Path] | None = None) -> None:
        """The registrar and the edge; with ``profile_dirs`` (by role), ours' profile on."""
        def env(role: str) -> dict:
            return {"KO_PROFILE_DIR": str(profile_dirs[role])} if profile_dirs else {}

        net = self.s.addr
        self.registrar = self.kamailio("registrar", "registrar", net(101), 5070, env=env("registrar"))
        self.edge = self.kamailio("edge", "edge", net(102), 5060, self.registrar.uri, env=env("edge"))

    def stop(self) -> None:
        for sipp in self.sipps:
            sipp.kill()
        for kam in reversed(self.kams):
            proc = kam.proc
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(15)  # the main process stops its children; each writes its callgrind file
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kam.stop()

    def sipp(self, tag: str, scenario: str, local_ip: str, calls: int, rate: float, inf: Path, **options):
        run = self.run
        auth = (run.CALLER, run.password_for(run.CALLER)) if scenario.startswith("caller/") else None
        sipp = run.start_sipp(scenario, f"{self.edge.addr}:{self.edge.port}", workdir=self.dir, name=f"sipp-{tag}",
                              scenarios=run.SIPP, local_ip=local_ip, transport="u1", auth=auth, rate=rate,
                              calls=calls, call_limit=max(20, int(rate * 20)), recv_timeout_ms=SIPP_RECV_TIMEOUT_MS,
                              stat_csv=True, trace_messages=False, timeout_error=False,
                              timeout=calls / rate * 4 + 120, inf=inf, **options)
        self.sipps.append(sipp)
        return sipp

    def counts(self) -> dict:
        out = {}
        for role, kam in (("edge", self.edge), ("registrar", self.registrar)):
            files = sorted(self.dir.glob(f"callgrind.{kam.name}.*"))
            if not files:
                raise self.run.ProcessError(f"no callgrind files for {kam.name} in {self.dir}")
            out[role] = role_counts(files)
        return out

    def registrations(self, count: int, rate: float = 4.0) -> dict:
        users = self.run.write_users(self.dir / "users.csv", "cgr", count, 61)
        try:
            self.start()
            sipp = self.sipp("register", "register/uac.xml", self.s.addr(110), count, rate, users)
            sipp.wait()
            stats = self.run.sipp_stats(sipp)
        finally:
            self.stop()
        return {"ok": stats.successful, "failed": stats.failed, "retransmissions": stats.retransmissions,
                "callee_registrations": 0, "counts": self.counts()}

    def calls(self, count: int, callees: int = 5, rate: float = 2.0) -> dict:
        callee_users = self.run.write_users(self.dir / "callees.csv", "cgc", callees, 62)
        try:
            self.start()
            held = self.callees(callee_users, callees, hold_s=count / rate * 4 + 120)
            sipp = self.sipp("calls", "caller/uac.xml", self.s.addr(111), count, rate, callee_users)
            sipp.wait()
            stats = self.run.sipp_stats(sipp)
            held.kill()
        finally:
            self.stop()
        return {"ok": stats.successful, "failed": stats.failed, "retransmissions": stats.retransmissions,
                "callee_registrations": callees, "counts": self.counts()}

    def callees(self, users: Path, count: int, hold_s: float):
        sipp = self.sipp("callees", "callee/register.xml", self.s.addr(112), count, 2.0, users,
                         keys={"regid": "1", "cseq": "1", "cseq_auth": "2", "who": "cg"},
                         oocsf="callee/uas.xml", extra=["-d", str(int(hold_s * 1000))])
        sipp_timeout = time.monotonic() + 60 + count * 10
        while self.registrar.stat("usrloc:location_contacts") < count:
            if time.monotonic() > sipp_timeout or not sipp.alive:
                raise self.run.ProcessError(f"callees did not register (see {sipp.run_dir})")
            time.sleep(0.5)
        return sipp

    def profile(self, registrations: int, calls: int) -> dict:
        """Ours at normal speed with cProfile in every process: registrations,
        then calls; the merged statistics of each role."""
        prof_dirs = {"edge": self.dir / "prof-edge", "registrar": self.dir / "prof-registrar"}
        net = self.s.addr
        try:
            self.start(prof_dirs)
            users = self.run.write_users(self.dir / "users.csv", "cgp", registrations * 4, 63)
            self.sipp("register", "register/uac.xml", net(110), registrations * 4, 50.0, users).wait()
            callee_users = self.run.write_users(self.dir / "callees.csv", "cgq", 5, 64)
            held = self.callees(callee_users, 5, hold_s=calls * 4 / 20 + 60)
            self.sipp("calls", "caller/uac.xml", net(111), calls * 4, 20.0, callee_users).wait()
            held.kill()
        finally:
            for kam in reversed(self.kams):
                kam.stop()
        return {role: profile_table(sorted(folder.glob("*.prof"))) for role, folder in prof_dirs.items()}


PROFILE_ROW = re.compile(r"^\s*(\d+)(?:/\d+)?\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+(.*)$")


def profile_table(files: list[Path], limit: int = 30) -> dict:
    """Merged cProfile statistics: the functions with the most own time (and
    their cumulative time), KSR calls among them."""
    if not files:
        return {"rows": [], "total_s": 0.0}
    stats = pstats.Stats(str(files[0]), stream=io.StringIO())
    for path in files[1:]:
        stats.add(str(path))
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        where = name if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{line} {name}"
        rows.append({"function": where, "calls": ncalls, "own_s": round(tottime, 4), "cum_s": round(cumtime, 4)})
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return {"rows": rows[:limit], "total_s": round(stats.total_tt, 4), "processes": len(files)}
