"""Start real Kamailio and SIPp processes for the tests, and talk JSON-RPC to Kamailio.

The demo (tools/demo.py) and the benchmark (bench/run.py) start theirs with the
same classes: Kamailio, and start_sipp() for SIPp (a SippRun). Every process is
started by us, tracked by PID (pid file for Kamailio) and stopped by PID.
Readiness is an RPC answer, never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEMI_DIR = ROOT / "kemi"
CFG_DIR = ROOT / "cfg"
SIPP_DIR = ROOT / "tests" / "sipp"
# flow-token keys of the test edges: 32 random bytes each (made once with
# secrets.token_hex(32)); a key must look random, a pattern is refused
TEST_KEY = "hex:9f9a95f1f24968cd191273341861ce06e3446dd05ced9654970d91ea69ba7ab9"
OTHER_KEY = "hex:5c6d89262413cdbccac255dbadc4533fb3c5665ca2097d588effc6fa26b4bf4e"


class ProcessError(RuntimeError):
    pass


def stop_group(proc: subprocess.Popen | None, *, leader_only: bool = False) -> None:
    """Stop a process (group) we started: SIGTERM to the whole group (or only its
    leader), SIGKILL to the group when it has not gone after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGCONT)  # a paused (SIGSTOPped) group must see the TERM
        if leader_only:
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def kill_group(proc: subprocess.Popen | None) -> None:
    """SIGKILL to a process group we started: a hard crash, no goodbye (the
    kernel closes its TCP/TLS connections)."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def read_log(path: Path) -> str:
    """A log file's text so far ("" before the process has written one)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class GroupProcess:
    """A process group a test started (``proc``) writing to ``log_path``."""

    proc: subprocess.Popen | None
    log_path: Path

    def stop(self) -> None:
        stop_group(self.proc)

    def kill(self) -> None:
        """SIGKILL to the whole group: a hard crash, no goodbye (the kernel
        closes its TCP/TLS connections, e.g. an edge dying, a UA's flow dying)."""
        kill_group(self.proc)

    def log(self) -> str:
        return read_log(self.log_path)


ANNOUNCED_PROCESSES = re.compile(r"processes \(at least\): (\d+)")


@dataclass
class Kamailio(GroupProcess):
    """One Kamailio process group running one of our cfg files."""

    name: str
    cfg: str
    workdir: Path
    addr: str
    port: int
    defines: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    yaml_text: str | None = None
    # /etc/<name> -> content for this Kamailio alone: bind-mounted over the real
    # file in a private mount namespace (util-linux unshare; root only)
    etc_files: dict[str, str] = field(default_factory=dict)
    # a network namespace the test made (tests/netns.py): Kamailio runs inside it
    netns: str | None = None
    # Kamailio's memory manager (-x, shm and pkg): tlsf, as docs/operations.md
    # recommends (Debian's default, qm with debug bookkeeping, costs ~20 % more
    # CPU per message: docs/benchmarks.md); "" leaves Kamailio's default
    mem_manager: str = field(default_factory=lambda: os.environ.get("KO_MEM_MANAGER", "tlsf"))
    proc: subprocess.Popen | None = None
    # byte offset in the log file where this test's lines begin: set by start()
    # (the file is appended across restarts and test modules) and, for a
    # Kamailio that outlives a test, at each test's start (tests/integration/conftest.py)
    log_mark: int = 0

    def mark_log(self) -> None:
        """What is logged from now on is what new_log() returns."""
        try:
            self.log_mark = self.log_path.stat().st_size
        except OSError:
            self.log_mark = 0

    def new_log(self) -> str:
        """The log since log_mark: the current test's lines only, so an earlier
        test's line cannot satisfy an assertion about this one."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_mark)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """A clean stop: SIGTERM to Kamailio's main process alone, which stops its
        children and then writes usrloc's table (write-back). SIGTERM to the
        whole group at once races: a child gone first makes the main process
        take its "terminating due to SIGCHLD" path, write nothing and hang
        (docs/operations.md); SIGKILL to the group after 10 s."""
        stop_group(self.proc, leader_only=True)

    @property
    def rpc_socket(self) -> Path:
        return self.workdir / f"{self.name}.rpc.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def uri(self) -> str:
        return f"sip:{self.addr}:{self.port}"

    def command(self, *, check: bool = False) -> list[str]:
        yaml_path = self.workdir / f"{self.name}.yaml"
        yaml_path.write_text(self.yaml_text if self.yaml_text is not None else (CFG_DIR / "outbound.yaml").read_text())
        defines = {
            "KO_ADDR": self.addr,
            "KO_PORT": str(self.port),
            "KO_KEMI_DIR": f'"{KEMI_DIR}"',
            "KO_CONFIG": f'"{yaml_path}"',
            "KO_RPC_SOCKET": f'"{self.rpc_socket}"',
            # each Kamailio's metrics socket on its own address (port KO_METRICS_PORT, 9090)
            "KO_METRICS_ADDR": self.addr,
            **self.defines,
        }
        if os.environ.get("KO_DEBUG"):  # KO_DEBUG=1: every Kamailio of the run logs at debug level
            defines["WITH_DEBUG"] = ""
        cmd = ["kamailio", "-f", str(CFG_DIR / self.cfg), *(["-c"] if check else []), "-DD", "-E", "-m", "96",
               "-M", "16", *(["-x", self.mem_manager] if self.mem_manager else []),
               "-P", str(self.workdir / f"{self.name}.pid"), "-Y", str(self.workdir)]
        for key, value in defines.items():
            cmd += ["-A", f"{key}={value}" if value != "" else key]
        return in_netns(self.netns) + self._private_etc() + cmd

    def _private_etc(self) -> list[str]:
        """The prefix that runs Kamailio with our own copies of some /etc files;
        the PID stays Kamailio's (unshare and sh exec it)."""
        if not self.etc_files:
            return []
        folder = self.workdir / f"{self.name}.etc"
        folder.mkdir(parents=True, exist_ok=True)
        mounts = []
        for name, text in self.etc_files.items():
            (folder / name).write_text(text)
            mounts.append(f"mount --bind {shlex.quote(str(folder / name))} {shlex.quote('/etc/' + name)}")
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
                " && ".join(mounts) + ' && exec "$@"', "sh"]

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(check=True), capture_output=True,
                              text=True, env={**os.environ, **self.env}, timeout=60)

    def start(self, timeout: float = 20.0) -> Kamailio:
        """Start, and return once ready: the RPC answers and every process the
        main one announced is forked (all_forked)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.log_mark = log.tell()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.all_forked():
                    return self
            except (OSError, ProcessError):
                pass
            time.sleep(0.05)
        raise ProcessError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    def all_forked(self) -> bool:
        """True when core.psx lists as many processes as the main process
        announced at this start ("processes (at least): N", in new_log()). The
        RPC process answers before the main process has forked the ones after
        it; a child whose child_init fails later (its database just went down)
        would stop Kamailio in the middle of a test."""
        listed = len(self.rpc("core.psx", timeout=0.5))
        announced = ANNOUNCED_PROCESSES.search(self.new_log())
        return announced is None or listed >= int(announced.group(1))

    def rpc(self, method: str, *params: object, timeout: float = 5.0) -> object:
        client_path = self.workdir / f"rpc-client-{os.getpid()}-{time.monotonic_ns()}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(client_path))
            sock.settimeout(timeout)
            request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
            sock.sendto(json.dumps(request).encode(), str(self.rpc_socket))
            data, _ = sock.recvfrom(1 << 20)
        finally:
            sock.close()
            client_path.unlink(missing_ok=True)
        answer = json.loads(data.decode(errors="replace"))
        if "error" in answer:
            raise ProcessError(f"rpc {method}: {answer['error']}")
        return answer.get("result")

    def metrics_url(self, path: str = "/metrics") -> str:
        port = self.defines.get("KO_METRICS_PORT", "9090")
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{port}{path}"

    def bindings(self, aor: str | None = None) -> list[dict]:
        """Contacts in the location table (RPC ul.lookup for one AOR, ul.dump for all)."""
        if aor is not None:
            try:
                result = self.rpc("ul.lookup", "location", aor)
            except ProcessError as exc:
                if "not found" in str(exc) or "no contacts" in str(exc):
                    return []
                raise
            return [{**c.get("Contact", {}), "AoR": aor} for c in (result or {}).get("Contacts", []) or []]
        result = self.rpc("ul.dump")
        out = []
        for domain in result.get("Domains", []) if isinstance(result, dict) else []:
            for record in domain.get("Domain", {}).get("AoRs", []) or []:
                info = record.get("Info", {})
                for contact in info.get("Contacts", []) or []:
                    out.append({**contact.get("Contact", {}), "AoR": info.get("AoR")})
        return out


@dataclass
class SippResult:
    """What a SIPp run left: its exit code, its scenario's <log> lines (log.log),
    its output and errors, the messages it traced."""

    returncode: int
    log: str
    stdout: str
    messages: str

    def values(self, key: str) -> list[str]:
        prefix = key + "="
        return [line[len(prefix):].strip() for line in self.log.splitlines() if line.startswith(prefix)]

    def value(self, key: str) -> str:
        found = self.values(key)
        return found[-1] if found else ""


# SIPp -t modes for the transport names the tests use: one socket for the whole run
SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1"}


@dataclass
class SippRun:
    """One SIPp process we started in its own session (killed by PID), writing
    its logs to ``run_dir``; bounded by -m and -timeout."""

    run_dir: Path
    proc: subprocess.Popen
    timeout: float  # the default bound of wait(): SIPp's -timeout and 15 s

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """SIPp's result once it has ended; after ``timeout`` seconds (default the
        run's bound) its group gets SIGKILL first."""
        try:
            self.proc.wait(timeout=self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return collect(self.proc.returncode, self.run_dir)

    def kill(self) -> None:
        """SIGKILL to SIPp's group: its flows die with no goodbye (the kernel
        closes its TCP connections)."""
        kill_group(self.proc)


def start_sipp(scenario: str, remote: str, *, workdir: Path, name: str | None = None,
               scenarios: Path = SIPP_DIR, local_ip: str = "127.0.0.1", local_port: int = 0,
               transport: str = "udp", calls: int = 1, timeout: float = 20, keys: dict[str, str] | None = None,
               auth: tuple[str, str] | None = None, oocsf: str | None = None, inf: Path | None = None,
               rate: float | None = None, call_limit: int | None = None, recv_timeout_ms: int | None = None,
               stat_csv: bool = False, trace_messages: bool = True, timeout_error: bool = True,
               extra: list[str] | None = None, netns: str | None = None) -> SippRun:
    """Start SIPp on ``scenarios``/<folder>/<xml> (``scenario`` "folder/xml", xml
    default uac.xml), bounded in calls (-m) and time (-timeout); its logs, and the
    command line (command.txt), go to ``workdir``/``name``.

    ``transport`` "udp" or "tcp" (one socket), or any SIPp -t mode ("tn": one
    connection a call). ``auth`` (username, password) answers digest challenges
    (-au/-ap, the scenarios' [authentication]). ``oocsf`` names a scenario under
    ``scenarios`` for out-of-call messages, ``inf`` an injection file. Load:
    ``rate`` new calls per second (-r, -rp 1000), ``call_limit`` calls open at
    once (-l), ``recv_timeout_ms`` a call's wait for any message (-recv_timeout).
    ``stat_csv``: statistics every second to stat.csv (-trace_stat);
    ``trace_messages``: every message to messages.log (-trace_msg);
    ``timeout_error``: reaching -timeout is an error exit (-timeout_error).
    ``netns``: run inside that network namespace (tests/netns.py)."""
    folder, _, xml = scenario.partition("/")
    run_dir = workdir / (name or f"{folder}-{time.monotonic_ns()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["sipp", remote, "-i", local_ip, "-p", str(local_port), "-t", SIPP_TRANSPORTS.get(transport, transport),
           "-m", str(calls), "-timeout", f"{int(timeout)}s", *(["-timeout_error"] if timeout_error else []),
           "-nostdin", "-nd", "-max_recv_loops", "1000", "-trace_logs", "-log_file", str(run_dir / "log.log"),
           "-trace_err", "-error_file", str(run_dir / "errors.log")]
    if trace_messages:
        cmd += ["-trace_msg", "-message_file", str(run_dir / "messages.log")]
    if stat_csv:
        cmd += ["-trace_stat", "-stf", str(run_dir / "stat.csv"), "-fd", "1"]
    if recv_timeout_ms is not None:
        cmd += ["-recv_timeout", str(recv_timeout_ms)]
    if rate is not None:
        cmd += ["-r", f"{rate:g}", "-rp", "1000"]
    if call_limit is not None:
        cmd += ["-l", str(call_limit)]
    if auth is not None:
        cmd += ["-au", auth[0], "-ap", auth[1]]
    for key, value in (keys or {}).items():
        cmd += ["-key", key, value]
    cmd += ["-sf", str(scenarios / folder / (xml or "uac.xml"))]
    if oocsf:
        cmd += ["-oocsf", str(scenarios / oocsf)]
    if inf is not None:
        cmd += ["-inf", str(inf)]
    cmd = in_netns(netns) + cmd + (extra or [])
    (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    with open(run_dir / "stdout.log", "wb") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, cwd=run_dir, start_new_session=True)
    return SippRun(run_dir, proc, timeout + 15)


def in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs a program in ``netns`` (ip netns exec execs
    it: the PID stays the program's)."""
    return ["ip", "netns", "exec", netns] if netns else []


def sipp(scenario: str, remote: str, *, check: bool = True, **options: Any) -> SippResult:
    """Run SIPp to its end (start_sipp with ``options``) and return its result;
    with ``check`` a non-zero exit raises ProcessError with SIPp's logs."""
    result = start_sipp(scenario, remote, **options).wait()
    if check and result.returncode != 0:
        raise ProcessError(f"sipp {scenario} exited {result.returncode}\n{describe(result)}")
    return result


def collect(returncode: int, run_dir: Path) -> SippResult:
    """The result of a SIPp run that wrote its logs to ``run_dir``."""
    return SippResult(returncode, read_log(run_dir / "log.log"),
                      read_log(run_dir / "stdout.log") + read_log(run_dir / "errors.log"),
                      read_log(run_dir / "messages.log"))


def describe(result: SippResult) -> str:
    return (f"--- sipp output ---\n{result.stdout[-4000:]}\n--- sipp log ---\n{result.log[-3000:]}\n"
            f"--- sipp messages ---\n{result.messages[-6000:]}")
