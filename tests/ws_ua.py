"""A SIP user agent over one WebSocket connection (RFC 7118), for the tests:
REGISTER with +sip.instance / reg-id (RFC 5626 §4.2) answering the digest
challenge (tests/digest.py), then answering the requests that come over the
connection. Minimal on purpose: one transaction at a time."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from digest import authorization, challenges
from wsclient import WsClient


@dataclass
class SipMessage:
    text: str
    first: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> SipMessage:
        head = text.split("\r\n\r\n", 1)[0]
        first, *lines = head.split("\r\n")
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return cls(text, first, headers)

    @property
    def is_request(self) -> bool:
        return not self.first.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0] if self.is_request else self.cseq_method

    @property
    def status(self) -> int:
        return int(self.first.split(" ")[1]) if not self.is_request else 0

    @property
    def cseq_method(self) -> str:
        return self.get("CSeq").split()[-1]

    def get(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def instance(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


class WsUA:
    """One device on one WebSocket connection (``ws``, already open)."""

    def __init__(self, ws: WsClient, user: str, password: str, domain: str = "example.com", who: str = "") -> None:
        self.ws = ws
        self.user, self.password, self.domain = user, password, domain
        self.who = who or user  # the X-Who of its answers (the callers' SIPp scenarios log it)
        self.host = f"{secrets.token_hex(4)}.invalid"  # RFC 7118 §5.2: a device has no reachable address
        self.call_id = secrets.token_hex(8) + "@" + self.host
        self.tag = secrets.token_hex(4)
        self.cseq = 0
        self.seen: list[SipMessage] = []
        self.pending: list[SipMessage] = []  # requests read while waiting for another one

    def via(self) -> str:
        return f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(6)}"

    def register_request(self, inst: str, reg_id: int, expires: int = 600, auth: str = "") -> str:
        self.cseq += 1
        aor = f"sip:{self.user}@{self.domain}"
        lines = [f"REGISTER sip:{self.domain} SIP/2.0", f"Via: {self.via()}", "Max-Forwards: 70",
                 f"From: <{aor}>;tag={self.tag}", f"To: <{aor}>", f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} REGISTER", "Supported: path, outbound",
                 f'Contact: <sip:{self.user}@{self.host};transport=ws;ob>;+sip.instance="<{inst}>";reg-id={reg_id}',
                 f"Expires: {expires}"]
        if auth:
            lines.append(auth)
        return "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"

    def register(self, inst: str, reg_id: int = 1, expires: int = 600) -> SipMessage:
        """REGISTER, answering one 401; the final answer."""
        self.ws.send_text(self.register_request(inst, reg_id, expires))
        answer = self.final("REGISTER")
        if answer.status == 401:
            [challenge] = [c for c in challenges(answer.text) if c.header.lower() == "www-authenticate"][:1]
            auth = authorization(challenge, "REGISTER", f"sip:{self.domain}", self.user, self.password)
            self.ws.send_text(self.register_request(inst, reg_id, expires, auth))
            answer = self.final("REGISTER")
        return answer

    def next(self, timeout: float = 5.0) -> SipMessage:
        while True:
            text = self.ws.recv_message(timeout)
            if text.strip() == "":
                continue  # a CRLF keepalive answer
            message = SipMessage.parse(text)
            self.seen.append(message)
            return message

    def final(self, method: str, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if not message.is_request and message.cseq_method == method and message.status >= 200:
                return message

    def wait_request(self, method: str, timeout: float = 10.0) -> SipMessage:
        for message in self.pending:
            if message.method == method:
                self.pending.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if message.is_request and message.method == method:
                return message
            if message.is_request:
                self.pending.append(message)  # e.g. a BYE overtaking the ACK on another worker

    def reply(self, request: SipMessage, code: int, reason: str, *, to_tag: str | None = None,
              extra: tuple[str, ...] = ()) -> None:
        """A response to ``request``, over the connection it came on (RFC 3261 §8.2.6)."""
        to = request.get("To")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in request.all("Via")]
        if code < 300 and request.method == "INVITE":
            lines += [f"Record-Route: {v}" for v in request.all("Record-Route")]
            lines.append(f"Contact: <sip:{self.user}@{self.host};transport=ws;ob>")
        lines += [f"From: {request.get('From')}", f"To: {to}", f"Call-ID: {request.get('Call-ID')}",
                  f"CSeq: {request.get('CSeq')}", f"X-Who: {self.who}", *extra, "Content-Length: 0"]
        self.ws.send_text("\r\n".join(lines) + "\r\n\r\n")

    def answer_call(self, timeout: float = 10.0) -> SipMessage:
        """Answer the next INVITE 200, take its ACK and answer the caller's BYE 200;
        the INVITE as it arrived."""
        invite = self.wait_request("INVITE", timeout)
        tag = secrets.token_hex(4)
        self.reply(invite, 200, "OK", to_tag=tag)
        self.wait_request("ACK", timeout)
        bye = self.wait_request("BYE", timeout)
        self.reply(bye, 200, "OK")
        return invite


    def request(self, method: str, ruri: str, *, to: str, call_id: str, cseq: int, from_tag: str,
                routes: tuple[str, ...] = (), extra: tuple[str, ...] = (), via: str | None = None) -> str:
        lines = [f"{method} {ruri} SIP/2.0", f"Via: {via or self.via()}", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in routes]
        lines += [f"From: <sip:{self.user}@{self.domain}>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
                  f"CSeq: {cseq} {method}", f"Contact: <sip:{self.user}@{self.host};transport=ws;ob>",
                  "Supported: outbound", *extra, "Content-Length: 0"]
        return "\r\n".join(lines) + "\r\n\r\n"

    def call(self, callee: str, timeout: float = 10.0) -> SipMessage:
        """Call ``callee`` (its AOR's user): INVITE, the 407 answered once, ACK the
        2xx along its Record-Route, BYE. The 200 of the INVITE."""
        call_id, tag, to = f"call-{secrets.token_hex(6)}@{self.host}", secrets.token_hex(4), \
            f"<sip:{callee}@{self.domain}>"
        ruri = f"sip:{callee}@{self.domain}"
        via = self.via()
        self.ws.send_text(self.request("INVITE", ruri, to=to, call_id=call_id, cseq=1, from_tag=tag, via=via))
        answer = self.final("INVITE", timeout)
        cseq = 1
        if answer.status == 407:
            # RFC 3261 §17.1.1.3: the ACK of a non-2xx takes the INVITE's Via and the answer's To
            ack = self.request("ACK", ruri, to=answer.get("To"), call_id=call_id, cseq=1, from_tag=tag, via=via)
            self.ws.send_text(ack)
            [challenge] = [c for c in challenges(answer.text) if c.header.lower() == "proxy-authenticate"][:1]
            cseq = 2
            auth = authorization(challenge, "INVITE", ruri, self.user, self.password)
            self.ws.send_text(self.request("INVITE", ruri, to=to, call_id=call_id, cseq=cseq, from_tag=tag,
                                           extra=(auth,)))
            answer = self.final("INVITE", timeout)
        if answer.status != 200:
            return answer
        target = re.search(r"<([^>]+)>", answer.get("Contact")).group(1)
        routes = tuple(reversed([v.strip() for r in answer.all("Record-Route") for v in r.split(",")]))
        dialog_to = answer.get("To")
        self.ws.send_text(self.request("ACK", target, to=dialog_to, call_id=call_id, cseq=cseq, from_tag=tag,
                                       routes=routes))
        self.ws.send_text(self.request("BYE", target, to=dialog_to, call_id=call_id, cseq=cseq + 1, from_tag=tag,
                                       routes=routes))
        bye = self.final("BYE", timeout)
        assert bye.status == 200, bye.text
        return answer


def token_of(path: str) -> str:
    """The user part (flow token) of a Path or Record-Route URI."""
    match = re.search(r"sip:([^@;>]+)@", path)
    return match.group(1) if match else ""
