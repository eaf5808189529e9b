"""A WebSocket device as a process of its own: one +sip.instance, one WebSocket
flow per edge (RFC 7118 §5, RFC 5626 §4.2), answering the calls that come over
its flows, reporting each event as one JSON line on stdout.

SIPp speaks no WebSocket; this wraps tests/ws_ua.py (over tests/wsclient.py,
stdlib only) so that the device can run where the test needs it: on the host
(the demo's loopback stage) or with a container's python3 (the container test,
the demo's --containers stage). Run as a script it is the device::

    ws_device.py USER PASSWORD INSTANCE LOCAL_IP WS_PORT ORIGIN LIMIT WHO REGID=EDGE_IP ...

It registers the flows in the order given (answering the 401), then answers
every INVITE of a flow 200 (X-Who: WHO with ``{regid}`` replaced by the flow's
reg-id), its ACK and the BYE. A line ``close REGID`` on stdin closes that flow's
WebSocket; end of stdin ends the device; after LIMIT seconds it exits by itself.
``WsDevice`` starts the script and reads its events.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import threading
from pathlib import Path

HELPERS = ("ws_device.py", "ws_ua.py", "wsclient.py", "digest.py")  # what the script needs beside it


def _device(argv: list[str]) -> None:
    """The device (the script's body)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ws_ua import WsUA
    from wsclient import WsClient, WsClosed

    user, password, inst, me, port, origin, limit, who = argv[:8]
    flows = [(int(regid), edge) for regid, edge in (arg.split("=") for arg in argv[8:])]
    threading.Timer(float(limit), os._exit, (3,)).start()  # bounded, whatever the caller does
    lock = threading.Lock()
    closing: dict[int, bool] = {}

    def report(**event: object) -> None:
        with lock:
            print(json.dumps(event), flush=True)

    def serve(regid: int, ua: WsUA) -> None:
        """Answer every INVITE of this flow (200, ACK, BYE 200) until told to close it."""
        while True:
            if closing.get(regid):
                ua.ws.close()
                report(event="closed", regid=regid)
                return
            try:
                invite = ua.wait_request("INVITE", 0.5)
            except TimeoutError:
                continue
            except (WsClosed, OSError) as exc:
                report(event="lost", regid=regid, error=str(exc))
                return
            try:
                ua.reply(invite, 200, "OK", to_tag=secrets.token_hex(4))
                ua.wait_request("ACK", 10)
                bye = ua.wait_request("BYE", 10)
                ua.reply(bye, 200, "OK")
            except (TimeoutError, WsClosed, OSError) as exc:
                report(event="failed", regid=regid, error=repr(exc))
                return
            report(event="answered", regid=regid, rr=invite.all("Record-Route"), ruri=invite.first)

    for regid, edge in flows:
        ws = WsClient(edge, int(port), local_ip=me, timeout=5)
        answer = ws.handshake(origin=origin)
        if answer.status != 101:
            report(event="refused", regid=regid, status=answer.status)
            os._exit(1)  # not sys.exit: the LIMIT timer would hold the process
        ua = WsUA(ws, user, password, who=who.replace("{regid}", str(regid)))
        final = ua.register(inst, regid)
        report(event="registered", regid=regid, status=final.status, local=list(ws.local))
        if final.status != 200:
            os._exit(1)
        threading.Thread(target=serve, args=(regid, ua), daemon=True).start()

    for line in sys.stdin:
        command, _, regid_text = line.strip().partition(" ")
        if command == "close":
            closing[int(regid_text)] = True
    os._exit(0)


class WsDevice:
    """The script running under ``command`` (e.g. ``[sys.executable]`` or ``docker
    exec -i <container> python3``) at ``script`` (its path as that command sees
    it); its events are read by a thread into a queue, its stderr lands in
    ``folder``/stderr.log."""

    def __init__(self, command: list[str], script: str, folder: Path, *, user: str, password: str, instance: str,
                 local_ip: str, port: int, origin: str, flows: tuple[tuple[int, str], ...], who: str = "",
                 limit: float = 150) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.stderr = (folder / "stderr.log").open("w")
        args = [user, password, instance, local_ip, str(port), origin, str(limit), who or user,
                *(f"{regid}={edge}" for regid, edge in flows)]
        self.proc = subprocess.Popen([*command, script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    @staticmethod
    def copy_helpers(folder: Path) -> None:
        """Put the script and what it imports into ``folder`` (for a container that mounts it)."""
        folder.mkdir(parents=True, exist_ok=True)
        here = Path(__file__).resolve().parent
        for helper in HELPERS:
            (folder / helper).write_bytes((here / helper).read_bytes())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "output", "line": line})
        self.events.put({"event": "exited"})

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def diagnostics(self) -> str:
        self.stderr.flush()
        return f"device events: {self.seen}\ndevice stderr:\n{(self.folder / 'stderr.log').read_text()[-3000:]}"

    def next_event(self, timeout: float) -> dict | None:
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        self.seen.append(got)
        return got

    def expect(self, event: str, regid: int, timeout: float = 20) -> dict:
        """The device's next report, which must be ``event`` for flow ``regid``."""
        got = self.next_event(timeout)
        if got is None:
            raise AssertionError(f"no '{event}' of flow {regid} from the device in {timeout}s\n"
                                 + self.diagnostics())
        if (got.get("event"), got.get("regid")) != (event, regid):
            raise AssertionError(f"expected {event} of flow {regid}, got {got}\n{self.diagnostics()}")
        return got

    def close_flow(self, regid: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"close {regid}\n")
        self.proc.stdin.flush()
        self.expect("closed", regid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        (self.folder / "events.json").write_text(json.dumps(self.seen, indent=1))


if __name__ == "__main__":
    _device(sys.argv[1:])
