"""The soak of issue 17 (``./run bench --soak MINUTES``; docs/benchmarks.md, "Soak").

Our registrar and two edges (cfg/registrar.cfg, cfg/edge.cfg, started as the
rounds of bench/run.py start them) carry, for MINUTES:

* ``groups`` groups of outbound UAs, one SIPp process each (its own source
  address and user range, ``-t tn``: one TCP connection, so one flow, per user;
  groups alternate between edge1 and edge2). Every UA registers with
  ``Expires: expires`` and refreshes every ``refresh`` seconds on the same flow
  (bench/sipp/soak-callee/register.xml), and answers calls
  (bench/sipp/callee/uas.xml);
* calls from one UDP caller through edge1 at a fixed rate, half our highest
  passing call rate over TCP in docs/benchmarks.json (or ``--soak-call-rate``),
  to every UA in turn (bench/sipp/soak-caller/uac.xml, which logs each call's
  start, callee and time, and its success); the caller is a chain of SIPp
  runs of ``CALLER_CHUNK_S`` seconds each;
* every ``kill_every`` seconds, round-robin, one group's SIPp gets SIGKILL (the
  kernel closes its TCP connections: its flows are gone) and is started again
  ``restart_delay`` seconds later (its UAs register again, new flows).

Every SIPp run is bounded by -m and -timeout and stopped by its PID.

Judged (pure functions below, tests/unit/test_bench_soak.py):

* **Failed calls**: a call with a start line and no success line. It is
  *explained* when its callee's group was killed at k and the call started in
  [k - PRE_KILL_S, r + POST_REGISTER_S], r the time that callee registered
  again after k (its restarted SIPp's log) or, when it did not, k plus the
  time allowed to register again; any other failed call is *unexplained*.
* **Memory**: core.shmmem real_used of each Kamailio and VmRSS of each of
  their processes, sampled every ``sample_every`` seconds. Flat: the mean over
  the last 10 minutes of the load within 5 % of the mean over the first 10
  (soaks shorter than 20 minutes: the first and the last third).
* **Bindings left behind** (after each kill, just before the next one; at the
  end; and after every UA is gone and the expiry has passed): see
  :func:`check_bindings`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # harness (bench/report.py imports this module too)
sys.path.append(str(ROOT / "kemi"))  # outbound.tokens.peek_flow reads the Path tokens

import analysis  # noqa: E402
from harness import ProcessError, SippRun, read_log, start_sipp  # noqa: E402

BEGIN = "<!-- bench:soak:begin -->"
END = "<!-- bench:soak:end -->"


def markers(impl: str) -> tuple[str, str]:
    """The report section of a soak of ``impl`` (``--soak-impl``): ours has the
    section above; native's or the floor's its own, so that a soak of the C
    module for comparison never replaces ours."""
    return (BEGIN, END) if impl == "ours" else (f"<!-- bench:soak-{impl}:begin -->", f"<!-- bench:soak-{impl}:end -->")


def plot_name(impl: str) -> str:
    return "soak.png" if impl == "ours" else f"soak-{impl}.png"


IMPL_NAMES = {"native": "The native C outbound module's cfgs (bench/native/)",
              "floor": "The app_python3 floor (bench/floor/)"}

CALLER_CHUNK_S = 120.0  # one caller SIPp run carries this many seconds of calls
CALLEE_RECV_TIMEOUT_MS = 10000  # a REGISTER unanswered this long fails that UA's registration
PRE_KILL_S = 4.0  # a call that started this long before its callee's kill may fail by it (3 s receive timeout + 1)
POST_REGISTER_S = 2.0  # ... and one that started this long after the callee registered again
REREGISTER_GRACE_S = 10.0  # a killed group's UA registers again within restart delay + users / rate + this
EXPIRY_SLACK_S = 5.0  # usrloc's timer (every second in the bench) removes an expired binding within this
FLAT_TOLERANCE = 0.05
FLAT_WINDOW_S = 600.0
REGISTER_RATE = 50  # new registrations per second of a (re)starting group
RPC_TIMEOUT_S = 20.0
MEASUREMENT_ERRORS = (OSError, ProcessError, KeyError, ValueError)  # an RPC unanswered under load, ...


# ---------------------------------------------------------------- pure: calls


@dataclasses.dataclass(frozen=True, slots=True)
class CallStart:
    call_id: str
    callee: str
    at: float  # epoch seconds


def parse_caller_log(text: str) -> tuple[list[CallStart], set[str]]:
    """The calls a soak caller started (``start CALL-ID CALLEE SECONDS MICROSECONDS``)
    and the Call-IDs it finished (``ok CALL-ID``), from its log.log."""
    starts: list[CallStart] = []
    oks: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "start":
            starts.append(CallStart(parts[1], parts[2], float(parts[3]) + float(parts[4]) / 1e6))
        elif len(parts) == 2 and parts[0] == "ok":
            oks.add(parts[1])
    return starts, oks


def parse_registrations(text: str) -> list[tuple[str, float]]:
    """(user, epoch) of every 200 to a REGISTER a soak callee logged
    (``registered USER SECONDS MICROSECONDS``)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "registered":
            out.append((parts[1], float(parts[2]) + float(parts[3]) / 1e6))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    """One group's SIPp killed at ``at``; when each of its users registered
    again (its next life's log); the latest time a user may take to do so."""

    group: int
    at: float
    registered_again: Mapping[str, float]
    deadline: float


def explained_by(call: CallStart, kills: Sequence[Kill], pre_s: float = PRE_KILL_S,
                 post_s: float = POST_REGISTER_S) -> Kill | None:
    """The kill of the callee's group that explains a failed call, or None:
    the call started in [kill - pre_s, the callee's next registration + post_s]
    (the registration deadline when it did not register again)."""
    for kill in kills:
        back = kill.registered_again.get(call.callee)
        until = min(back, kill.deadline) if back is not None else kill.deadline
        if kill.at - pre_s <= call.at <= until + post_s:
            return kill
    return None


def classify_failures(starts: Iterable[CallStart], oks: set[str], group_of: Mapping[str, int],
                      kills: Sequence[Kill]) -> dict:
    """Every started call without success, by whether a kill of its callee's
    group explains it (:func:`explained_by`)."""
    by_group: dict[int, list[Kill]] = {}
    for kill in kills:
        by_group.setdefault(kill.group, []).append(kill)
    started = explained = 0
    unexplained: list[CallStart] = []
    for call in starts:
        started += 1
        if call.call_id in oks:
            continue
        group = group_of.get(call.callee)
        if group is not None and explained_by(call, by_group.get(group, [])) is not None:
            explained += 1
        else:
            unexplained.append(call)
    failed = explained + len(unexplained)
    return {"started": started, "succeeded": started - failed, "failed": failed, "explained": explained,
            "unexplained": len(unexplained),
            "unexplained_calls": [dataclasses.asdict(c) for c in unexplained[:50]],
            "unexplained_at": [c.at for c in unexplained]}


# ---------------------------------------------------------------- pure: memory


def flat_windows(duration_s: float) -> tuple[float, str]:
    """The length of the first and last window, and its name: 10 minutes when
    the load lasted 20 minutes or more, else a third of it."""
    if duration_s >= 2 * FLAT_WINDOW_S:
        return FLAT_WINDOW_S, "first and last 10 minutes"
    return duration_s / 3, "first and last third (a soak shorter than 20 minutes)"


def flatness(samples: Sequence[tuple[float, float]], duration_s: float, tolerance: float = FLAT_TOLERANCE) -> dict:
    """``samples`` (seconds since the load began, value): the mean over the
    first window and over the last (:func:`flat_windows`), their ratio, and flat
    when the last mean is within ``tolerance`` of the first."""
    window, _ = flat_windows(duration_s)
    first = [v for t, v in samples if 0 <= t < window]
    last = [v for t, v in samples if duration_s - window <= t <= duration_s]
    if not first or not last:
        return {"first": None, "last": None, "ratio": None, "flat": None}
    mean_first, mean_last = statistics.fmean(first), statistics.fmean(last)
    ratio = mean_last / mean_first if mean_first else None
    return {"first": round(mean_first), "last": round(mean_last),
            "ratio": None if ratio is None else round(ratio, 4),
            "flat": None if ratio is None else abs(ratio - 1) <= tolerance}


# ---------------------------------------------------------------- pure: bindings


def path_flow(path: str) -> Any:
    """The flow (kemi outbound.tokens.Flow) that a binding's Path names: the
    user part of its first entry, read as our flow token (without its MAC:
    the bench has no business with the key); None when it names none."""
    from outbound.tokens import peek_flow  # kemi/ is on sys.path (above)

    user = first_path_user(path)
    return peek_flow(user) if user else None


def first_path_user(path: str) -> str | None:
    """The user part of a Path's first entry (where an edge puts its flow token)."""
    match = re.match(r"\s*<?sips?:([^@;>]+)@", path or "")
    return match.group(1) if match else None


@dataclasses.dataclass(frozen=True, slots=True)
class AddressFlow:
    """A flow named by addresses alone (the C outbound module's token carries
    no connection id): ``conn_id`` None, matched on the edge, peer and port."""

    local_ip: str
    remote_ip: str
    remote_port: int
    conn_id: None = None


def native_path_flow(path: str) -> AddressFlow | None:
    """The flow a binding's Path names when the C outbound module made its
    token (native's and the floor's edges): the user part of the first entry,
    base64 of a 10-byte MAC, a byte of protocol (bit 7: IPv6), the edge's
    address and port, the device's address and port (ob_mod.c's layout; its
    MAC is not checked here). None when it names none."""
    text = first_path_user(path)
    if not text:
        return None
    try:  # Kamailio's base64: the standard alphabet; padding added in case it was left out
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    size = 16 if len(raw) == 47 else 4 if len(raw) == 23 else 0
    if not size or bool(raw[10] & 0x80) != (size == 16):
        return None
    local, remote = raw[11:11 + size], raw[13 + size:13 + 2 * size]
    return AddressFlow(local_ip=str(ipaddress.ip_address(local)), remote_ip=str(ipaddress.ip_address(remote)),
                       remote_port=int.from_bytes(raw[13 + 2 * size:15 + 2 * size], "big"))


def live_connections(tcp_lists: Mapping[str, Sequence[Mapping]]) -> set[tuple[str, int, str, int]]:
    """(edge address, connection id, peer address, peer port) of every TCP
    connection each edge lists (RPC core.tcp_list), by edge address."""
    return {(edge, int(c["id"]), str(c["src_ip"]), int(c["src_port"]))
            for edge, conns in tcp_lists.items() for c in conns}


def check_bindings(bindings: Sequence[Mapping], live: set[tuple[str, int, str, int]],
                   reregistered: set[str], flow_of: Callable[[str], Any] = path_flow,
                   slack_s: float = EXPIRY_SLACK_S) -> dict:
    """Compare the registrar's bindings (RPC ul.dump) with the live flows.

    A binding's flow is *live* when the edge its Path token names (the token's
    local address) lists an open TCP connection with the token's connection id
    from the token's peer address and port. A binding whose flow is not live
    is *left behind* when

    * its UA has registered again over a new flow since its flow died (its AOR
      is in ``reregistered``: the UAs whose SIPp has logged a 200 in its
      current life): that REGISTER, same instance and reg-id, must have
      replaced it (usrloc matches by instance and reg-id), or
    * its expiry has passed by more than ``slack_s`` (usrloc's timer removes
      expired bindings every second here).

    Any other binding of a dead flow is *pending*: it is allowed, the design
    removes it at the next call to it (the edge answers 430, the home proxy
    unregisters it), at the UA's next registration or at its expiry. Also
    counted: AORs of ``reregistered`` without a binding on a live flow
    (``missing``), and AORs with more than one binding (``duplicates``)."""
    ids_at: dict[tuple[str, str, int], set[int]] = {}  # (edge, peer, port) -> the ids of its live connections
    for edge, conn_id, ip, port in live:
        ids_at.setdefault((edge, ip, port), set()).add(conn_id)
    live_n = pending = 0
    left: list[dict] = []
    per_aor: dict[str, int] = {}
    live_aors: set[str] = set()
    for b in bindings:
        aor = str(b.get("AoR"))
        per_aor[aor] = per_aor.get(aor, 0) + 1
        flow = flow_of(str(b.get("Path", "")))
        ids = ids_at.get((flow.local_ip, flow.remote_ip, flow.remote_port), set()) if flow is not None else set()
        # a token with a connection id names that connection; one without (the C module's), any from its address
        alive = bool(ids) and (flow.conn_id is None or flow.conn_id in ids)
        expires = b.get("Expires")
        overdue = isinstance(expires, int | float) and expires < -slack_s
        if alive and not overdue:
            live_n += 1
            live_aors.add(aor)
        elif aor in reregistered or overdue:
            left.append({"aor": aor, "expires": expires, "path": b.get("Path"),
                         "why": "expired" if overdue else "registered again"})
        else:
            pending += 1
    return {"bindings": len(bindings), "live": live_n, "pending": pending, "left_behind": len(left),
            "left_behind_bindings": left[:20], "missing": len(reregistered - live_aors),
            "duplicates": sum(1 for n in per_aor.values() if n > 1)}


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class Plan:
    """What the soak does (bench/run.py --soak ...)."""

    minutes: float
    call_rate: int
    call_rate_from: str
    groups: int = 4
    users: int = 100  # per group
    expires: int = 60
    refresh_s: float = 30.0  # below the edge's idle lifetime, Flow-Timer 25 + grace 20
    kill_every_s: float = 45.0
    restart_delay_s: float = 3.0
    sample_every_s: float = 10.0

    @property
    def seconds(self) -> float:
        return self.minutes * 60


def default_call_rate(path: Path) -> tuple[int, str]:
    """Half the median highest passing rate of calls to TCP outbound UAs of our
    rounds in a bench results file (docs/benchmarks.json), and where from."""
    results = json.loads(path.read_text())
    best = analysis.median(r.get("calls_tcp", {}).get("max_rate") for r in results.get("rounds", [])
                           if r.get("impl") == "ours" and "error" not in r)
    if not best:
        raise ValueError(f"{path}: no passing call rate of ours over TCP")
    return max(1, int(best // 2)), (f"half of {best:g} calls/s, the median highest passing rate of calls to TCP "
                                    f"outbound UAs of our rounds in {path.relative_to(ROOT)} "
                                    f"(`{results.get('command', '')}`)")


class Group:
    """One group of callees: its users, source address, edge, and its SIPp lives."""

    def __init__(self, index: int, users: list[str], inf: Path, addr: str, edge: Any) -> None:
        self.index = index
        self.users = users
        self.inf = inf
        self.addr = addr
        self.edge = edge
        self.lives: list[SippRun] = []
        self.started_at: list[float] = []
        self.down_since: float | None = None

    @property
    def current(self) -> SippRun | None:
        return self.lives[-1] if self.lives and self.down_since is None else None

    def registrations(self, life: int) -> list[tuple[str, float]]:
        return parse_registrations(read_log(self.lives[life].run_dir / "log.log"))

    def registered_now(self) -> set[str]:
        """The AORs this group's running SIPp has registered (a 200) so far."""
        return {u for u, _ in self.registrations(len(self.lives) - 1)} if self.current is not None else set()


class Soak:
    """The soak on a fresh registrar + edge1 + edge2 (bench/run.py's Round topology)."""

    def __init__(self, bench: ModuleType, settings: Any, plan: Plan, log: Callable[[str], None]) -> None:
        self.b = bench
        self.s = settings
        self.plan = plan
        self.log = log
        self.impl = settings.soak_impl
        self.round = bench.Round(self.impl, 0, settings)
        self.round.dir = settings.workdir / ("soak" if self.impl == "ours" else f"soak-{self.impl}")
        self.flow_of = path_flow if self.impl == "ours" else native_path_flow
        self.dir = self.round.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.samples: list[dict] = []
        self.kills: list[dict] = []
        self.checks: list[dict] = []
        self.callers: list[SippRun] = []
        self.groups: list[Group] = []
        self.t0 = 0.0
        self.samples_file = self.dir / "samples.jsonl"
        self.callee_inf = self.dir / "callees.csv"
        self.missed: list[dict] = []
        self.process_names: dict[str, str] = {}  # "edge1:PID" -> core.psx's description of that process

    # -- processes

    def start_group(self, group: Group, bound_s: float) -> None:
        life = len(group.lives)
        run = start_sipp("soak-callee/register.xml", f"{group.edge.addr}:{group.edge.port}", workdir=self.dir,
                         name=f"callees-{group.index}-{life:03d}", scenarios=self.b.SIPP, local_ip=group.addr,
                         transport="tn", calls=len(group.users), timeout=bound_s, rate=REGISTER_RATE,
                         inf=group.inf, keys={"expires": str(self.plan.expires), "who": f"g{group.index}"},
                         oocsf="callee/uas.xml", recv_timeout_ms=CALLEE_RECV_TIMEOUT_MS, stat_csv=True,
                         trace_messages=False, timeout_error=False,
                         extra=["-d", str(int(self.plan.refresh_s * 1000)),
                                "-max_socket", str(len(group.users) + 100)])
        self.round.sipps.append(run)
        group.lives.append(run)
        group.started_at.append(time.time())
        group.down_since = None

    def start_caller(self, index: int, seconds: float) -> None:
        rate = self.plan.call_rate
        calls = max(1, int(rate * seconds))
        run = start_sipp("soak-caller/uac.xml", f"{self.round.edge1.addr}:{self.round.edge1.port}",
                         workdir=self.dir, name=f"caller-{index:03d}", scenarios=self.b.SIPP,
                         local_ip=self.s.addr(30 + index % 2), transport="u1", calls=calls,
                         timeout=seconds + 60, rate=rate, call_limit=max(100, rate * 6),
                         auth=(self.b.CALLER, self.b.password_for(self.b.CALLER)),
                         recv_timeout_ms=self.b.RECV_TIMEOUT_MS, stat_csv=True, trace_messages=False,
                         timeout_error=False, inf=self.callee_inf)
        self.round.sipps.append(run)
        self.callers.append(run)

    def wait_registered(self, group: Group, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = len(group.registered_now())
            if got >= len(group.users) or group.current is None or not group.current.alive:
                return got
            time.sleep(0.2)
        return len(group.registered_now())

    # -- measurements

    def kamailios(self) -> list[Any]:
        return [self.round.registrar, self.round.edge1, self.round.edge2]

    def try_measure(self, what: str, measure: Callable[[], Any]) -> Any:
        """``measure()``, or None when Kamailio did not answer (a loaded machine):
        the miss is counted and logged, the soak goes on."""
        try:
            return measure()
        except MEASUREMENT_ERRORS as exc:
            self.missed.append({"what": what, "t": round(time.time() - self.t0, 1), "error": str(exc)[:200]})
            self.log(f"  soak: {what} missed: {exc}")
            return None

    def name_processes(self) -> None:
        """What each Kamailio process is (core.psx: "udp receiver child=0 ...",
        "slow timer", "tcp main process"), so that the report can say which
        process's memory moved."""
        for kam in self.kamailios():
            for proc in kam.rpc("core.psx", timeout=RPC_TIMEOUT_S) or []:
                self.process_names[f"{kam.name}:{proc['PID']}"] = str(proc.get("DSC", ""))

    def sample(self) -> None:
        """One sample: shared memory of each Kamailio, VmRSS (and RssAnon) of
        each of their processes, and context (bindings, connections,
        transactions)."""
        row: dict[str, Any] = {"t": round(time.time() - self.t0, 1), "shm": {}, "rss_kib": {}, "anon_kib": {},
                               "shmem_kib": {}, "pids": {}}
        for kam in self.kamailios():
            row["shm"][kam.name] = int(kam.rpc("core.shmmem", timeout=RPC_TIMEOUT_S)["real_used"])
            row["pids"][kam.name] = len(kam.pids())
            for pid in kam.pids():
                status = read_status(pid)
                if status:
                    row["rss_kib"][f"{kam.name}:{pid}"] = status.get("VmRSS", 0)
                    row["anon_kib"][f"{kam.name}:{pid}"] = status.get("RssAnon", 0)
                    row["shmem_kib"][f"{kam.name}:{pid}"] = status.get("RssShmem", 0)
        row["contacts"] = self.round.registrar.stat("usrloc:location_contacts")
        row["tcp"] = {e.name: e.stat("tcp:current_opened_connections") for e in (self.round.edge1, self.round.edge2)}
        row["transactions"] = {k.name: k.stat("tmx:inuse_transactions") for k in self.kamailios()}
        self.samples.append(row)
        with open(self.samples_file, "a") as out:
            out.write(json.dumps(row) + "\n")

    def bindings_check(self, when: str) -> dict:
        """:func:`check_bindings` now: the UAs registered in their group's current
        life first, then the edges' connections, then the registrar's bindings
        (in that order, so that a flow made between two reads is never taken
        for one left behind)."""
        reregistered: set[str] = set()
        for group in self.groups:
            reregistered |= group.registered_now()
        tcp = {e.addr: e.rpc("core.tcp_list", timeout=RPC_TIMEOUT_S) or []
               for e in (self.round.edge1, self.round.edge2)}
        # one ul.lookup per AOR: ul.dump of a few hundred bindings is more than jsonrpcs'
        # datagram answer can carry (128 kB); the count of all bindings shows any other AOR
        registrar = self.round.registrar
        bindings = [b for group in self.groups for user in group.users for b in registrar.bindings(user)]
        total = registrar.stat("usrloc:location_contacts")
        out = {"when": when, "t": round(time.time() - self.t0, 1),
               **check_bindings(bindings, live_connections(tcp), reregistered, flow_of=self.flow_of),
               "connections": sum(len(v) for v in tcp.values()), "registrar_contacts": total}
        self.checks.append(out)
        if out["left_behind"] or out["missing"] or out["duplicates"]:
            brief = {k: v for k, v in out.items() if k != "left_behind_bindings"}
            self.log(f"  soak bindings {when}: {json.dumps(brief)}")
        return out

    # -- the loop

    def run(self) -> dict:
        plan = self.plan
        started = time.monotonic()
        bound = plan.seconds + 300  # every callee SIPp's -timeout: the loop kills them before
        with self.round.topology():
            r = self.round
            edges = [r.edge1, r.edge2]
            all_users: list[str] = []
            for g in range(plan.groups):
                inf = self.b.write_users(self.dir / f"group-{g}.csv", f"soak{g}x", plan.users, 70 + g)
                users = [f"soak{g}x{i}" for i in range(plan.users)]
                all_users += users
                self.groups.append(Group(g, users, inf, self.s.addr(20 + g), edges[g % 2]))
            # the caller calls every UA in turn, the groups interleaved
            order = [u for i in range(plan.users) for u in (grp.users[i] for grp in self.groups)]
            self.callee_inf.write_text("SEQUENTIAL\n" + "\n".join(order) + "\n")
            group_of = {u: grp.index for grp in self.groups for u in grp.users}
            for group in self.groups:
                self.start_group(group, bound)
            for group in self.groups:
                got = self.wait_registered(group, 30 + plan.users / REGISTER_RATE)
                if got < plan.users:
                    raise ProcessError(f"soak group {group.index}: {got} of {plan.users} registered")
            self.log(f"soak: {plan.groups} x {plan.users} UAs registered; calls at {plan.call_rate}/s for "
                     f"{plan.minutes:g} min, a group killed every {plan.kill_every_s:g} s")
            self.try_measure("process names", self.name_processes)
            self.t0 = time.time()
            end = self.t0 + plan.seconds
            next_caller, caller_index = self.t0, 0
            next_kill, kill_index = self.t0 + plan.kill_every_s, 0
            next_sample = self.t0 + plan.sample_every_s  # the first sample once the calls have begun
            restarts: list[tuple[float, Group]] = []
            while True:
                now = time.time()
                if now >= end:
                    break
                if now >= next_caller:
                    seconds = min(CALLER_CHUNK_S, end - next_caller)
                    if seconds >= 1:
                        self.start_caller(caller_index, seconds)
                        caller_index += 1
                    next_caller += CALLER_CHUNK_S
                if now >= next_sample:
                    self.try_measure("sample", self.sample)
                    next_sample += plan.sample_every_s
                for when, group in list(restarts):
                    if now >= when:
                        restarts.remove((when, group))
                        self.start_group(group, bound)
                # a kill needs the time to restart and register before the load ends
                if now >= next_kill and end - now > plan.restart_delay_s + plan.users / REGISTER_RATE + 10:
                    if self.kills:  # the previous kill has had its time: compare bindings and flows
                        self.try_measure("bindings check", lambda i=kill_index: self.bindings_check(f"before kill {i}"))
                    group = self.groups[kill_index % plan.groups]
                    if group.current is not None:
                        group.current.kill()
                        group.down_since = time.time()
                        self.kills.append({"group": group.index, "at": group.down_since,
                                           "life": len(group.lives) - 1})
                        restarts.append((group.down_since + plan.restart_delay_s, group))
                    kill_index += 1
                    next_kill += plan.kill_every_s
                for group in self.groups:
                    if group.current is not None and not group.current.alive:
                        self.log(f"  soak group {group.index}: SIPp ended by itself (see {group.current.run_dir})")
                        group.down_since = time.time()
                        restarts.append((time.time() + plan.restart_delay_s, group))
                wake = min([next_caller, next_sample, next_kill, end, *(w for w, _ in restarts)])
                time.sleep(max(0.05, min(1.0, wake - time.time())))
            for _, group in restarts:  # a restart still due: the group registers before the end check
                self.start_group(group, bound)
            load_end = time.time()
            for caller in self.callers:
                caller.wait()
            self.try_measure("sample", self.sample)
            for group in self.groups:
                self.wait_registered(group, 10 + plan.users / REGISTER_RATE)
            end_check = self.try_measure("bindings check", lambda: self.bindings_check("end, every group running"))
            for group in self.groups:  # every UA gone: its bindings must expire
                if group.current is not None:
                    group.current.kill()
                    group.down_since = time.time()
            gone = time.time()
            time.sleep(plan.expires + EXPIRY_SLACK_S + 2)
            drain = self.try_measure("bindings check", lambda: self.bindings_check(
                f"{plan.expires + EXPIRY_SLACK_S + 2:g} s after every UA was killed"))
            drained_s = round(time.time() - gone, 1)
        calls = self.calls_result(group_of)
        memory = self.memory_result(load_end - self.t0)
        out = {
            "impl": self.impl, "minutes": plan.minutes, "plan": dataclasses.asdict(plan),
            "load_seconds": round(load_end - self.t0, 1),
            "seconds": round(time.monotonic() - started, 1), "edges": 2, "users": len(all_users),
            "kills": len(self.kills), "calls": calls, "memory": memory,
            "bindings": {"checks": self.checks, "left_behind": sum(c["left_behind"] for c in self.checks),
                         "missing": sum(c["missing"] for c in self.checks),
                         "duplicates": sum(c["duplicates"] for c in self.checks),
                         "end": end_check, "drain": drain, "drain_seconds": drained_s},
            "callee_registrations_failed": self.callee_failures(),
            "kill_times": [round(k["at"] - self.t0, 1) for k in self.kills],
            "missed_measurements": self.missed,
            "samples": self.samples,
        }
        out["verdict"] = verdict(out)
        return out

    def kills_with_reregistration(self) -> list[Kill]:
        """Each kill with, per user of the group, the first 200 its next life logged."""
        out = []
        deadline = self.plan.restart_delay_s + self.plan.users / REGISTER_RATE + REREGISTER_GRACE_S
        for kill in self.kills:
            group = self.groups[kill["group"]]
            first: dict[str, float] = {}
            if kill["life"] + 1 < len(group.lives):
                for user, at in group.registrations(kill["life"] + 1):
                    first.setdefault(user, at)
            out.append(Kill(kill["group"], kill["at"], first, kill["at"] + deadline))
        return out

    def calls_result(self, group_of: Mapping[str, int]) -> dict:
        starts: list[CallStart] = []
        oks: set[str] = set()
        sipp_ok = sipp_failed = 0
        for caller in self.callers:
            got, done = parse_caller_log(read_log(caller.run_dir / "log.log"))
            starts += got
            oks |= done
            try:
                stats = self.b.sipp_stats(caller)
                sipp_ok, sipp_failed = sipp_ok + stats.successful, sipp_failed + stats.failed
            except ProcessError:
                pass
        out = classify_failures(starts, oks, group_of, self.kills_with_reregistration())
        out.update({"rate": self.plan.call_rate, "rate_from": self.plan.call_rate_from,
                    "sipp_successful": sipp_ok, "sipp_failed": sipp_failed, "caller_runs": len(self.callers)})
        for call in out["unexplained_calls"]:
            call["t"] = round(call.pop("at") - self.t0, 3)
        out["unexplained_per_10s"] = per_10s([at - self.t0 for at in out.pop("unexplained_at")])
        return out

    def memory_result(self, duration: float) -> dict:
        _, window = flat_windows(duration)
        shm = {name: flatness([(s["t"], s["shm"][name]) for s in self.samples if name in s["shm"]], duration)
               for name in (k.name for k in self.kamailios())}
        procs = sorted({p for s in self.samples for p in s["rss_kib"]})
        rss = {p: flatness([(s["t"], s["rss_kib"][p]) for s in self.samples if p in s["rss_kib"]], duration)
               for p in procs}
        anon = {p: flatness([(s["t"], s["anon_kib"][p]) for s in self.samples if p in s["anon_kib"]], duration)
                for p in procs}
        shared = {p: flatness([(s["t"], s["shmem_kib"][p]) for s in self.samples if p in s["shmem_kib"]], duration)
                  for p in procs}
        return {"window": window, "tolerance": FLAT_TOLERANCE, "shm": shm, "rss": rss, "rss_anon": anon,
                "rss_shmem": shared, "names": {p: self.process_names.get(p, "") for p in procs},
                "processes": len(procs), "pids_changed": len({json.dumps(s["pids"]) for s in self.samples}) > 1}

    def callee_failures(self) -> int:
        failed = 0
        for group in self.groups:
            for life in group.lives:
                try:
                    failed += self.b.sipp_stats(life).failed
                except ProcessError:
                    continue  # a life killed before its first statistics line
        return failed


def per_10s(times: Iterable[float]) -> dict[str, int]:
    """How many of ``times`` (seconds) fall in each 10 s bucket, named by its start."""
    out: dict[str, int] = {}
    for at in sorted(times):
        key = str(int(at // 10 * 10))
        out[key] = out.get(key, 0) + 1
    return out


def read_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, RssAnon, RssShmem, ...)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[key] = int(value.split()[0])
    return out


def verdict(soak: Mapping) -> dict:
    """The issue's three judgements from a soak's figures."""
    memory = soak["memory"]
    flats = [f["flat"] for f in (*memory["shm"].values(), *memory["rss"].values())]
    private = [f["flat"] for f in memory.get("rss_anon", {}).values()]
    return {"no_unexplained_failures": soak["calls"]["unexplained"] == 0,
            "memory_flat": bool(flats) and all(f is True for f in flats),
            "no_binding_left_behind": soak["bindings"]["left_behind"] == 0,
            # not one of the three: the private part of RSS alone (RssAnon: pkg memory, Python's heap)
            "private_memory_flat": bool(private) and all(f is True for f in private)}


def measure(bench: ModuleType, settings: Any, log: Callable[[str], None]) -> dict:
    """bench/run.py --soak: the soak, its figures for results["soak"]."""
    if settings.soak_call_rate:
        rate, source = settings.soak_call_rate, "--soak-call-rate"
    else:
        rate, source = default_call_rate(ROOT / "docs" / "benchmarks.json")
    plan = Plan(minutes=settings.soak, call_rate=rate, call_rate_from=source)
    log(f"soak: {plan.minutes:g} min at {rate} calls/s ({source})")
    return Soak(bench, settings, plan, log).run()


# ---------------------------------------------------------------- the report


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def _kib_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1024:.1f}"


def _yes(flag: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[flag]


def render(soak: Mapping, command: str = "", short: bool = False) -> str:
    """The soak section of docs/benchmarks.md (between the markers of its
    implementation: :func:`markers`)."""
    impl = soak.get("impl", "ours")
    begin, end = markers(impl)
    if "error" in soak:
        return f"{begin}\n\nSoak: failed: `{str(soak['error'])[:500]}`\n\n{end}"
    plan, calls, memory, bind = soak["plan"], soak["calls"], soak["memory"], soak["bindings"]
    v = soak["verdict"]
    drain = bind.get("drain") or {}
    label = (f"**A short validation run ({soak['minutes']:g} minutes), not the issue's 30-minute figure.** "
             if short or soak["minutes"] < 30 else "")
    who = "" if impl == "ours" else f"**{IMPL_NAMES.get(impl, impl)}** (for comparison with ours, above). "
    lines = [begin, "", f"{label}{who}From `{command}`: {soak['load_seconds']:g} s of load, "
             f"{soak['seconds']:g} s in all; "
             f"{plan['groups']} groups x {plan['users']} outbound UAs over TCP ({soak['users']} flows, groups "
             f"alternating between edge1 and edge2), Expires {plan['expires']} s refreshed every "
             f"{plan['refresh_s']:g} s; calls at **{calls['rate']} calls/s** ({calls['rate_from']}); a group's SIPp "
             f"killed every {plan['kill_every_s']:g} s and started again {plan['restart_delay_s']:g} s later "
             f"({soak['kills']} kills).", "",
             "| judgement | result |", "| --- | --- |",
             f"| calls started / succeeded / failed | {calls['started']} / {calls['succeeded']} / {calls['failed']} "
             f"(SIPp's counters: {calls['sipp_successful']} / {calls['sipp_failed']} failed) |",
             f"| failed calls to a just-killed flow (explained) | {calls['explained']} |",
             f"| failed calls unexplained | {calls['unexplained']} ({_yes(v['no_unexplained_failures'])} for 0) |",
             f"| callee registrations failed (refreshes included) | {soak['callee_registrations_failed']} |",
             f"| memory flat ({memory['window']}, within {memory['tolerance']:.0%}): shared memory and every "
             f"process's VmRSS | {_yes(v['memory_flat'])} |",
             f"| the same for the private part of each process's RSS alone (RssAnon) | "
             f"{_yes(v.get('private_memory_flat'))} |",
             f"| bindings left behind (all checks) | {bind['left_behind']} ({_yes(v['no_binding_left_behind'])} "
             f"for 0); missing {bind['missing']}, duplicated AORs {bind['duplicates']} |",
             f"| after every UA was killed: bindings left ({bind['drain_seconds']:g} s later) | "
             f"{drain.get('bindings', 'n/a')}, left behind {drain.get('left_behind', 'n/a')} |",
             f"| measurements missed (an RPC unanswered) | {len(soak.get('missed_measurements', []))} |", "",
             "Shared memory (core.shmmem real_used, MiB), mean of the first and the last window:", "",
             "| Kamailio | first | last | last / first | flat |", "| --- | ---: | ---: | ---: | --- |"]
    for name, f in memory["shm"].items():
        lines.append(f"| {name} | {_mib(f['first'])} | {_mib(f['last'])} | {f['ratio']} | {_yes(f['flat'])} |")
    names, shared = memory.get("names", {}), memory.get("rss_shmem", {})
    lines += ["", f"RSS of each Kamailio process (VmRSS, MiB; {memory['processes']} processes), mean of the first and "
              "the last window, with its two parts beside it: RssAnon (the process's private memory) and RssShmem "
              "(the pages of Kamailio's shared memory segment this process has touched so far; a page once "
              "touched stays counted, so it grows until the process has touched every page the allocator has "
              "handed out, whether or not shared memory in use grows):", "",
              "| process | what | RSS first | RSS last | last / first | flat | RssAnon first | RssAnon last "
              "| last / first | RssShmem first | RssShmem last |",
              "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for proc, f in memory["rss"].items():
        a, sh = memory["rss_anon"].get(proc, {}), shared.get(proc, {})
        lines.append(f"| {proc} | {names.get(proc) or 'n/a'} | {_kib_mib(f['first'])} | {_kib_mib(f['last'])} "
                     f"| {f['ratio']} | {_yes(f['flat'])} | {_kib_mib(a.get('first'))} | {_kib_mib(a.get('last'))} "
                     f"| {a.get('ratio')} | {_kib_mib(sh.get('first'))} | {_kib_mib(sh.get('last'))} |")
    lines += ["", "Bindings against flows (each check; `pending`: a dead flow's binding not yet due for removal):", "",
              "| check | at s | bindings | live | pending | left behind | missing | duplicated | edge connections |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in bind["checks"]:
        lines.append(f"| {c['when']} | {c['t']:g} | {c['bindings']} | {c['live']} | {c['pending']} | "
                     f"{c['left_behind']} | {c['missing']} | {c['duplicates']} | {c['connections']} |")
    buckets = calls.get("unexplained_per_10s") or {}
    if buckets:
        lines += ["", "Unexplained failed calls per 10 s of load (bucket start in s: count): "
                  + ", ".join(f"{k}: {n}" for k, n in buckets.items())]
    if calls["unexplained_calls"]:
        lines += ["", "The first 50 unexplained failed calls (callee at seconds since the load began): "
                  + ", ".join(f"{c['callee']} at {c['t']:g}" for c in calls["unexplained_calls"])]
    lines += ["", f"![shared memory and RSS over the soak]({plot_name(impl)})", "", end]
    return "\n".join(lines)


def plot(soak: Mapping, path: Path) -> None:
    """docs/soak.png: shared memory of each Kamailio and the RSS of all its
    processes over the soak, the kills marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak.get("samples") or []
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    names = list(samples[0]["shm"]) if samples else []
    for name in names:
        xs = [s["t"] / 60 for s in samples if name in s["shm"]]
        top.plot(xs, [s["shm"][name] / 2**20 for s in samples if name in s["shm"]], label=name)
        rss = [sum(v for k, v in s["rss_kib"].items() if k.startswith(name + ":")) / 1024 for s in samples]
        anon = [sum(v for k, v in s["anon_kib"].items() if k.startswith(name + ":")) / 1024 for s in samples]
        line, = bottom.plot([s["t"] / 60 for s in samples], rss, label=f"{name} RSS")
        bottom.plot([s["t"] / 60 for s in samples], anon, ":", color=line.get_color(), label=f"{name} RssAnon")
    for ax in (top, bottom):
        for at in soak.get("kill_times", []):
            ax.axvline(at / 60, color="grey", alpha=0.15, linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    top.set_ylabel("shared memory in use, MiB")
    bottom.set_ylabel("all processes, MiB")
    bottom.set_xlabel("minutes since the load began (grey: a group of UAs killed)")
    rate = soak.get("calls", {}).get("rate", "?")
    fig.suptitle(f"Soak of {soak.get('impl', 'ours')}: {soak.get('minutes', 0):g} min at {rate} calls/s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
