"""A real DNS server for the tests: Debian's nsd serving tests/dns/ko.test.zone.

Started on a test-network address and an unprivileged port, tracked by its
Popen object, stopped by PID. Readiness is an answered SOA query, never a
sleep; a reload (SIGHUP, nsd re-reads zone files whose mtime changed) is
complete when the server answers with the new serial.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from harness import ROOT, ProcessError, read_log, stop_group

ZONE_TEMPLATE = ROOT / "tests" / "dns" / "ko.test.zone"
ZONE = "ko.test"
# a zone nsd is told to serve but has no file for: it answers SERVFAIL there
BROKEN_ZONE = "broken.test"
# placeholders with a value unless a test gives another
DEFAULT_VALUES = {"EDGE_P1_OFF": ""}


@dataclass
class Nsd:
    workdir: Path
    addr: str
    port: int
    values: dict[str, str] = field(default_factory=dict)  # @NAME@ -> text in the zone file
    serial: int = 1
    proc: subprocess.Popen | None = None

    @property
    def zone_path(self) -> Path:
        return self.workdir / f"{ZONE}.zone"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nsd.log"

    def write_zone(self) -> None:
        text = ZONE_TEMPLATE.read_text()
        for name, value in {**DEFAULT_VALUES, **self.values}.items():
            text = text.replace(f"@{name}@", value)
        if "@" in re.sub(r"^\s*@\s", "", re.sub(r";.*", "", text), flags=re.M):
            raise ProcessError(f"unfilled placeholder in {ZONE_TEMPLATE}")
        text = re.sub(r"hostmaster\.ko\.test\. \d+ ", f"hostmaster.ko.test. {self.serial} ", text)
        self.zone_path.write_text(text)
        # nsd reloads a zone whose file's mtime changed: make sure it does
        stamp = time.time() + self.serial
        os.utime(self.zone_path, (stamp, stamp))

    def write_config(self) -> Path:
        conf = self.workdir / "nsd.conf"
        conf.write_text(f"""server:
  ip-address: {self.addr}@{self.port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{self.workdir}"
  database: ""
  zonelistfile: "{self.workdir}/zone.list"
  xfrdfile: "{self.workdir}/xfrd.state"
  xfrdir: "{self.workdir}"
  pidfile: "{self.workdir}/nsd.pid"
  logfile: "{self.log_path}"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: {ZONE}
  zonefile: {self.zone_path.name}
zone:
  name: {BROKEN_ZONE}
  zonefile: missing-on-purpose.zone
""")
        return conf

    def start(self, timeout: float = 15.0) -> Nsd:
        binary = shutil.which("nsd") or "/usr/sbin/nsd"
        if not os.path.exists(binary):
            raise ProcessError("nsd is not installed: run tools/install-deps")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_zone()
        conf = self.write_config()
        check = subprocess.run(["nsd-checkconf", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ProcessError(f"nsd-checkconf: {check.stdout}{check.stderr}")
        out = open(self.workdir / "nsd.stdout", "ab")
        self.proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.wait_serial(self.serial, timeout)
        return self

    def soa_serial(self, timeout: float = 0.5) -> int | None:
        query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
        response = dns.query.udp(query, self.addr, port=self.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset[0].serial
        return None

    def wait_serial(self, serial: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessError(f"nsd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.soa_serial() == serial:
                    return
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.05)
        raise ProcessError(f"nsd does not serve serial {serial} after {timeout}s:\n{self.log()}")

    def reload(self, timeout: float = 15.0, **values: str) -> None:
        """New zone content, SIGHUP, and wait until the new serial is served."""
        self.values.update(values)
        self.serial += 1
        self.write_zone()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        self.wait_serial(self.serial, timeout)

    def pause(self) -> None:
        """SIGSTOP the server's process group: queries go unanswered (a timeout)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        stop_group(self.proc, leader_only=True)

    def log(self) -> str:
        return read_log(self.log_path)
