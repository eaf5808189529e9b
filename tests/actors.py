"""SIPp user agents for the integration tests: registered callees and callers."""

from __future__ import annotations

import re
import time
from pathlib import Path

from harness import Kamailio, SippResult, SippRun, describe, sipp, start_sipp
from outbound.sipmsg import SipUri, parse_name_addr, split_values
from topology import subscriber


def instance(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


def ob_params(inst: str, reg_id: int, extra: str = "") -> str:
    return f';+sip.instance="<{inst}>";reg-id={reg_id}{extra}'


def start_callee(kam: Kamailio, workdir: Path, port: int, user: str, *, ua_ip: str,
                 transport: str = "tcp", uas: str = "uas.xml", cparams: str | None = None,
                 who: str | None = None, timeout: int = 30, cid: str | None = None,
                 netns: str | None = None, cseq: int = 1) -> SippRun:
    """A registered outbound UA (tests/sipp/callee_ob) holding its flow open;
    ``cseq``: its REGISTER's CSeq (higher to refresh the registration of ``cid``)."""
    return start_sipp("callee_ob/register.xml", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=ua_ip,
                      local_port=port, transport=transport, timeout=timeout, auth=subscriber(user),
                      keys={"user": user, "domain": "example.com", "expires": "600", "who": who or user,
                            "cseq": str(cseq), "cseq_auth": str(cseq + 1),
                            "cparams": cparams if cparams is not None else ob_params(instance(port), 1)},
                      oocsf=f"callee_ob/{uas}", extra=["-cid_str", cid] if cid else None, netns=netns)


def wait_bindings(registrar: Kamailio, user: str, runs: list[SippRun], count: int = 1,
                  timeout: float = 10.0) -> list[dict]:
    """Poll usrloc over RPC until ``count`` bindings exist for ``user``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = registrar.bindings(user)
        if len(found) >= count:
            return found
        for run in runs:
            if not run.alive:
                ended = run.wait(1)
                raise AssertionError(f"callee SIPp exited {ended.returncode} before registering:\n"
                                     + describe(ended))
        time.sleep(0.05)
    raise AssertionError(f"{len(registrar.bindings(user))} bindings for {user} after {timeout}s, wanted {count}")


def call(kam: Kamailio, workdir: Path, port: int, callee: str, *, ua_ip: str, scenario: str = "uac_short.xml",
         timeout: int = 15, **keys: str) -> SippResult:
    """A caller (tests/sipp/caller) over UDP through ``kam``."""
    user = keys.pop("user", "alice")
    domain = keys.pop("domain", "example.com")
    return sipp(f"caller/{scenario}", f"{kam.addr}:{kam.port}", workdir=workdir, local_ip=ua_ip,
                local_port=port, transport="udp", timeout=timeout, check=scenario != "uac_final.xml",
                auth=subscriber(user, domain), keys={"callee": callee, "domain": domain, "user": user, **keys})


def assert_refusal_acked_hop_by_hop(caller: SippResult, callee: SippResult, last_hop: str) -> None:
    """RFC 3261 §17.2.1, §16.7 (S13), for a call caller/uac_refused.xml made to a
    callee_ob/uas_busy.xml: the caller's ACK of the 486 ends the transaction of the
    hop it reached, which stops sending the 486 again (timer G), and goes no
    further: the callee gets the ACK of ``last_hop``'s own transaction, with that
    hop's Via alone (§17.1.1.3), never the caller's ACK passed on."""
    assert "quiet" in caller.log, describe(caller)  # it listened 2 s after its ACK, no other 486
    assert caller.messages.count("SIP/2.0 486 Busy Here") == 1, describe(caller)  # nor a copy of the 486
    assert "call refused busy" in callee.log, describe(callee)
    acks = re.findall(r"^ACK .*?(?=^-{5,}|\Z)", callee.messages, re.M | re.S)
    assert len(acks) == 1, describe(callee)
    vias = re.findall(r"^Via:(.*)$", acks[0], re.M | re.I)
    assert len(vias) == 1 and last_hop in vias[0] and "," not in vias[0], acks[0]


def tcp_stat(kam: Kamailio, name: str) -> int:
    for line in kam.rpc("stats.get_statistics", "tcp:"):
        key, _, value = line.partition(" = ")
        if key == f"tcp:{name}":
            return int(value)
    raise KeyError(name)


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll a condition (an RPC read, a log line) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def completed_call_routes(caller: SippResult, user: str, hangup: str) -> list[SipUri]:
    """Check the caller's side of a call to ``user`` that went through (caller/uac.xml:
    re-INVITE and BYE answered; caller/uac_wait_bye.xml: the callee's BYE received)
    and return the Record-Route URIs the caller saw."""
    assert caller.value("who") == user
    if hangup == "caller":
        assert caller.value("reinvite") == "200" and caller.value("bye") == "200"
    else:
        assert caller.value("bye") == "received"
    return [parse_name_addr(v).sip_uri for v in split_values(caller.value("rr"))]
