"""The container topology of docker/compose.yaml, driven from the host.

Used by tests/containers and by ``./run demo --containers``. Images are built
locally (docker/build_images.py), the topology is brought up with Debian's
docker-compose under a unique project name on an *internal* network inside
198.18.0.0/15, SIPp runs inside the UA containers through ``docker exec`` and
writes its logs to a host folder mounted at /out. Everything is removed again
by its compose project label, pass or fail.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import ROOT, ProcessError, SippResult, collect
from subscribers import password_for

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
TOPOLOGY_LABEL = "org.kemi-outbound.topology"
# last octet of every service on the network (docker/compose.yaml)
HOSTS = {"reg1": 11, "reg2": 12, "ua-b": 20, "edge1": 21, "edge2": 22, "ua-a": 30, "dns": 53}
REGISTRARS = ("reg1", "reg2")
SIPP_DIR = "/usr/share/kemi-outbound/sipp"


class DockerError(RuntimeError):
    pass


def run(cmd: list[str], *, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{' '.join(cmd[:4])} took more than {timeout}s") from exc
    if check and result.returncode != 0:
        raise DockerError(f"{' '.join(cmd[:6])} exited {result.returncode}:\n{result.stdout[-2000:]}"
                          f"{result.stderr[-3000:]}")
    return result


def ensure_docker() -> None:
    """Install Docker and start dockerd when needed (tools/install-docker)."""
    run([str(ROOT / "tools" / "install-docker")], timeout=600)


def build_image() -> str:
    """The project image name; builds the base and project images when missing."""
    result = run(["/usr/bin/python3", str(ROOT / "docker" / "build_images.py")], timeout=1200)
    return result.stdout.strip().splitlines()[-1]


def remove_project(project: str) -> None:
    """Remove every container and network of one compose project (by label)."""
    ids = run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}"], check=False).stdout.split()
    if ids:
        run(["docker", "rm", "-f", "-v", *ids], check=False)
    nets = run(["docker", "network", "ls", "-q", "--filter", f"label={PROJECT_LABEL}={project}"],
               check=False).stdout.split()
    if nets:
        run(["docker", "network", "rm", *nets], check=False)


def remove_stale(subnet: str) -> None:
    """A run killed before its clean-up leaves its project behind: remove any of
    our topologies (label org.kemi-outbound.topology) that holds ``subnet``."""
    nets = run(["docker", "network", "ls", "-q", "--filter", f"label={TOPOLOGY_LABEL}"], check=False).stdout.split()
    for net_id in nets:
        info = run(["docker", "network", "inspect", net_id], check=False)
        if info.returncode != 0:
            continue
        for network in json.loads(info.stdout):
            subnets = [c.get("Subnet") for c in (network.get("IPAM", {}).get("Config") or [])]
            if subnet in subnets:
                remove_project(network.get("Labels", {}).get(PROJECT_LABEL, ""))


@dataclass
class ContainerSipp:
    """A SIPp process running inside a container (started with docker exec)."""

    topology: Topology
    service: str
    run_dir: Path
    proc: subprocess.Popen

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the SIPp inside the container: the kernel closes its TCP flow."""
        pid_file = f"/out/{self.run_dir.name}/sipp.pid"
        self.topology.exec(self.service, "sh", "-c", f'kill -9 "$(cat {pid_file})"', check=False)
        self.wait(10)

    def wait(self, timeout: float) -> SippResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pid_file = f"/out/{self.run_dir.name}/sipp.pid"
            self.topology.exec(self.service, "sh", "-c", f'kill -9 "$(cat {pid_file})"', check=False)
            self.proc.wait(timeout=10)
        return collect(self.proc.returncode, self.run_dir)


@dataclass
class Topology:
    """One running copy of docker/compose.yaml."""

    project: str
    net: str  # the /24 as three octets, e.g. "198.18.7"
    out: Path  # host folder, mounted at /out in the UA containers
    image: str
    flow_keys: str
    auth_secret: str = field(default_factory=lambda: secrets.token_hex(16))  # KO_AUTH_SECRET of reg1 and reg2
    # KO_REGISTRAR_KEYS: reg1's and reg2's Record-Route seal / temporary GRUU key
    registrar_keys: str = field(default_factory=lambda: "hex:" + secrets.token_hex(32))
    edge_registrar: str = ""
    debug: bool = False
    containers: dict[str, str] = field(default_factory=dict)
    sipps: list[ContainerSipp] = field(default_factory=list)
    subscribers: set[tuple[str, str]] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        """Host-side interface of the network (a capture point), <= 15 chars."""
        return "ko" + self.net.replace(".", "-")

    @property
    def subnet(self) -> str:
        return f"{self.net}.0/24"

    def addr(self, service: str) -> str:
        return f"{self.net}.{HOSTS[service]}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "KO_IMAGE": self.image, "KO_NET": self.net, "KO_BRIDGE": self.bridge,
               "KO_OUT": str(self.out), "KO_FLOW_KEYS": self.flow_keys, "KO_AUTH_SECRET": self.auth_secret,
               "KO_REGISTRAR_KEYS": self.registrar_keys, "KO_DEBUG": "1" if self.debug else "0"}
        if self.edge_registrar:
            env["KO_EDGE_REGISTRAR"] = self.edge_registrar
        return env

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run(["docker-compose", "--no-ansi", "-p", self.project, "-f", str(COMPOSE_FILE), *args],
                   env=self.env(), timeout=timeout)

    def up(self, timeout: float = 90) -> Topology:
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale(self.subnet)
        self.compose("up", "-d", "--no-build")
        listing = run(["docker", "ps", "-a", "--filter", f"label={PROJECT_LABEL}={self.project}",
                       "--format", f'{{{{.Label "{SERVICE_LABEL}"}}}} {{{{.Names}}}}']).stdout
        self.containers = dict(line.split() for line in listing.splitlines() if line.strip())
        missing = set(HOSTS) - set(self.containers)
        if missing:
            raise DockerError(f"compose started no container for {sorted(missing)}")
        self.wait_healthy(list(HOSTS), timeout)
        return self

    def health(self, service: str) -> str:
        result = run(["docker", "inspect", "--format", "{{.State.Status}} {{if .State.Health}}"
                      "{{.State.Health.Status}}{{end}}", self.containers[service]], check=False)
        return result.stdout.strip()

    def wait_healthy(self, services: list[str], timeout: float = 60) -> None:
        """Readiness: Docker's healthcheck (RPC core.uptime / a DNS answer)."""
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            pending = [s for s in pending if self.health(s) != "running healthy"]
            for service in pending:
                if self.health(service).startswith(("exited", "dead")):
                    raise DockerError(f"{service} died:\n{self.logs(service)[-4000:]}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise DockerError(f"not healthy after {timeout}s: {pending}\n"
                                  + "\n".join(self.logs(s)[-2000:] for s in pending))
            time.sleep(0.2)

    def down(self) -> None:
        """Keep each container's log in out/, then remove the whole project."""
        for sipp in self.sipps:
            if sipp.proc.poll() is None:
                sipp.proc.kill()
                sipp.proc.wait()
        for service in self.containers:
            try:
                (self.out / f"{service}.log").write_text(self.logs(service))
            except (OSError, DockerError):
                pass
        remove_project(self.project)

    def logs(self, service: str) -> str:
        result = run(["docker", "logs", self.containers[service]], check=False)
        return result.stdout + result.stderr

    def exec(self, service: str, *cmd: str, check: bool = True, timeout: float = 30,
             input: str | None = None) -> subprocess.CompletedProcess:
        options = ["-i"] if input is not None else []
        return run(["docker", "exec", *options, self.containers[service], *cmd], check=check, timeout=timeout,
                   input=input)

    def rpc(self, service: str, method: str, *params: object) -> object:
        args = [p if isinstance(p, str) else json.dumps(p) for p in params]
        result = self.exec(service, "ko-rpc", method, *args, check=False)
        if result.returncode != 0:
            raise ProcessError(f"rpc {method} on {service}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def subscriber(self, username: str, domain: str = "example.com") -> tuple[str, str]:
        """Make ``username@domain`` a subscriber of reg1 and reg2 (each has its own
        SQLite file) with its test password, once; (username, password) for SIPp's
        ``auth``. The password reaches ko-subscriber on stdin, never a command line."""
        password = password_for(username)
        if (username, domain) not in self.subscribers:
            for service in REGISTRARS:
                self.exec(service, "ko-subscriber", "add", f"{username}@{domain}", input=password + "\n")
            self.subscribers.add((username, domain))
        return username, password

    def bindings(self, service: str, aor: str | None = None) -> list[dict]:
        """Every contact in the location table of a registrar, flattened."""
        result = self.rpc(service, "ul.dump")
        out = []
        for domain in result.get("Domains", []) if isinstance(result, dict) else []:
            for record in domain.get("Domain", {}).get("AoRs", []) or []:
                info = record.get("Info", {})
                if aor is not None and info.get("AoR") != aor:
                    continue
                for contact in info.get("Contacts", []) or []:
                    entry = dict(contact.get("Contact", {}))
                    entry["AoR"] = info.get("AoR")
                    out.append(entry)
        return out

    def accepted_regs(self, service: str) -> int:
        """REGISTERs a registrar took itself (the registrar module's save()); a
        binding replicated from its peer over DMQ (dmq_usrloc) is not counted."""
        for line in self.rpc(service, "stats.get_statistics", "registrar:") or []:
            name, _, value = str(line).partition(" = ")
            if name.strip() == "registrar:accepted_regs":
                return int(value)
        raise ProcessError(f"{service}: no statistic registrar:accepted_regs")

    def kill(self, service: str) -> None:
        """SIGKILL a container: an edge (or registrar) dies on the spot."""
        run(["docker", "kill", self.containers[service]])

    def stop(self, service: str) -> None:
        run(["docker", "stop", "-t", "5", self.containers[service]])

    def start(self, service: str) -> None:
        run(["docker", "start", self.containers[service]])
        self.wait_healthy([service])

    def start_sipp(self, service: str, scenario: str, remote: str, *, local_port: int, transport: str = "udp",
                   keys: dict[str, str] | None = None, calls: int = 1, timeout: int = 20, oocsf: str | None = None,
                   extra: list[str] | None = None, timeout_error: bool = False, name: str | None = None,
                   auth: tuple[str, str] | None = None) -> ContainerSipp:
        """Start SIPp inside a UA container with a scenario of tests/sipp (baked into
        the image); bounded in calls and time; logs land in out/<name>/ on the host.
        ``auth`` (username, password) answers digest challenges (SIPp -au/-ap);
        ``timeout_error``: reaching -timeout is an error exit."""
        folder, _, xml = scenario.partition("/")
        tag = name or f"{service}-{folder}-{time.monotonic_ns()}"
        run_dir = self.out / tag
        run_dir.mkdir(parents=True, exist_ok=True)
        inside = f"/out/{tag}"
        cmd = ["sipp", remote, "-i", self.addr(service), "-p", str(local_port),
               "-t", {"udp": "u1", "tcp": "t1"}[transport], "-m", str(calls), "-timeout", f"{timeout}s",
               "-nostdin", "-nd", "-max_recv_loops", "1000", "-trace_msg", "-message_file", f"{inside}/messages.log",
               "-trace_logs", "-log_file", f"{inside}/log.log", "-trace_err", "-error_file", f"{inside}/errors.log"]
        if timeout_error:
            cmd.insert(cmd.index("-nostdin"), "-timeout_error")
        if auth is not None:
            cmd += ["-au", auth[0], "-ap", auth[1]]
        for key, value in (keys or {}).items():
            cmd += ["-key", key, value]
        cmd += ["-sf", f"{SIPP_DIR}/{folder}/{xml or 'uac.xml'}"]
        if oocsf:
            cmd += ["-oocsf", f"{SIPP_DIR}/{oocsf}"]
        cmd += extra or []
        script = f'cd {inside} && echo $$ > sipp.pid && exec "$@" > {inside}/stdout.log 2>&1'
        proc = subprocess.Popen(["docker", "exec", self.containers[service], "sh", "-c", script, "sh", *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        handle = ContainerSipp(self, service, run_dir, proc)
        self.sipps.append(handle)
        return handle

    def sipp(self, service: str, scenario: str, remote: str, *, timeout: int = 20, check: bool = True,
             **options: Any) -> SippResult:
        """Run SIPp in a UA container to its end (start_sipp with ``options``);
        with ``check`` a non-zero exit raises ProcessError with SIPp's logs."""
        result = self.start_sipp(service, scenario, remote, timeout=timeout, timeout_error=True,
                                 **options).wait(timeout + 15)
        if check and result.returncode != 0:
            raise ProcessError(f"sipp {scenario} in {service} exited {result.returncode}\n"
                               f"{result.stdout[-3000:]}\n{result.log[-2000:]}\n{result.messages[-5000:]}")
        return result
