"""TLS for the integration tests: a throwaway CA, Kamailio's tls.cfg and stunnel.

Debian's SIPp (3.6.1-SCTP-PCAP-RTPSTREAM) is built without TLS, so a SIPp UA
speaks TCP to a local Debian ``stunnel4`` in client mode, which carries it over
TLS to Kamailio: one SIPp TCP connection to stunnel is one TLS connection from
stunnel to Kamailio, from the UA's address (stunnel ``local``). stunnel checks
the server certificate against the test CA, so the TLS is real on both ends.

Certificates are made at test time with ``openssl`` into the test workdir. Every
process is started by us, tracked by its Popen object and stopped by PID;
readiness is the listening socket in /proc/net/tcp, never a sleep.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import GroupProcess, ProcessError

TCP_LISTEN = "0A"  # state column of /proc/net/tcp


@dataclass(frozen=True)
class Certs:
    """A CA and one server certificate (with IP subjectAltNames) signed by it."""

    ca: Path
    certificate: Path
    private_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A TLS client that trusts the test CA only and checks the server's IP."""
        return ssl.create_default_context(cafile=str(self.ca))


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ProcessError(f"openssl {' '.join(args)}: {result.stdout}{result.stderr}")


def make_certs(folder: Path, server_ips: list[str]) -> Certs:
    """A throwaway CA (valid one day) and a server certificate for ``server_ips``."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kemi-outbound test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={server_ips[0]}",
             "-keyout", "server.key", "-out", "server.csr", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=" + ",".join(f"IP:{ip}" for ip in server_ips) + "\n")
    _openssl("x509", "-req", "-days", "1", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-extfile", "server.ext", "-out", "server.pem", cwd=folder)
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def write_tls_cfg(folder: Path, certs: Certs) -> Path:
    """The tls module's config file (modparam tls config = KO_TLS_CFG): our server
    certificate; UAs are not asked for one (SIP digest authenticates them)."""
    path = folder / "tls.cfg"
    path.write_text(f"""[server:default]
method = TLSv1.2+
certificate = {certs.certificate}
private_key = {certs.private_key}
verify_certificate = no
require_certificate = no

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = {certs.ca}
""")
    return path


def is_listening(ip: str, port: int) -> bool:
    """A TCP socket listens on ip:port (read from /proc/net/tcp, no connection made)."""
    wanted = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == TCP_LISTEN:
                return True
    return False


@dataclass
class Stunnel(GroupProcess):
    """stunnel in client mode: TCP accepted on ``accept`` goes out as TLS from
    ``local`` to ``connect``, the server certificate checked against the CA."""

    workdir: Path
    name: str
    accept: tuple[str, int]
    connect: tuple[str, int]
    local: str
    certs: Certs
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def write_config(self) -> Path:
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(f"""foreground = yes
pid =
debug = 5
output = {self.log_path}
syslog = no

[{self.name}]
client = yes
accept = {self.accept[0]}:{self.accept[1]}
connect = {self.connect[0]}:{self.connect[1]}
local = {self.local}
CAfile = {self.certs.ca}
verifyChain = yes
checkIP = {self.connect[0]}
TIMEOUTclose = 0
""")
        return conf

    def start(self, timeout: float = 10.0) -> Stunnel:
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            raise ProcessError("stunnel is not installed: run tools/install-deps")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.write_config()
        out = open(self.workdir / f"{self.name}.stdout", "ab")
        self.proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not is_listening(*self.accept):
            if self.proc.poll() is not None:
                raise ProcessError(f"stunnel {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"stunnel {self.name} not listening after {timeout}s:\n{self.log()}")
            time.sleep(0.02)
        return self


    def tls_connections(self) -> list[str]:
        """``ip:port`` of every TLS connection stunnel opened toward ``connect``."""
        return re.findall(r"s_connect: connected (\S+)", self.log())
