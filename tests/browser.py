"""A real browser in the tests: Debian's headless Chromium driven by playwright-core.

tests/browser/ holds the page (index.html, device.mjs: a SIP.js device, the
library loaded from node_modules, no CDN), the node driver (driver.mjs) and the
npm lock (installed by tools/install-deps: ``npm ci``, no browser download).
``PageServer`` serves that folder on loopback (http.server in a thread);
``Browser`` starts the driver (node + Chromium, one process group, stopped by
PID), sends it JS expressions to evaluate in the page and collects the browser
console. Every wait is bounded and polls; none is a bare sleep.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness import ROOT, read_log, stop_group

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} missing (tools/install-deps installs Debian's chromium)"
    if shutil.which("node") is None:
        return "node missing"
    for pkg in ("playwright-core", "sip.js"):
        if not (BROWSER_DIR / "node_modules" / pkg).is_dir():
            return f"tests/browser/node_modules/{pkg} missing (tools/install-deps runs npm ci there)"
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


class PageServer:
    """tests/browser/ over HTTP on ``addr``:``port`` (loopback), in a thread."""

    def __init__(self, addr: str, port: int) -> None:
        handler = partial(_QuietHandler, directory=str(BROWSER_DIR))
        _QuietHandler.extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                                        ".js": "text/javascript"}
        self.httpd = ThreadingHTTPServer((addr, port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.origin = f"http://{addr}:{port}"

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class BrowserError(RuntimeError):
    pass


class Browser:
    """Chromium on ``url`` through tests/browser/driver.mjs; ``console`` is every
    console line so far."""

    def __init__(self, url: str, workdir: Path, name: str = "browser") -> None:
        self.url = url
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ready = threading.Event()
        self._ids = 0

    def start(self, timeout: float = 30) -> Browser:
        opts = {"url": self.url, "userDataDir": str(self.dir / "profile"), "executablePath": str(CHROMIUM),
                "args": CHROMIUM_FLAGS}
        self.stderr = (self.dir / "driver.stderr").open("w")
        self.proc = subprocess.Popen(["node", str(BROWSER_DIR / "driver.mjs"), json.dumps(opts)],
                                     cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, start_new_session=True,
                                     env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
                                          # Chromium's crash database and caches: in the test's dir too
                                          "XDG_CONFIG_HOME": str(self.dir / "config"),
                                          "XDG_CACHE_HOME": str(self.dir / "cache")})
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"the page did not come up\n{self.report()}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                self.console.append(f"[driver] {line.rstrip()}")
                continue
            if "console" in msg:
                self.console.append(msg["console"])
            elif msg.get("ready"):
                self._ready.set()
            else:
                self._replies.put(msg)

    def eval(self, expr: str, timeout: float = 15) -> Any:
        """The value of the JS expression ``expr`` in the page (a promise is awaited)."""
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        self.proc.stdin.write(json.dumps({"id": self._ids, "expr": expr}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BrowserError(f"no answer to {expr!r} in {timeout} s") from None
                continue
            if reply.get("id") != self._ids:
                continue  # the late answer of an expression that timed out
            if not reply["ok"]:
                raise BrowserError(f"{expr!r}: {reply['error']}")
            return reply.get("value")

    def wait_for(self, expr: str, timeout: float = 15, interval: float = 0.1) -> Any:
        """Poll the JS expression ``expr`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expr!r} still {value!r} after {timeout} s")
            time.sleep(interval)

    def report(self) -> str:
        """The browser console and the driver's stderr, for a failure message."""
        console = "\n".join(self.console[-300:])
        stderr = read_log(self.dir / "driver.stderr")[-4000:]
        return f"--- browser console ---\n{console}\n--- driver stderr ---\n{stderr}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the driver closes Chromium and exits
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_group(self.proc)
        if getattr(self, "stderr", None):
            self.stderr.close()
        (self.dir / "console.log").write_text("\n".join(self.console) + "\n")
