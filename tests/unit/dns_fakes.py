"""A scripted name server and clock for the dnspython adapter tests (no network)."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

SOA = "ko.test. 300 IN SOA ns.ko.test. hostmaster.ko.test. 1 3600 600 86400 20"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """Scripted name server: name -> handler(request, tcp) -> response or exception."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.answers: dict[tuple[str, str], object] = {}
        self.sent: list[tuple[str, str, str, float, bool]] = []

    def __call__(self, request, server, port, timeout, tcp):
        question = request.question[0]
        key = (question.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(question.rdtype))
        self.sent.append((server, *key, timeout, tcp))
        handler = self.answers.get(key)
        if handler is None:
            return reply(request, rcode=dns.rcode.NXDOMAIN, authority=[SOA])
        return handler(request, server, timeout, tcp)


def reply(request, answer=(), authority=(), rcode=dns.rcode.NOERROR):
    response = dns.message.make_response(request)
    response.set_rcode(rcode)
    for text in answer:
        response.answer.append(dns.rrset.from_text(*text.split(" ", 4)))
    for text in authority:
        response.authority.append(dns.rrset.from_text(*text.split(" ", 4)))
    return dns.message.from_wire(response.to_wire())  # as it arrives: one RRset per name and type


def records(*lines: str):
    return lambda request, server, timeout, tcp: reply(request, answer=lines)


def silence(clock: Clock):
    def handler(request, server, timeout, tcp):
        clock.now += timeout
        raise dns.exception.Timeout(timeout=timeout)
    return handler
