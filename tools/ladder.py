"""SIP ladder diagrams: capture with tshark, read the SIP messages back, draw with matplotlib.

``Capture`` runs tshark on one interface (loopback, or the host side of a
container network) into a pcapng file; ``read_messages`` asks tshark to
dissect it; ``draw`` turns the messages into a ladder (one lifeline per SIP
element, one arrow per message) and writes SVG or PNG.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "udp.srcport", "tcp.dstport", "udp.dstport",
          "sip.Method", "sip.Status-Code", "sip.Status-Line", "sip.CSeq.method", "sip.Call-ID")


class CaptureError(RuntimeError):
    pass


@dataclass(frozen=True)
class Message:
    """One SIP message as seen on the wire."""

    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    transport: str
    method: str  # request method, or "" for a response
    status: int  # response code, or 0 for a request
    reason: str
    cseq_method: str
    call_id: str

    @property
    def label(self) -> str:
        if self.status:
            reason = self.reason if len(self.reason) <= 22 else self.reason.split(" ")[0]
            return f"{self.status} {reason} ({self.cseq_method})"
        return self.method


@dataclass(frozen=True)
class Event:
    """Something the story did at a point in time (e.g. "edge1 killed")."""

    time: float
    text: str


class Capture:
    """tshark on one interface, started before and stopped after the story."""

    def __init__(self, interface: str, bpf: str, path: Path) -> None:
        self.interface = interface
        self.bpf = bpf
        self.path = path
        self.log_path = path.with_suffix(".tshark.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Capture:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["tshark", "-i", self.interface, "-f", self.bpf, "-w", str(self.path), "-q"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # readiness: tshark says it is capturing
            if self.proc.poll() is not None:
                raise CaptureError(f"tshark exited {self.proc.returncode}: {self.log_path.read_text(errors='replace')}")
            if "Capturing on" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.05)
        raise CaptureError(f"tshark did not start capturing within {timeout}s")

    def stop(self, marker_to: tuple[str, int] | None = None, timeout: float = 5.0) -> None:
        """Stop capturing. With ``marker_to`` (an address the filter sees, where
        nothing listens) a marker datagram is sent first and the capture is only
        stopped once the marker is in the file: no message of the story is lost
        in tshark's buffers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if marker_to is not None:
            marker = f"kemi-outbound-capture-end-{time.time_ns()}".encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(marker, marker_to)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and marker not in self.path.read_bytes():
                time.sleep(0.05)
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def read_messages(pcap: Path, sip_ports: Iterable[int] = (5060,)) -> list[Message]:
    """Every SIP message in the capture, in order (not the copies quoted inside ICMP errors)."""
    cmd = ["tshark", "-r", str(pcap), "-Y", "sip and not icmp", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=f"]
    for port in sorted(set(sip_ports)):
        if port != 5060:
            cmd += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    for name in FIELDS:
        cmd += ["-e", name]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise CaptureError(f"tshark -r {pcap}: {result.stderr.strip()}")
    messages = []
    for line in result.stdout.splitlines():
        parts = (line.split("\t") + [""] * len(FIELDS))[: len(FIELDS)]
        epoch, src, dst, tsport, usport, tdport, udport, method, status, status_line, cseq, call_id = parts
        if not src or not (method or status):
            continue
        reason = status_line.split(" ", 2)[2] if status and status_line.count(" ") >= 2 else ""
        messages.append(Message(
            time=float(epoch), src=(src, int(tsport or usport or 0)), dst=(dst, int(tdport or udport or 0)),
            transport="tcp" if tsport else "udp", method=method, status=int(status or 0), reason=reason,
            cseq_method=cseq, call_id=call_id))
    return messages


class Lanes:
    """Which lifeline a message end belongs to: an exact (address, port), else the
    address; unknown endpoints get a lane of their own at the right."""

    def __init__(self, named: list[tuple[str, str | tuple[str, int]]]) -> None:
        self.order = [label for label, _ in named]
        self.by_endpoint = {key: label for label, key in named if isinstance(key, tuple)}
        self.by_address = {key: label for label, key in named if isinstance(key, str)}

    def of(self, endpoint: tuple[str, int]) -> str:
        label = self.by_endpoint.get(endpoint) or self.by_address.get(endpoint[0])
        if label is None:
            label = f"{endpoint[0]}:{endpoint[1]}"
            self.by_address[endpoint[0]] = label
            self.order.append(label)
        return label


def _colour(message: Message) -> str:
    if not message.status:
        return "#1f3b73"
    if message.status < 200:
        return "#8a8a8a"
    if message.status < 300:
        return "#1a7f37"
    return "#c62828"


def draw(messages: list[Message], lanes: Lanes, events: list[Event], path: Path, title: str) -> Path:
    """Write the ladder diagram (format from the suffix: .svg or .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, Message | Event]] = [("m", m) for m in messages] + [("e", e) for e in events]
    rows.sort(key=lambda row: row[1].time)
    used = {lanes.of(m.src) for m in messages} | {lanes.of(m.dst) for m in messages}
    columns = [label for label in lanes.order if label in used]
    x = {label: i * 2.2 for i, label in enumerate(columns)}
    start = min((row[1].time for row in rows), default=0.0)
    height = 1.6 + 0.3 * len(rows)
    width = 2.4 + 2.2 * max(len(columns) - 1, 1)
    fig, ax = plt.subplots(figsize=(width, height))
    top = 0.0
    bottom = -(len(rows) + 1)
    for label, pos in x.items():
        ax.plot([pos, pos], [top, bottom], color="#b0b0b0", linewidth=1, zorder=1)
        ax.text(pos, top + 0.35, label.replace(" (", "\n("), ha="center", va="bottom", fontsize=8,
                fontweight="bold", bbox={"boxstyle": "round", "facecolor": "#eef2f8", "edgecolor": "#6b7a99"})
    left = -1.3
    for i, (_kind, item) in enumerate(rows, start=1):
        y = -i
        ax.text(left, y, f"{item.time - start:7.3f} s", ha="left", va="center", fontsize=6.5,
                family="monospace", color="#555555")
        if isinstance(item, Event):
            ax.plot([left + 0.9, x[columns[-1]] + 0.6], [y, y], color="#c62828", linestyle="--", linewidth=0.8)
            ax.text((x[columns[0]] + x[columns[-1]]) / 2, y + 0.08, item.text, ha="center", va="bottom",
                    fontsize=7.5, color="#c62828", fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            continue
        src, dst = x[lanes.of(item.src)], x[lanes.of(item.dst)]
        colour = _colour(item)
        ax.annotate("", xy=(dst, y), xytext=(src, y),
                    arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.1, "shrinkA": 0, "shrinkB": 0})
        ax.text((src + dst) / 2, y + 0.06, item.label, ha="center", va="bottom", fontsize=6.8, color=colour)
        ax.text(max(src, dst) - 0.05 if dst > src else min(src, dst) + 0.05, y - 0.05, item.transport.upper(),
                ha="right" if dst > src else "left", va="top", fontsize=5, color="#999999")
    ax.set_xlim(left - 0.1, x[columns[-1]] + 0.8)
    ax.set_ylim(bottom, top + 1.3)
    ax.axis("off")
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
