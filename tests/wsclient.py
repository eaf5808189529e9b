"""A small WebSocket client for the tests (RFC 6455), stdlib only: the HTTP
handshake, masked frames (text, continuation, ping, pong, close) and a reader
that answers pings and hands back whole messages. Test-only: it speaks to
Kamailio's websocket module (RFC 7118: SIP in text frames, sub-protocol sip).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WsClosed(ConnectionError):
    """The server closed the connection (``code``: its close status, if it sent one)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code} {reason})")
        self.code = code
        self.reason = reason


@dataclass
class HttpAnswer:
    status: int
    reason: str
    headers: dict[str, str]
    raw: str


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """One frame as a client sends it (masked); ``length`` lies about the payload length."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    size = len(payload) if length is None else length
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WsClient:
    """One client connection: ``connect`` sends the handshake, ``answer`` is the
    server's HTTP answer; ``open`` is True after a 101."""

    def __init__(self, host: str, port: int, *, local_ip: str | None = None, timeout: float = 5.0,
                 tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(local_ip, 0) if local_ip else None)
        # wss: TLS first (the server's certificate checked against ``tls``'s CA), then the handshake
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self.host, self.port = host, port
        self.buffer = b""
        self.answer: HttpAnswer | None = None
        self.pongs: list[bytes] = []
        self.pings: list[bytes] = []

    @property
    def local(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    @property
    def open(self) -> bool:
        return self.answer is not None and self.answer.status == 101

    def handshake(self, *, protocol: str | None = "sip", origin: str | None = None, path: str = "/",
                  version: str = "13", extra: tuple[str, ...] = ()) -> HttpAnswer:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
        if protocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        if origin is not None:
            lines.append(f"Origin: {origin}")
        lines += list(extra)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = self.read_http()
        if answer.status == 101:
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            assert answer.headers.get("sec-websocket-accept") == accept, answer.raw
        return answer

    def read_http(self) -> HttpAnswer:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsClosed(None, f"connection closed during the HTTP answer: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        text = head.decode(errors="replace")
        first, *rest = text.split("\r\n")
        _, code, reason = (first.split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in rest:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        self.answer = HttpAnswer(int(code), reason, headers, text + "\r\n\r\n" + body.decode(errors="replace"))
        return self.answer

    # ----- frames ---------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.sock.sendall(frame(TEXT, text.encode()))

    def send_fragments(self, text: str, parts: int) -> None:
        """One message split over ``parts`` frames: text, continuations, the last with FIN."""
        data = text.encode()
        size = -(-len(data) // parts)
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        for index, chunk in enumerate(chunks):
            self.sock.sendall(frame(TEXT if index == 0 else CONT, chunk, fin=index == len(chunks) - 1))

    def ping(self, payload: bytes = b"ko") -> None:
        self.sock.sendall(frame(PING, payload))

    def close(self, code: int = 1000) -> None:
        """Send a close frame and shut the socket (no wait for the answer)."""
        try:
            self.sock.sendall(frame(CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no WebSocket frame in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no WebSocket frame in time") from None
        except ConnectionResetError:
            raise WsClosed(None, "connection reset") from None
        if not chunk:
            raise WsClosed(None, "connection closed without a close frame")
        self.buffer += chunk

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next frame the server sent (never masked)."""
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 2:
            self._fill(deadline)
        size = self.buffer[1] & 0x7F
        offset = 2
        if size == 126:
            while len(self.buffer) < 4:
                self._fill(deadline)
            size, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif size == 127:
            while len(self.buffer) < 10:
                self._fill(deadline)
            size, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        while len(self.buffer) < offset + size:
            self._fill(deadline)
        first = self.buffer[0]
        payload = self.buffer[offset:offset + size]
        self.buffer = self.buffer[offset + size:]
        return first & 0x0F, bool(first & 0x80), payload

    def recv_message(self, timeout: float = 5.0) -> str:
        """The next text/binary message (continuations joined); pings are answered,
        pongs kept; a close frame raises WsClosed."""
        deadline = time.monotonic() + timeout
        parts: list[bytes] = []
        while True:
            opcode, fin, payload = self.read_frame(max(deadline - time.monotonic(), 0.01))
            if opcode == PING:
                self.pings.append(payload)
                self.sock.sendall(frame(PONG, payload))
                continue
            if opcode == PONG:
                self.pongs.append(payload)
                continue
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise WsClosed(code, payload[2:].decode(errors="replace"))
            parts.append(payload)
            if fin:
                return b"".join(parts).decode(errors="replace")

    def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; its close status (None: no close frame)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.recv_message(max(deadline - time.monotonic(), 0.01))
            except WsClosed as closed:
                try:  # the TCP close follows the close frame
                    while self.sock.recv(65536):
                        pass
                except OSError:
                    pass
                return closed.code
