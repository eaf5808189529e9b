#!/usr/bin/python3
"""Benchmark: kemi-outbound (KEMI Python) against Kamailio's C outbound module.

The same topology (registrar + edge1 + edge2 on loopback) is started twice per
pair of rounds: once with cfg/*.cfg (our Python) and once with bench/native/*.cfg
(C outbound module, registrar/tm failover recipe), alternated A B A B. Each
round measures, with SIPp as the only load generator:

* REGISTER ramps over UDP and TCP (users from an injection file);
* call ramps to registered outbound UAs holding UDP or TCP flows;
* CPU seconds of every Kamailio process (utime+stime from /proc) per step;
* script time per message (core latency_cfg_log, switched on over RPC for a
  short fixed-rate window only);
* shared memory per registered TCP flow;
* failover time: a flow dies (SIPp SIGKILL) and a call is answered on the
  instance's other flow.

Digest authentication is on for both sides: the two registrars read the same
SQLite subscriber database (made in the work folder with every bench user,
auth_db with the same modparams), every REGISTER is answered 401 first and every
call 407 first, and the SIPp scenarios answer with the user's credentials. A
"REGISTER" of the ramps is one registration (REGISTER, 401, REGISTER, 200).

All load goes to 127.x addresses of --net, every SIPp run is bounded with -m
and -timeout, and every process is stopped by its own PID. Run with Debian's
/usr/bin/python3 (see ``./run bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import instructions  # noqa: E402
import scale_edge  # noqa: E402
import scale_registrar  # noqa: E402
import soak  # noqa: E402

import analysis  # noqa: E402
import durability  # noqa: E402
from harness import TEST_KEY, Kamailio, ProcessError, SippRun, read_log, start_sipp  # noqa: E402
from locations import sqlite_location_db  # noqa: E402
from subscribers import SubscriberDB, password_for  # noqa: E402

BENCH = ROOT / "bench"
SIPP = BENCH / "sipp"
IMPLS = {
    "ours": {"edge": ROOT / "cfg" / "edge.cfg", "registrar": ROOT / "cfg" / "registrar.cfg"},
    "native": {"edge": BENCH / "native" / "edge.cfg", "registrar": BENCH / "native" / "registrar.cfg"},
    # the app_python3 floor (issue 17): native's cfg and modules, its routes in Python
    # (bench/floor/*.py, loaded with -A KO_FLOOR)
    "floor": {"edge": BENCH / "native" / "edge.cfg", "registrar": BENCH / "native" / "registrar.cfg"},
}
FLOOR = {"edge": BENCH / "floor" / "edge.py", "registrar": BENCH / "floor" / "registrar.py"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
RECV_TIMEOUT_MS = 3000
# The ramps send up to 10000 requests/s from one SIPp address, and the registrar
# sees all of an edge's traffic from one address: far above the flood limit's
# default (cfg/*.cfg KO_PIKE_REQS, 400 per 2 s). Pike stays loaded and counts
# (its cost is part of what we measure), but bans nobody below this (pike's
# counters are 16 bits: keep it under 65535).
PIKE_REQS = "50000"
DOMAIN = "example.com"
CALLER = "caller"  # the From user of bench/sipp/caller/uac.xml, a subscriber too
AUTH_SECRET = "kemi-outbound-bench-nonce-secret"  # KO_AUTH_SECRET of both registrars


class Subscribers:
    """The run's subscriber database (SQLite, in the work folder), shared by our
    registrar and the native one; every bench user is added once, password
    password_for(user)."""

    def __init__(self, workdir: Path) -> None:
        path = workdir / "subscribers.sqlite"
        path.unlink(missing_ok=True)
        self.db = SubscriberDB.create_sqlite(path)
        self.known: set[str] = set()
        self.add([CALLER])

    def add(self, users: list[str]) -> None:
        new = [u for u in users if u not in self.known]
        if new:
            self.db.add_many((u, DOMAIN, password_for(u)) for u in new)
            self.known.update(new)

    def defines(self) -> dict[str, str]:
        return {"KO_DB_URL": f'"{self.db.url}"', "KO_AUTH_SECRET": f'"{AUTH_SECRET}"'}


SUBSCRIBERS: list[Subscribers] = []  # set by main()
MEM_MANAGER: list[str] = [""]  # set by main() from --mem-manager


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclasses.dataclass
class BenchKamailio(Kamailio):
    """A harness Kamailio with our own cfg path, memory sizes and cfg_rpc loaded
    (to switch latency_cfg_log on and off at run time)."""

    cfg_path: Path = ROOT / "cfg" / "edge.cfg"
    shm_mb: int = 512
    pkg_mb: int = 16
    # Kamailio's memory manager for shm and pkg (-x): "" keeps Kamailio's default, qm
    # (bench/run.py --mem-manager; the same for every implementation of a run)
    mem_manager: str = dataclasses.field(default_factory=lambda: MEM_MANAGER[0])

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("-f") + 1] = str(self.cfg_path)
        cmd[cmd.index("-m") + 1] = str(self.shm_mb)
        cmd[cmd.index("-M") + 1] = str(self.pkg_mb)
        return cmd + ["--loadmodule=cfg_rpc.so"]

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return analysis.cpu_ticks(self.proc.pid, all_proc_stats()) / CLK_TCK

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [s.pid for s in analysis.descendants(self.proc.pid, all_proc_stats())]

    def pss_kib(self) -> int:
        """Proportional set size of all processes (shared pages split, not repeated)."""
        total = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
            total += int(match.group(1)) if match else 0
        return total

    def shm_used(self) -> int:
        return int(self.rpc("core.shmmem")["real_used"])

    def stat(self, name: str) -> int:
        group = name.split(":", 1)[0] + ":"
        for line in self.rpc("stats.get_statistics", group) or []:
            key, _, value = line.partition(" = ")
            if key == name:
                return int(value)
        raise KeyError(name)

    def set_core_cfg(self, name: str, value: int) -> None:
        self.rpc("cfg.seti", "core", name, value)


def all_proc_stats() -> list[analysis.ProcStat]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                out.append(analysis.parse_proc_stat(Path(entry.path, "stat").read_text()))
            except (OSError, ValueError, IndexError):
                continue
    return out


# ---------------------------------------------------------------- SIPp


def sipp_stats(run: SippRun) -> analysis.SippStats:
    """The statistics a bench SIPp wrote (stat.csv)."""
    try:
        return analysis.parse_sipp_stat_csv((run.run_dir / "stat.csv").read_text())
    except (OSError, ValueError, KeyError) as exc:
        tail = read_log(run.run_dir / "stdout.log")[-2000:]
        raise ProcessError(f"no SIPp statistics in {run.run_dir}: {exc}\n{tail}") from None


def auth_field(user: str) -> str:
    """The injection-file field that answers a 401 with ``user``'s own credentials:
    SIPp 3.6.1 parses an [authentication] keyword that an injected field holds,
    while [authentication username=[field0] ...] in the scenario does not work."""
    return f"[authentication username={user} password={password_for(user)}]"


def write_users(path: Path, prefix: str, count: int, uuid_group: int) -> Path:
    """Injection file ``user;uuid;[authentication ...]``; every user becomes a subscriber."""
    users = [f"{prefix}{i}" for i in range(count)]
    SUBSCRIBERS[0].add(users)
    lines = ["SEQUENTIAL"]
    lines += [f"{user};00000000-0000-4000-{uuid_group:04d}-{i:012d};{auth_field(user)}" for i, user in enumerate(users)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    net: str
    rounds: list[str]
    step_seconds: float
    register_rates: list[int]
    call_rates: list[int]
    overshoot: int
    callees: int
    memory_flows: int
    tcp_flows: int
    failovers: int
    latency_seconds: float
    latency_register_rate: int
    latency_call_rate: int
    cpu_ref_register_rate: int
    cpu_ref_call_rate: int
    time_limit: float
    workdir: Path
    usrloc_db_mode: int = 2
    durability: int = 0
    metrics_cost: int = 0
    instructions: int = 0
    setup_seconds: float = 5.0
    impls: tuple[str, ...] = ("ours", "native", "floor")
    mem_manager: str = ""
    soak: float = 0.0  # --soak MINUTES: the soak alone (bench/soak.py)
    soak_call_rate: int = 0
    soak_impl: str = "ours"  # --soak-impl: native or the floor, for comparison with ours
    scale_bindings: tuple[int, ...] = ()
    scale_flows: tuple[int, ...] = ()  # the edge scale run's sizes (bench/scale_edge.py)

    def addr(self, host: int) -> str:
        return f"{self.net}.{host}"


# ---------------------------------------------------------------- one round


def impl_defines(impl: str, role: str, registrar_uri: str = "") -> dict[str, str]:
    """The -A defines every bench start of ``impl``'s ``role`` takes: the edge's
    registrar, the registrar's subscriber database and nonce secret (the same
    for every implementation), our flood limit raised, the floor's script."""
    defines = {"KO_REGISTRAR": f'"{registrar_uri}"'} if registrar_uri else {}
    if role == "registrar":
        defines.update(SUBSCRIBERS[0].defines())
    if impl == "ours":
        defines["KO_PIKE_REQS"] = PIKE_REQS
    if impl == "floor":
        defines["KO_FLOOR"] = f'"{FLOOR[role]}"'
    return defines


class Round:
    """One implementation started fresh and measured once."""

    def __init__(self, impl: str, index: int, settings: Settings) -> None:
        self.impl = impl
        self.index = index
        self.s = settings
        self.dir = settings.workdir / f"{index:02d}-{impl}"
        self.result: dict = {"impl": impl, "index": index}
        self.kams: list[BenchKamailio] = []
        self.sipps: list[SippRun] = []
        self.step_no = 0

    # -- topology

    def kamailio(self, name: str, role: str, addr: str, port: int, registrar_uri: str = "") -> BenchKamailio:
        defines = impl_defines(self.impl, role, registrar_uri)
        if role == "registrar":
            # the same usrloc persistence for both: a fresh SQLite location file per round,
            # written every second, so that each 2 s step pays for its own writes
            # (with the cfg's 10 s, a burst of thousands of rows lands in one step)
            defines["KO_USRLOC_DB_MODE"] = str(self.s.usrloc_db_mode)
            defines["KO_USRLOC_TIMER"] = "1"
            defines["KO_USRLOC_DB_URL"] = f'"{sqlite_location_db(self.dir / "location.sqlite")}"'
        kam = BenchKamailio(name, IMPLS[self.impl][role].name, self.dir, addr, port, defines=defines,
                            env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS[self.impl][role])
        kam.start()
        self.kams.append(kam)
        return kam

    @contextmanager
    def topology(self) -> Iterator[None]:
        try:
            self.registrar = self.kamailio("registrar", "registrar", self.s.addr(1), 5070)
            self.edge1 = self.kamailio("edge1", "edge", self.s.addr(2), 5060, self.registrar.uri)
            self.edge2 = self.kamailio("edge2", "edge", self.s.addr(3), 5060, self.registrar.uri)
            yield
        finally:
            for sipp in self.sipps:
                sipp.kill()
            for kam in reversed(self.kams):
                kam.stop()

    def sipp(self, tag: str, scenario: str, remote: str, local_ip: str, transport: str, *,
             rate: float | None = None, trace: bool = False, **options: Any) -> SippRun:
        """A SIPp on a bench scenario (statistics in stat.csv; messages traced only
        with ``trace``); at ``rate`` calls per second, at most 6 s of them open."""
        self.step_no += 1
        auth = (CALLER, password_for(CALLER)) if scenario.startswith("caller/") else None  # the 407's answer
        run = start_sipp(scenario, remote, workdir=self.dir, name=f"sipp-{self.step_no:03d}-{tag}", scenarios=SIPP,
                         local_ip=local_ip, transport=transport, auth=auth, rate=rate,
                         call_limit=None if rate is None else max(100, int(rate * 6)),
                         recv_timeout_ms=RECV_TIMEOUT_MS, stat_csv=True, trace_messages=trace, timeout_error=False,
                         **options)
        self.sipps.append(run)
        return run

    # -- measurements

    def run(self) -> dict:
        started = time.monotonic()
        self.result["loadavg_start"] = os.getloadavg()
        with self.topology():
            self.result["processes"] = {k.name: len(k.pids()) for k in self.kams}
            # memory first, on fresh processes
            self.result["memory"] = self.memory_phase()
            self.result["register_udp"] = self.register_ramp("udp")
            self.result["register_tcp"] = self.register_ramp("tcp")
            self.result["calls_udp"] = self.call_phase("udp", "un", with_latency=True)
            self.result["calls_tcp"] = self.call_phase("tcp", "tn", with_latency=False)
            try:
                self.result["failover"] = self.failover_phase()
            except ProcessError as exc:
                # a SIPp callee that did not register in time (seen on slow machines) costs
                # the failover figure of this round, not the round's other figures
                log(f"{self.impl} round {self.index}: failover failed: {exc}")
                self.result["failover"] = {"error": str(exc)[:2000]}
        self.result["seconds"] = round(time.monotonic() - started, 1)
        return self.result

    def measured_step(self, tag: str, scenario: str, remote: str, local_ip: str | list[str], transport: str,
                      rate: int, inf: Path | list[Path], tx_per_call: int) -> dict:
        """One ramp step; with lists of addresses and injection files, one SIPp per
        pair shares the rate (-t t1: several long-lived TCP flows)."""
        infs = inf if isinstance(inf, list) else [inf]
        calls = max(1, int(rate * self.s.step_seconds / len(infs)))
        cpu_before = {k.name: k.cpu_seconds() for k in (self.edge1, self.registrar)}
        ips = local_ip if isinstance(local_ip, list) else [local_ip]
        sipps = [self.sipp(f"{tag}-{i}" if len(infs) > 1 else tag, scenario, remote, ip, transport,
                           calls=calls, timeout=self.s.step_seconds * 3 + 10, rate=rate / len(infs), inf=users)
                 for i, (users, ip) in enumerate(zip(infs, ips, strict=True))]
        rcs = [sipp.wait().returncode for sipp in sipps]
        cpu_after = {k.name: k.cpu_seconds() for k in (self.edge1, self.registrar)}
        parts = [sipp_stats(sipp) for sipp in sipps]
        stats = analysis.SippStats(
            created=sum(p.created for p in parts), successful=sum(p.successful for p in parts),
            failed=sum(p.failed for p in parts), elapsed=max(p.elapsed for p in parts),
            retransmissions=sum(p.retransmissions for p in parts))
        step = analysis.Step(rate, stats)
        out = {
            "offered": rate, "calls": calls * len(infs), "rc": max(rcs), **dataclasses.asdict(stats),
            "throughput": round(stats.throughput, 1), "failure_ratio": step.failure_ratio,
            "passed": step.passed, "transactions": stats.successful * tx_per_call,
            "cpu": {name: round(cpu_after[name] - cpu_before[name], 3) for name in cpu_before},
        }
        log(f"  {self.impl} {tag} offered {rate}/s: {stats.throughput:.0f}/s ok={stats.successful} "
            f"failed={stats.failed} retrans={stats.retransmissions} cpu={out['cpu']} "
            f"{'pass' if step.passed else 'FAIL'}")
        return out

    def ramp(self, tag: str, rates: list[int], run_step: Callable[[int], dict]) -> list[dict]:
        # the previous overload may leave transactions behind: a short grace only
        self.settle((self.edge1, self.registrar), "tmx:active_transactions", timeout=5.0)
        steps: list[dict] = []
        failures = 0
        for rate in rates:
            steps.append(run_step(rate))
            if not steps[-1]["passed"]:
                failures += 1
                if failures > self.s.overshoot:
                    break
        return steps

    def register_ramp(self, transport: str) -> dict:
        """UDP: one SIPp socket. TCP: --tcp-flows SIPp processes, one long-lived
        connection each (SIPp's -t tn with -max_socket reuse breaks connections
        under load, whichever server is behind)."""
        remote = f"{self.edge1.addr}:{self.edge1.port}"
        log(f"{self.impl} round {self.index}: REGISTER ramp over {transport}")
        if transport == "udp":
            users: Path | list[Path] = write_users(self.dir / "reg-udp.csv", "rudp", 20000, 1)
            local_ip: str | list[str] = self.s.addr(10)
            mode = "u1"
        else:
            users = [write_users(self.dir / f"reg-tcp-{i}.csv", f"rtcp{i}x", 5000, 10 + i)
                     for i in range(self.s.tcp_flows)]
            local_ip = [self.s.addr(50 + i) for i in range(self.s.tcp_flows)]  # SIPp -p 0 may collide
            mode = "t1"

        def step(rate: int) -> dict:
            return self.measured_step(f"register-{transport}-{rate}", "register/uac.xml", remote, local_ip, mode,
                                      rate, users, 1)

        steps = self.ramp(f"register-{transport}", self.s.register_rates, step)
        return summarise_ramp(steps, self.s.cpu_ref_register_rate)

    def contacts(self, aor: str | None = None) -> int:
        """The registrar's contacts: all of them, or one AOR's. With usrloc in
        write-back mode a removed contact leaves the total only at the next
        timer run, so a wait for one AOR's new contacts counts that AOR alone."""
        if aor is None:
            return self.registrar.stat("usrloc:location_contacts")
        return len(self.registrar.bindings(aor))

    def wait_contacts(self, target: int, timeout: float, sipp: SippRun, aor: str | None = None) -> int:
        deadline = time.monotonic() + timeout
        count = self.contacts(aor)
        while count < target and time.monotonic() < deadline:
            if not sipp.alive:
                break
            time.sleep(0.1)
            count = self.contacts(aor)
        return count

    def start_callees(self, tag: str, transport: str, mode: str, users: Path, count: int, local_ip: str,
                      hold_s: float, edge: BenchKamailio, rate: int = 200, extra: list[str] | None = None,
                      aor: str | None = None, **keys: str) -> SippRun:
        before = self.contacts(aor)
        sipp = self.sipp(tag, "callee/register.xml", f"{edge.addr}:{edge.port}", local_ip, mode,
                         calls=count, timeout=hold_s + 30, rate=rate, inf=users,
                         keys={"regid": "1", "cseq": "1", "cseq_auth": "2", "who": tag, **keys},
                         oocsf="callee/uas.xml",
                         extra=["-d", str(int(hold_s * 1000)), "-max_socket", str(count + 100), *(extra or [])])
        got = self.wait_contacts(before + count, 30 + count / rate, sipp, aor)
        if got < before + count:
            raise ProcessError(f"{tag}: only {got - before} of {count} callees registered "
                               f"(see {sipp.run_dir})")
        return sipp

    def call_phase(self, transport: str, mode: str, with_latency: bool) -> dict:
        log(f"{self.impl} round {self.index}: calls to outbound UAs over {transport}")
        users = write_users(self.dir / f"callees-{transport}.csv", f"c{transport}", self.s.callees,
                            3 if transport == "udp" else 4)
        hold = (len(self.s.call_rates) * (self.s.step_seconds + 3) + 3 * self.s.latency_seconds
                + 3 * self.s.setup_seconds + 30)
        callee = self.start_callees(f"callees-{transport}", transport, mode, users, self.s.callees,
                                    self.s.addr(20 if transport == "udp" else 21), hold, self.edge1)
        remote = f"{self.edge1.addr}:{self.edge1.port}"
        caller_ip = self.s.addr(30 if transport == "udp" else 31)
        out: dict = {}
        if with_latency:
            out["latency"] = self.latency_window(users, caller_ip)

        def step(rate: int) -> dict:
            return self.measured_step(f"calls-{transport}-{rate}", "caller/uac.xml", remote, caller_ip, "u1",
                                      rate, users, 2)

        steps = self.ramp(f"calls-{transport}", self.s.call_rates, step)
        out.update(summarise_ramp(steps, self.s.cpu_ref_call_rate))
        if out["max_rate"]:
            out["setup_latency"] = self.setup_latency(f"setup-{transport}", remote, caller_ip, users,
                                                      max(1, int(out["max_rate"] // 2)))
        callee.kill()
        return out

    def setup_latency(self, tag: str, remote: str, caller_ip: str, callee_users: Path, rate: int) -> dict:
        """Call setup time under load (issue 17): every call's first INVITE -> 200
        (the 407 round trip included), from SIPp's message trace, at ``rate``,
        half this round's highest passing call rate."""
        seconds = self.s.setup_seconds
        sipp = self.sipp(tag, "caller/uac.xml", remote, caller_ip, "u1", calls=max(1, int(rate * seconds)),
                         timeout=seconds * 3 + 10, rate=rate, inf=callee_users, trace=True)
        sipp.wait()
        stats = sipp_stats(sipp)
        values = analysis.setup_times_ms(read_log(sipp.run_dir / "messages.log"))
        out = {"rate": rate, "calls": len(values), "failed": stats.failed,
               "median_ms": round(analysis.percentile(values, 0.5), 2) if values else None,
               "p99_ms": round(analysis.percentile(values, 0.99), 2) if values else None}
        log(f"  {self.impl} {tag}: {out}")
        return out

    def latency_window(self, callee_users: Path, caller_ip: str) -> dict:
        """Core latency_cfg_log on for a short fixed load: REGISTERs and calls."""
        kams = (self.edge1, self.registrar)
        offsets = {k.name: k.log_path.stat().st_size for k in kams}
        for kam in kams:
            kam.set_core_cfg("latency_cfg_log", 2)  # L_INFO, printed at debug=2
            kam.set_core_cfg("latency_limit_cfg", 0)  # every message
        try:
            users = write_users(self.dir / "latency-reg.csv", "lat", 5000, 5)
            remote = f"{self.edge1.addr}:{self.edge1.port}"
            secs = self.s.latency_seconds
            reg = self.sipp("latency-register", "register/uac.xml", remote, self.s.addr(12), "u1",
                            calls=int(self.s.latency_register_rate * secs), timeout=secs * 3 + 10,
                            rate=self.s.latency_register_rate, inf=users)
            calls = self.sipp("latency-calls", "caller/uac.xml", remote, caller_ip, "u1",
                              calls=int(self.s.latency_call_rate * secs), timeout=secs * 3 + 10,
                              rate=self.s.latency_call_rate, inf=callee_users)
            reg.wait()
            calls.wait()
        finally:
            for kam in kams:
                kam.set_core_cfg("latency_cfg_log", 3)  # back to L_DBG: off
        out = {}
        for kam in kams:
            with open(kam.log_path, "rb") as handle:
                handle.seek(offsets[kam.name])
                values = analysis.route_latencies(handle.read().decode(errors="replace"))
            out[kam.name] = {
                kind: {"n": len(v), "median_us": analysis.percentile(v, 0.5), "p90_us": analysis.percentile(v, 0.9)}
                for kind, v in values.items()
            }
        log(f"  {self.impl} latency: {json.dumps(out)}")
        return out

    def memory_phase(self) -> dict:
        """Shared memory (and PSS) growth while N TCP flows are registered."""
        count = self.s.memory_flows
        log(f"{self.impl} round {self.index}: memory with {count} registered TCP flows")
        users = write_users(self.dir / "memory.csv", "m", count, 6)
        kams = (self.edge1, self.registrar)
        self.settle(kams)
        shm_before = {k.name: k.shm_used() for k in kams}
        pss_before = {k.name: k.pss_kib() for k in kams}
        sipp = self.start_callees("memory", "tcp", "tn", users, count, self.s.addr(22), hold_s=30 + count / 200,
                                  edge=self.edge1, rate=500)
        connections = self.edge1.stat("tcp:current_opened_connections")
        self.settle(kams)  # REGISTER transactions gone (tm wait timer)
        shm_after = {k.name: k.shm_used() for k in kams}
        pss_after = {k.name: k.pss_kib() for k in kams}
        sipp.kill()
        scale = 10000 / count
        out = {
            "flows": count, "edge_tcp_connections": connections,
            "shm_per_10k_mib": {n: round((shm_after[n] - shm_before[n]) * scale / 2**20, 2) for n in shm_before},
            "pss_per_10k_mib": {n: round((pss_after[n] - pss_before[n]) * scale / 1024, 2) for n in pss_before},
        }
        log(f"  {self.impl} memory: {out}")
        return out

    @staticmethod
    def settle(kams: tuple[BenchKamailio, ...], stat: str = "tmx:inuse_transactions", timeout: float = 20.0) -> None:
        """Wait until no transaction is left (inuse: their memory is back too;
        active: the previous load is over)."""
        deadline = time.monotonic() + timeout
        for kam in kams:
            while kam.stat(stat) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)

    def failover_phase(self) -> dict:
        """A UA with two flows (reg-id 1 via edge1, 2 via edge2); flow 1 dies
        (SIGKILL closes its TCP connection); time until a call is answered on
        flow 2."""
        log(f"{self.impl} round {self.index}: failover")
        samples = []
        for i in range(self.s.failovers):
            samples.append(self.one_failover(i))
        good = [s["kill_to_answer_ms"] for s in samples if s.get("valid")]
        out = {"samples": samples, "valid": len(good),
               "parallel_fork": any(s.get("serial") is False for s in samples),
               "kill_to_answer_ms": analysis.median(good),
               "invite_to_answer_ms": analysis.median(s["invite_to_answer_ms"] for s in samples if s.get("valid")),
               "probe_invite_to_answer_ms": analysis.median(s.get("probe_invite_to_answer_ms") for s in samples)}
        log(f"  {self.impl} failover: {json.dumps({k: v for k, v in out.items() if k != 'samples'})}")
        return out

    def one_failover(self, i: int) -> dict:
        user = f"fo{i}"
        users = self.dir / f"failover-{i}.csv"
        SUBSCRIBERS[0].add([user])
        users.write_text(f"SEQUENTIAL\n{user};00000000-0000-4000-0007-{i:012d};{auth_field(user)}\n")
        # one Call-ID for both flows of the instance (RFC 5626 4.2; Kamailio's usrloc
        # drops the instance's other reg-ids on a new Call-ID)
        cid = ["-cid_str", f"failover-{self.index}-{i}@bench"]
        hold = 40.0
        aor = user  # (usrloc keys AORs by user); the previous sample's removed flow may leave the total only now
        flows = {
            "flow1": (self.edge1, self.start_callees(f"failover-{i}-flow1", "tcp", "t1", users, 1, self.s.addr(40),
                                                     hold, self.edge1, rate=10, extra=cid, aor=aor, regid="1", cseq="1",
                                                     cseq_auth="2", who="flow1")),
            "flow2": (self.edge2, self.start_callees(f"failover-{i}-flow2", "tcp", "t1", users, 1, self.s.addr(41),
                                                     hold, self.edge2, rate=10, extra=cid, aor=aor, regid="2", cseq="3",
                                                     cseq_auth="4", who="flow2")),
        }
        edges = (self.edge1, self.edge2)
        try:
            # a first call shows which flow the home proxy tries first: that one dies
            before = [e.stat("core:rcv_requests_invite") for e in edges]
            probe = self.call_once(f"failover-{i}-probe", users)
            probe_branches = sum(e.stat("core:rcv_requests_invite") - b for e, b in zip(edges, before, strict=True))
            if probe["who"] not in flows:
                return {"valid": False, "why": f"probe call not answered: {probe}"}
            dead = probe["who"]
            alive = "flow2" if dead == "flow1" else "flow1"
            dead_edge, dead_sipp = flows[dead]
            dead_edge_invites = dead_edge.stat("core:rcv_requests_invite")
            killed_at = time.time()
            dead_sipp.kill()  # SIGKILL: the kernel closes its TCP connection
            call = self.call_once(f"failover-{i}-call", users)
            tried_dead = dead_edge.stat("core:rcv_requests_invite") - dead_edge_invites
        finally:
            for _, sipp in flows.values():
                sipp.kill()
        sample = {"dead": dead, **call, "dead_edge_invites": tried_dead, "probe_branches": probe_branches}
        if probe.get("answered_at") and probe.get("invite_at"):
            sample["probe_invite_to_answer_ms"] = round((probe["answered_at"] - probe["invite_at"]) * 1000, 1)
        if call.get("answered_at") and call.get("invite_at"):
            sample["kill_to_answer_ms"] = round((call["answered_at"] - killed_at) * 1000, 1)
            sample["invite_to_answer_ms"] = round((call["answered_at"] - call["invite_at"]) * 1000, 1)
        # valid: one flow at a time (probe reached one flow), the dead flow was tried,
        # and the call was answered on the other one
        sample["serial"] = probe_branches == 1
        sample["valid"] = bool(call["rc"] == 0 and call["who"] == alive and tried_dead > 0 and sample["serial"]
                               and "kill_to_answer_ms" in sample)
        return sample

    def call_once(self, tag: str, users: Path) -> dict:
        # straight to the home proxy, so that the edges count only INVITEs toward the flows
        caller = self.sipp(tag, "caller/uac.xml", f"{self.registrar.addr}:{self.registrar.port}", self.s.addr(42), "u1",
                           calls=1, timeout=40, inf=users, trace=True)
        result = caller.wait()
        who = re.findall(r"who=\s*(\S*)", result.log)
        out: dict = {"rc": result.returncode, "who": who[-1] if who else ""}
        for stamp, kind, first in message_times(result.messages):
            if kind == "sent" and first.startswith("INVITE"):
                out.setdefault("invite_at", stamp)
            if kind == "received" and first.startswith("SIP/2.0 200"):
                out.setdefault("answered_at", stamp)
        return out


MESSAGE_HEAD = re.compile(
    r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(\w+) message (sent|received)[^\n]*\n\n?([^\n]*)", re.M)


def message_times(text: str) -> Iterator[tuple[float, str, str]]:
    """(epoch, 'sent'|'received', first line) of each message in a SIPp -trace_msg file."""
    for match in MESSAGE_HEAD.finditer(text):
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        yield stamp, match.group(3), match.group(4).strip()


def summarise_ramp(steps: list[dict], cpu_ref_rate: int) -> dict:
    parsed = [analysis.Step(s["offered"], analysis.SippStats(s["created"], s["successful"], s["failed"],
                                                             s["elapsed"], s["retransmissions"])) for s in steps]
    ref = [s for s in steps if s["offered"] <= cpu_ref_rate and s["passed"]]
    tx = sum(s["transactions"] for s in ref)
    cpu = {}
    for name in ("edge1", "registrar"):
        cpu[name] = analysis.per_thousand(sum(s["cpu"][name] for s in ref), tx)
    best = analysis.highest_passing_rate(parsed)
    return {
        "steps": steps,
        "max_rate": best,
        # the top step passed: the real limit is higher than the ramp went
        "censored": bool(steps) and best == max(s["offered"] for s in steps),
        "peak_throughput": max((s["throughput"] for s in steps if s["passed"]), default=0.0),
        "cpu_per_1000_tx": cpu,
        "cpu_ref_transactions": tx,
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=os.environ.get("KO_TEST_NET", "127.0.0"),
                        help="loopback /24 to use (default $KO_TEST_NET or 127.0.0)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="rounds of each implementation (ours, native, floor), alternated (default 3)")
    parser.add_argument("--first", choices=["ours", "native"], default="ours")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out the app_python3 floor (bench/floor: native's routes in Python)")
    parser.add_argument("--step-seconds", type=float, default=2.0, help="duration of one ramp step")
    parser.add_argument("--register-rates", default="1000,2000,3000,4000,5000,6000,8000,10000")
    parser.add_argument("--call-rates", default="100,200,400,600,800,1000,1200,1500")
    parser.add_argument("--overshoot", type=int, default=1, help="steps run after the first failing one")
    parser.add_argument("--callees", type=int, default=100, help="registered UAs that answer calls")
    parser.add_argument("--tcp-flows", type=int, default=4,
                        help="TCP connections (one SIPp each) carrying the TCP REGISTER load")
    parser.add_argument("--memory-flows", type=int, default=2000, help="TCP flows for the memory figure")
    parser.add_argument("--failovers", type=int, default=3, help="failover samples per round")
    parser.add_argument("--latency-seconds", type=float, default=2.0)
    parser.add_argument("--latency-register-rate", type=int, default=200)
    parser.add_argument("--latency-call-rate", type=int, default=100)
    parser.add_argument("--cpu-ref-register-rate", type=int, default=1000,
                        help="CPU per transaction is taken from passing steps up to this rate")
    parser.add_argument("--cpu-ref-call-rate", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=450,
                        help="start no new pair of rounds after this many seconds (default 450)")
    parser.add_argument("--usrloc-db-mode", type=int, choices=[0, 1, 2], default=2,
                        help="usrloc db_mode of both registrars (default 2, write-back to SQLite)")
    parser.add_argument("--durability", type=int, default=100000,
                        help="bindings for the reload / DMQ resync / write-back figures (0: skip)")
    parser.add_argument("--metrics-cost", type=int, default=3,
                        help="on/off pairs of the metrics' cost run (our edge + registrar, -A WITH_NOMETRICS; 0: skip)")
    parser.add_argument("--instructions", type=int, default=100,
                        help="registrations (and half as many calls) per implementation under callgrind "
                             "(bench/instructions.py; 0: skip)")
    parser.add_argument("--only-instructions", action="store_true",
                        help="no rounds: the instruction counts and the profile alone")
    parser.add_argument("--setup-seconds", type=float, default=5.0,
                        help="length of the call setup time window at half the highest call rate")
    parser.add_argument("--mem-manager", choices=["", "qm", "fm", "tlsf"], default="",
                        help="Kamailio's memory manager for every Kamailio of the run (-x; default: Kamailio's, qm)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="MINUTES",
                        help="run only the soak (bench/soak.py) for MINUTES of load (the issue's figure: 30)")
    parser.add_argument("--soak-call-rate", type=int, default=0,
                        help="the soak's calls/s (default: half our highest passing TCP call rate in "
                             "docs/benchmarks.json)")
    parser.add_argument("--soak-impl", choices=["ours", "native", "floor"], default="ours",
                        help="whose cfgs the soak runs (default ours; native or floor for comparison: their own "
                             "section of docs/benchmarks.md and their own plot)")
    parser.add_argument("--scale-bindings", default="10000,100000,1000000",
                        help="registrar scale run (bench/scale_registrar.py): bindings held, comma-separated "
                             "(default 10000,100000,1000000, about 12 minutes; empty: skip)")
    parser.add_argument("--scale-flows", default=scale_edge.DEFAULT_SIZES,
                        help="the edge scale run's sizes, registered TCP flows held by one edge "
                             f"(bench/scale_edge.py; default {scale_edge.DEFAULT_SIZES}; \"\": skip)")
    parser.add_argument("--only-scale", action="store_true",
                        help="no rounds, instructions, durability or metrics cost: the scale runs alone")
    parser.add_argument("--quick", action="store_true", help="one short pair, for development")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.step_seconds, args.failovers = 1, 1.5, 1
        args.register_rates, args.call_rates = "500,1500", "100,300"
        args.memory_flows, args.latency_seconds = 300, 1.0
        args.durability = min(args.durability, 5000)
        args.instructions = min(args.instructions, 20)
        args.scale_bindings = "2000,20000" if args.scale_bindings else ""
        args.scale_flows = "500,1000" if args.scale_flows else ""
    only_other = args.only_instructions or args.only_scale
    order = ([args.first, "native" if args.first == "ours" else "ours"] + ([] if args.no_floor else ["floor"])) \
        * args.pairs
    # absolute: Kamailio changes its working directory to /
    workdir = (args.workdir or BENCH / ".work" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    return Settings(
        net=args.net, rounds=[] if only_other or args.soak else order, step_seconds=args.step_seconds,
        register_rates=[int(x) for x in args.register_rates.split(",")],
        call_rates=[int(x) for x in args.call_rates.split(",")], overshoot=args.overshoot,
        callees=args.callees, memory_flows=args.memory_flows, tcp_flows=args.tcp_flows, failovers=args.failovers,
        latency_seconds=args.latency_seconds, latency_register_rate=args.latency_register_rate,
        latency_call_rate=args.latency_call_rate, cpu_ref_register_rate=args.cpu_ref_register_rate,
        cpu_ref_call_rate=args.cpu_ref_call_rate, time_limit=args.time_limit, workdir=workdir,
        usrloc_db_mode=args.usrloc_db_mode, durability=0 if only_other else args.durability,
        metrics_cost=0 if only_other else args.metrics_cost, instructions=0 if args.only_scale else args.instructions,
        impls=tuple(dict.fromkeys(order)), mem_manager=args.mem_manager, setup_seconds=args.setup_seconds,
        soak=args.soak, soak_call_rate=args.soak_call_rate, soak_impl=args.soak_impl,
        scale_bindings=scale_registrar.parse_sizes(args.scale_bindings),
        scale_flows=tuple(scale_edge.parse_sizes(args.scale_flows)),
    )


def replication_phase(settings: Settings, rate: int = 300, seconds: float = 6.0) -> dict:
    """CPU per REGISTER of a DMQ pair (our edge -> reg1, reg1 replicating to reg2):
    at the registrar that saves and at its peer, at a fixed rate over UDP."""
    folder = settings.workdir / "replication"
    folder.mkdir(parents=True, exist_ok=True)
    a, b = settings.addr(33), settings.addr(34)

    def registrar(name: str, me: str, peer: str) -> BenchKamailio:
        return BenchKamailio(name, "registrar.cfg", folder, me, 5070, defines={
            **SUBSCRIBERS[0].defines(), "KO_PIKE_REQS": PIKE_REQS, "WITH_DMQ": "",
            "KO_USRLOC_DB_URL": f'"{sqlite_location_db(folder / (name + ".sqlite"))}"',
            "KO_DMQ_ADDRESS": f'"sip:{me}:5070"', "KO_DMQ_PEER": f'"sip:{peer}:5070"'},
            env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS["ours"]["registrar"])

    reg1, reg2 = registrar("pair-reg1", a, b), registrar("pair-reg2", b, a)
    edge = BenchKamailio("pair-edge", "edge.cfg", folder, settings.addr(35), 5060,
                         defines={"KO_REGISTRAR": f'"{reg1.uri}"', "KO_PIKE_REQS": PIKE_REQS},
                         env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS["ours"]["edge"])
    held: dict[str, int] = {}

    def settled() -> None:
        # the peer applies what reg1 saved: wait until it holds them all (bounded)
        deadline = time.monotonic() + 20
        while reg2.stat("usrloc:location_contacts") < reg1.stat("usrloc:location_contacts") \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        held["replicated"] = reg2.stat("usrloc:location_contacts")

    out = register_cpu(folder, "pair", (reg1, reg2, edge), edge, settings.addr(36), rate, seconds, settled)
    out["replicated"] = held.get("replicated", 0)
    log(f"  replication: {out['registrations']} REGISTER at {rate}/s, {out['replicated']} at the peer, "
        f"CPU µs per REGISTER {out['cpu_us_per_register']}")
    return out


def register_cpu(folder: Path, tag: str, kams: tuple[BenchKamailio, ...], edge: BenchKamailio, local_ip: str,
                 rate: int, seconds: float, settled: Callable[[], None] = lambda: None) -> dict:
    """Start ``kams``, send REGISTERs at ``rate`` for ``seconds`` over UDP through
    ``edge``; each Kamailio's CPU µs per successful REGISTER; stop them."""
    calls = int(rate * seconds)
    users = write_users(folder / f"{tag}.csv", tag, calls, 90)
    started: list[BenchKamailio] = []
    try:
        for kam in kams:
            kam.start()
            started.append(kam)
        before = {k.name: k.cpu_seconds() for k in started}
        run = start_sipp("register/uac.xml", f"{edge.addr}:5060", workdir=folder, name=f"sipp-{tag}", scenarios=SIPP,
                         local_ip=local_ip, transport="u1", calls=calls, timeout=seconds * 3 + 10, rate=rate,
                         call_limit=max(100, rate * 6), recv_timeout_ms=RECV_TIMEOUT_MS, stat_csv=True,
                         trace_messages=False, timeout_error=False, inf=users)
        run.wait()
        settled()
        after = {k.name: k.cpu_seconds() for k in started}
        stats = sipp_stats(run)
        ok = max(stats.successful, 1)
        return {"rate": rate, "registrations": stats.successful, "failed": stats.failed,
                "cpu_us_per_register": {k: round((after[k] - before[k]) * 1e6 / ok) for k in before}}
    finally:
        for kam in reversed(started):
            kam.stop()


def metrics_cost_phase(settings: Settings, pairs: int, rate: int = 300, seconds: float = 6.0) -> dict:
    """Issue 16: our edge + registrar with the metrics on (the default) and off
    (``-A WITH_NOMETRICS``), alternated ``pairs`` times: CPU µs per REGISTER at a
    fixed rate over UDP (the edge counts one flow token per REGISTER)."""
    folder = settings.workdir / "metrics-cost"
    folder.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    for index in range(pairs * 2):
        metrics_on = index % 2 == 0
        off = {} if metrics_on else {"WITH_NOMETRICS": ""}
        tag = f"metrics-{'on' if metrics_on else 'off'}-{index // 2}"
        reg = BenchKamailio(f"{tag}-reg", "registrar.cfg", folder, settings.addr(37), 5070, defines={
            **SUBSCRIBERS[0].defines(), "KO_PIKE_REQS": PIKE_REQS, "KO_USRLOC_DB_MODE": "0", **off},
            env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS["ours"]["registrar"])
        edge = BenchKamailio(f"{tag}-edge", "edge.cfg", folder, settings.addr(38), 5060,
                             defines={"KO_REGISTRAR": f'"{reg.uri}"', "KO_PIKE_REQS": PIKE_REQS, **off},
                             env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS["ours"]["edge"])
        got = register_cpu(folder, tag, (reg, edge), edge, settings.addr(39), rate, seconds)
        cpu = got["cpu_us_per_register"]
        runs.append({"metrics": metrics_on, "registrations": got["registrations"], "failed": got["failed"],
                     "edge_us": cpu[edge.name], "registrar_us": cpu[reg.name]})
        log(f"  metrics {'on ' if metrics_on else 'off'}: {got['registrations']} REGISTER at {rate}/s, CPU µs per "
            f"REGISTER edge {cpu[edge.name]}, registrar {cpu[reg.name]}")
    return {"rate": rate, "seconds": seconds, "runs": runs}


def durability_registrar(settings: Settings) -> Callable[..., BenchKamailio]:
    """bench/durability.py's registrars: ours, with the run's subscriber database."""
    def make(name: str, addr: str, port: int, defines: dict[str, str]) -> BenchKamailio:
        return BenchKamailio(name, "registrar.cfg", settings.workdir / "durability", addr, port,
                             defines={**SUBSCRIBERS[0].defines(), "KO_PIKE_REQS": PIKE_REQS, **defines},
                             env={"KO_FLOW_KEYS": TEST_KEY}, cfg_path=IMPLS["ours"]["registrar"],
                             pkg_mb=durability.pkg_mb(settings.durability))
    return make


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    kam = subprocess.run(["kamailio", "-v"], capture_output=True, text=True).stdout.splitlines()
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "kamailio": kam[0] if kam else "",
            "sipp": sipp[0].strip() if sipp else "", "loadavg_start": os.getloadavg()}


def main(argv: list[str]) -> int:
    settings = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    SUBSCRIBERS[:] = [Subscribers(settings.workdir)]
    MEM_MANAGER[:] = [settings.mem_manager]
    log(f"benchmark in {settings.workdir}, rounds {' '.join(settings.rounds)}, net {settings.net}.x")
    started = time.monotonic()
    results = {"command": " ".join(["bench/run.py", *argv]), "machine": machine(),
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
               "auth": {"on": True, "db": "sqlite (one file, both implementations)", "qop": "auth",
                        "challenged": "every REGISTER (401) and every call's INVITE (407)"},
               "rounds": []}
    out_path = settings.workdir / "results.json"
    if settings.soak:  # the soak alone: no rounds (report.py then updates only the soak section)
        return soak_only(settings, results, out_path, started)
    for index, impl in enumerate(settings.rounds):
        # checked before the first round of a set (ours, native[, floor]) only: sets stay whole
        per_set = len(dict.fromkeys(settings.rounds))
        if index % per_set == 0 and time.monotonic() - started > settings.time_limit:
            log(f"time limit reached: {len(results['rounds'])} rounds done")
            break
        try:
            results["rounds"].append(Round(impl, index, settings).run())
        except ProcessError as exc:
            log(f"round {index} ({impl}) failed: {exc}")
            results["rounds"].append({"impl": impl, "index": index, "error": str(exc)[:2000]})
        out_path.write_text(json.dumps(results, indent=1))
    if settings.instructions:
        try:
            results["instructions"] = instructions.measure(sys.modules[__name__], settings, list(settings.impls),
                                                           settings.instructions, settings.instructions // 2, log)
        except (ProcessError, RuntimeError, KeyError, OSError) as exc:
            log(f"instructions failed: {exc}")
            results["instructions"] = {"error": str(exc)[:2000]}
    if settings.durability:
        log(f"durability: {settings.durability} bindings")
        try:
            results["durability"] = durability.measure(settings.durability, settings.workdir / "durability",
                                                       durability_registrar(settings), settings.addr, log)
        except (ProcessError, RuntimeError) as exc:
            log(f"durability failed: {exc}")
            results["durability"] = {"bindings": settings.durability, "error": str(exc)[:2000]}
        try:
            results["replication"] = replication_phase(settings)
        except (ProcessError, RuntimeError, KeyError) as exc:
            log(f"replication failed: {exc}")
            results["replication"] = {"error": str(exc)[:2000]}
    if settings.metrics_cost:
        log(f"metrics cost: {settings.metrics_cost} on/off pairs")
        try:
            results["metrics_cost"] = metrics_cost_phase(settings, settings.metrics_cost)
        except (ProcessError, RuntimeError, KeyError) as exc:
            log(f"metrics cost failed: {exc}")
            results["metrics_cost"] = {"error": str(exc)[:2000]}
    if settings.scale_flows:
        log(f"scale edge: {', '.join(map(str, settings.scale_flows))} flows")
        results["scale_edge"] = scale_edge.measure(sys.modules[__name__], settings, list(settings.scale_flows),
                                                   list(settings.impls), log)
        out_path.write_text(json.dumps(results, indent=1))
    if settings.scale_bindings:
        results["scale_registrar"] = scale_registrar.measure(sys.modules[__name__], settings, log)
        out_path.write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=1))
    log(f"results: {out_path}")
    failed = any("error" in r for r in results["rounds"]) or any(
        "error" in results.get(part, {})
        for part in ("durability", "replication", "metrics_cost", "instructions", "scale_registrar"))
    failed = failed or any("error" in r for r in results.get("scale_edge", {}).get("impls", {}).values())
    return 1 if failed else 0


def soak_only(settings: Settings, results: dict, out_path: Path, started: float) -> int:
    """bench/run.py --soak MINUTES: results["soak"] and nothing else (bench/soak.py)."""
    try:
        results["soak"] = soak.measure(sys.modules[__name__], settings, log)
    except (ProcessError, RuntimeError, KeyError, OSError, ValueError) as exc:
        log(f"soak failed: {exc}")
        results["soak"] = {"minutes": settings.soak, "error": str(exc)[:2000]}
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=1))
    log(f"results: {out_path}")
    return 1 if "error" in results["soak"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
