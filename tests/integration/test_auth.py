"""Digest authentication and authorization (issue 11; RFC 3261 §22, §10.3; RFC 2617; RFC 8760).

Real Kamailio registrars with auth + auth_db on a real database: a SQLite file
and a PostgreSQL server started here (parametrized), two registrars sharing one
PostgreSQL, SHA-256 and MD5. The UA is a raw socket that computes its digest in
Python (tests/digest.py), as a UA would; SIPp callers show the 407 of a call.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import call, instance, start_callee, wait_bindings
from digest import ChallengeHeader, authorization, challenges
from harness import Kamailio
from outbound.sipmsg import parse_name_addr
from postgres import Postgres
from subscribers import SubscriberDB
from topology import net, registrar, start, stop

UA = net(150)
OTHER_UA = net(151)
PASSWORD = "correct horse battery"
SECRET = "farm-nonce-secret-0123456789abcdef"


class RawUA:
    """A UDP UA that signs its requests when challenged."""

    def __init__(self, ip: str = UA) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.ip, self.port = self.sock.getsockname()
        self.cseq = 0
        self.callid = f"auth-{self.port}@{self.ip}"

    def close(self) -> None:
        self.sock.close()

    def register(self, target: Kamailio, user: str, *, to: str | None = None, contact: str | None = None,
                 expires: int = 600, auth: str = "", domain: str = "example.com") -> str:
        """Send one REGISTER (``auth``: a credentials line or ""); the final answer."""
        self.cseq += 1
        to = to or user
        contact = contact or f"<sip:{user}@{self.ip}:{self.port}>"
        message = (f"REGISTER sip:{domain} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {self.ip}:{self.port};rport;branch=z9hG4bK-a{self.port}-{self.cseq}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=f{self.port}\r\n"
                   f"To: <sip:{to}@{domain}>\r\nCall-ID: {self.callid}\r\nCSeq: {self.cseq} REGISTER\r\n"
                   f"Contact: {contact}\r\nExpires: {expires}\r\n{auth + chr(13) + chr(10) if auth else ''}"
                   "Content-Length: 0\r\n\r\n")
        return self._send(target, message)

    def _send(self, target: Kamailio, message: str) -> str:
        self.sock.sendto(message.encode(), (target.addr, target.port))
        self.sock.settimeout(8)
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            if data.startswith("SIP/2.0 ") and data[8] != "1":
                return data

    def signed_register(self, target: Kamailio, user: str, password: str, *, to: str | None = None,
                        contact: str | None = None, expires: int = 600, algorithm: str | None = None,
                        verifier: Kamailio | None = None) -> str:
        """REGISTER, and again with credentials when challenged (at ``verifier``
        when given: another registrar of the farm)."""
        first = self.register(target, user, to=to, contact=contact, expires=expires)
        if not first.startswith("SIP/2.0 401"):
            return first
        challenge = pick(challenges(first), algorithm)
        line = authorization(challenge, "REGISTER", "sip:example.com", user, password, algorithm=algorithm)
        return self.register(verifier or target, user, to=to, contact=contact, expires=expires, auth=line)


def pick(found: list[ChallengeHeader], algorithm: str | None) -> ChallengeHeader:
    assert found, "a 401 without a Digest challenge"
    if algorithm is None:
        return found[0]
    return next(c for c in found if c.algorithm.upper() == algorithm.upper())


def stored(reg: Kamailio, aor: str) -> list[dict]:
    """The AOR's bindings without the seconds they have left (which tick)."""
    return [{k: v for k, v in b.items() if k != "Expires"} for b in reg.bindings(aor)]


def status(response: str) -> int:
    return int(response[8:11])


@pytest.fixture
def ua() -> Iterator[RawUA]:
    client = RawUA()
    yield client
    client.close()


@pytest.fixture(scope="module")
def postgres(workdir: Path) -> Iterator[Postgres]:
    server = Postgres(workdir / "pg-auth", net(152), 55432)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def farm(request, workdir: Path) -> Iterator[dict]:
    """One registrar on the chosen database with three subscribers."""
    if request.param == "sqlite":
        db = SubscriberDB.create_sqlite(workdir / "auth-subscribers.sqlite")
    else:
        db = SubscriberDB.for_postgres(request.getfixturevalue("postgres"))
        db.clear()
    for user in ("alice", "bob", "carol"):
        db.add(user, "example.com", PASSWORD)
    kam = start(registrar(workdir, name=f"auth-{request.param}", addr=net(153 if request.param == "sqlite" else 154),
                          defines={"KO_DB_URL": f'"{db.url}"', "KO_AUTH_SECRET": f'"{SECRET}"'}))
    try:
        yield {"registrar": kam, "db": db, "kind": request.param}
    finally:
        stop(kam)


def test_register_is_challenged_then_stored(farm, ua):
    """RFC 3261 §22.4 / §10.3 step 1: no credentials -> 401 with a fresh nonce
    (qop=auth); the right ones -> 200 and the binding is stored."""
    reg = farm["registrar"]
    first = ua.register(reg, "alice")
    assert status(first) == 401
    [challenge] = challenges(first)
    assert challenge.realm == "example.com" and challenge.nonce and "auth" in challenge.qop
    line = authorization(challenge, "REGISTER", "sip:example.com", "alice", PASSWORD)
    assert status(ua.register(reg, "alice", auth=line)) == 200
    assert [b["Address"] for b in reg.bindings("alice")] == [f"sip:alice@{ua.ip}:{ua.port}"]
    assert PASSWORD not in reg.log()


def test_wrong_password_and_unknown_user_get_403_and_keep_every_binding(farm, ua):
    """No binding from a failed REGISTER, none lost; the same 403 for an unknown
    user (no enumeration by code); the password is never logged."""
    reg = farm["registrar"]
    assert status(ua.signed_register(reg, "bob", PASSWORD)) == 200
    before = stored(reg, "bob")
    wrong = ua.signed_register(reg, "bob", "not the password", contact=f"<sip:bob@{ua.ip}:1>")
    assert status(wrong) == 403
    assert stored(reg, "bob") == before
    unknown = ua.signed_register(reg, "mallory", "whatever")
    assert status(unknown) == 403 and unknown.splitlines()[0] == wrong.splitlines()[0]
    assert reg.bindings("mallory") == []
    assert "not the password" not in reg.log()


def test_user_a_registering_aor_b_gets_403_and_bs_bindings_stay(farm, ua):
    """RFC 3261 §10.3 step 3: the authenticated user must own the AOR in To;
    also for Contact: * (removal only by the owner)."""
    reg = farm["registrar"]
    with_carol = RawUA(OTHER_UA)
    try:
        assert status(with_carol.signed_register(reg, "carol", PASSWORD)) == 200
    finally:
        with_carol.close()
    before = stored(reg, "carol")
    assert len(before) == 1
    assert status(ua.signed_register(reg, "alice", PASSWORD, to="carol")) == 403
    assert "user alice@example.com may not register carol@example.com" in reg.new_log()
    assert status(ua.register(reg, "alice", to="carol", contact="*", expires=0)) == 401
    assert status(ua.signed_register(reg, "alice", PASSWORD, to="carol", contact="*", expires=0)) == 403
    assert stored(reg, "carol") == before


def test_the_contact_past_max_contacts_gets_403_and_the_others_stay(farm, ua):
    """auth.max_contacts (10 by default): the 11th binding of an AOR is refused."""
    reg = farm["registrar"]
    farm["db"].add(f"many-{farm['kind']}", "example.com", PASSWORD)
    user = f"many-{farm['kind']}"
    for n in range(10):
        assert status(ua.signed_register(reg, user, PASSWORD, contact=f"<sip:{user}@{ua.ip}:{20000 + n}>")) == 200
    refused = ua.signed_register(reg, user, PASSWORD, contact=f"<sip:{user}@{ua.ip}:20010>")
    assert refused.startswith("SIP/2.0 403 Too Many Contacts")
    assert len(reg.bindings(user)) == 10


def test_malformed_credentials_get_400(farm, ua):
    reg = farm["registrar"]
    answer = ua.register(reg, "alice", auth='Authorization: Digest username="alice", nonce')
    assert status(answer) == 400
    assert "Traceback" not in reg.log()


def test_captured_credentials_replayed_from_elsewhere_get_no_binding(workdir, ua):
    """-A WITH_AUTH_CHECKS binds a nonce to the Call-ID, From tag and source
    address it was issued for: an Authorization seen on the wire, sent again
    verbatim from another address with another Contact, is refused (401
    stale=true) and the attacker's Contact is never stored."""
    db = SubscriberDB.create_sqlite(workdir / "auth-checks.sqlite")
    db.add("alice", "example.com", PASSWORD)
    kam = start(registrar(workdir, name="auth-checks", addr=net(169),
                          defines={"KO_DB_URL": f'"{db.url}"', "WITH_AUTH_CHECKS": ""}))
    attacker = RawUA(OTHER_UA)
    try:
        [challenge] = challenges(ua.register(kam, "alice"))
        line = authorization(challenge, "REGISTER", "sip:example.com", "alice", PASSWORD)
        assert status(ua.register(kam, "alice", auth=line)) == 200
        attacker.callid = ua.callid
        attacker.cseq = ua.cseq + 5
        replay = attacker.register(kam, "alice", auth=line, contact=f"<sip:evil@{attacker.ip}:{attacker.port}>")
        assert status(replay) == 401 and challenges(replay)[0].stale
        assert [b["Address"] for b in kam.bindings("alice")] == [f"sip:alice@{ua.ip}:{ua.port}"]
    finally:
        attacker.close()
        stop(kam)


def test_sha256_and_md5_digests(workdir, ua):
    """RFC 8760: a registrar set to SHA-256 (WITH_SHA256_DIGEST) challenges with
    algorithm=SHA-256 and verifies a SHA-256 response against the ha1_sha256
    column; an MD5 response there is no valid answer (a new challenge, nothing
    stored). (MD5: every other test.)"""
    db = SubscriberDB.create_sqlite(workdir / "auth-sha256.sqlite")
    db.add("dave", "example.com", PASSWORD)
    kam = start(registrar(workdir, name="auth-sha256", addr=net(155),
                          defines={"KO_DB_URL": f'"{db.url}"', "WITH_SHA256_DIGEST": ""}))
    try:
        first = ua.register(kam, "dave")
        [challenge] = challenges(first)
        assert challenge.algorithm == "SHA-256"
        good = authorization(challenge, "REGISTER", "sip:example.com", "dave", PASSWORD)
        assert "algorithm=SHA-256" in good
        assert status(ua.register(kam, "dave", auth=good)) == 200
        md5 = authorization(challenge, "REGISTER", "sip:example.com", "dave", PASSWORD, algorithm="MD5")
        assert status(ua.register(kam, "dave", auth=md5, contact=f"<sip:dave@{ua.ip}:2>")) == 401
        assert [b["Address"] for b in kam.bindings("dave")] == [f"sip:dave@{ua.ip}:{ua.port}"]
    finally:
        stop(kam)


def test_stale_nonce_gets_401_with_stale_true(workdir, ua):
    """RFC 2617 §3.2.1: right credentials on an expired nonce: a new challenge
    with stale=true (KO_AUTH_NONCE_EXPIRE=1 here), then the new nonce works."""
    db = SubscriberDB.create_sqlite(workdir / "auth-stale.sqlite")
    db.add("erin", "example.com", PASSWORD)
    kam = start(registrar(workdir, name="auth-stale", addr=net(156),
                          defines={"KO_DB_URL": f'"{db.url}"', "KO_AUTH_NONCE_EXPIRE": "1"}))
    try:
        [challenge] = challenges(ua.register(kam, "erin"))
        deadline = time.monotonic() + 15
        uses = 0
        while True:
            uses += 1  # a growing nonce-count, as a UA reusing a nonce sends it
            line = authorization(challenge, "REGISTER", "sip:example.com", "erin", PASSWORD, nc=uses)
            answer = ua.register(kam, "erin", auth=line)
            if status(answer) == 401:
                break
            assert status(answer) == 200 and time.monotonic() < deadline, answer
            time.sleep(0.2)  # polling the nonce's expiry: time itself is the subject here
        [fresh] = challenges(answer)
        assert fresh.stale and fresh.nonce != challenge.nonce
        line = authorization(fresh, "REGISTER", "sip:example.com", "erin", PASSWORD)
        assert status(ua.register(kam, "erin", auth=line)) == 200
    finally:
        stop(kam)


def test_two_registrars_sharing_one_postgresql_verify_each_others_nonces(workdir, postgres, ua):
    """A farm: one subscriber table, one KO_AUTH_SECRET: the 401 of reg1 is
    answered to reg2, which verifies it (every worker, every registrar)."""
    db = SubscriberDB.for_postgres(postgres)
    if not any(r.username == "frank" for r in db.rows()):
        db.add("frank", "example.com", PASSWORD)
    defines = {"KO_DB_URL": f'"{db.url}"', "KO_AUTH_SECRET": f'"{SECRET}"', "WITH_AUTH_CHECKS": ""}
    reg1 = start(registrar(workdir, name="auth-pg1", addr=net(157), defines=defines))
    reg2 = start(registrar(workdir, name="auth-pg2", addr=net(158), defines=defines))
    try:
        assert status(ua.signed_register(reg1, "frank", PASSWORD, verifier=reg2)) == 200
        assert [b["Address"] for b in reg2.bindings("frank")] == [f"sip:frank@{ua.ip}:{ua.port}"]
    finally:
        stop(reg1)
        stop(reg2)


def server_time(postgres: Postgres) -> str:
    return postgres.sql("SELECT now()").strip()


def wait_all_connected(kam: Kamailio, postgres: Postgres, since: str, timeout: float = 15.0) -> None:
    """Until every child of ``kam`` holds its database connection (each opens
    one in its child_init, all but the main process; ``since``: the server's
    clock before ``kam`` started, so older registrars' connections do not
    count): a child still starting when the database goes down would stop
    Kamailio, which is not this test."""
    deadline = time.monotonic() + timeout
    while True:
        wanted = len(kam.rpc("core.psx")) - 1
        held = int(postgres.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'kamailio' "
                                f"AND backend_start >= '{since}'::timestamptz").strip() or 0)
        if held >= wanted:
            return
        assert time.monotonic() < deadline, f"{kam.name}: {held} of {wanted} database connections"
        time.sleep(0.05)


def test_database_down_is_500_never_200_and_service_comes_back(workdir, postgres, ua):
    """A subscriber database that does not answer: 500 with a log line, no
    binding; when it is back, the same REGISTER succeeds without a restart."""
    db = SubscriberDB.for_postgres(postgres)
    if not any(r.username == "grace" for r in db.rows()):
        db.add("grace", "example.com", PASSWORD)
    since = server_time(postgres)
    kam = start(registrar(workdir, name="auth-pgdown", addr=net(159),
                          defines={"KO_DB_URL": f'"{db.url}"', "KO_AUTH_SECRET": f'"{SECRET}"'}))
    try:
        wait_all_connected(kam, postgres, since)
        [challenge] = challenges(ua.register(kam, "grace"))
        postgres.kill()
        line = authorization(challenge, "REGISTER", "sip:example.com", "grace", PASSWORD)
        answer = ua.register(kam, "grace", auth=line)
        assert answer.startswith("SIP/2.0 500 Server Internal Error"), answer
        assert kam.bindings("grace") == []
        assert "authentication could not be checked" in kam.new_log()
        postgres.restart()
        deadline = time.monotonic() + 20
        while status(answer := ua.signed_register(kam, "grace", PASSWORD)) != 200:
            assert time.monotonic() < deadline, f"no recovery: {answer.splitlines()[0]}"
            time.sleep(0.2)
        assert len(kam.bindings("grace")) == 1
    finally:
        stop(kam)


def test_noauth_switch_is_for_labs_and_says_so(workdir, ua):
    kam = start(registrar(workdir, name="auth-off", addr=net(160), defines={"WITH_NOAUTH": ""}))
    try:
        assert status(ua.register(kam, "anyone")) == 200
        assert "AUTHENTICATION IS OFF (WITH_NOAUTH)" in kam.log()
    finally:
        stop(kam)


# ----- calls: 407 at the home proxy, none from the core ------------------------

def test_call_from_a_device_is_challenged_407_then_answered(topology, workdir, local_port, callees):
    """RFC 3261 §22.3: the home proxy challenges a device's INVITE (407, realm of
    the From domain); the caller's retry with credentials reaches the callee."""
    callee = start_callee(topology["edge1"], workdir, local_port, "auth-callee", ua_ip=net(161))
    callees.append(callee)
    wait_bindings(topology["registrar"], "auth-callee", [callee])
    answered = call(topology["edge2"], workdir, local_port + 1, "auth-callee", ua_ip=net(162), scenario="uac.xml")
    assert answered.value("who") == "auth-callee" and answered.value("bye") == "200"
    assert "SIP/2.0 407 Proxy Authentication Required" in answered.messages
    assert "Proxy-Authenticate: Digest realm=\"example.com\"" in answered.messages


def _headers(message: str, name: str) -> list[str]:
    values = []
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values += [v.strip() for v in value.split(",")] if name.lower() == "record-route" else [value.strip()]
    return values


def test_calls_from_a_trusted_core_peer_are_not_challenged(workdir, local_port, callees):
    """auth.trusted_peers (a gateway in the core): its INVITE to a registered user
    is not challenged at the home proxy and reaches the device through its edge;
    the dialog's ACK and BYE follow the Record-Route (no challenge either)."""
    import yaml

    from topology import edge, ko_yaml

    peer = net(165)
    data = yaml.safe_load(ko_yaml())
    data["auth"]["trusted_peers"] = [peer]
    reg = registrar(workdir, name="auth-peer-reg", addr=net(166))
    reg.yaml_text = yaml.safe_dump(data)
    start(reg)
    kam = start(edge(workdir, "auth-peer-edge", net(167), reg.uri))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        user = "auth-peer-callee"
        callee = start_callee(kam, workdir, local_port, user, ua_ip=net(168))
        callees.append(callee)
        wait_bindings(reg, user, [callee])
        sock.bind((peer, 0))
        sock.settimeout(8)
        ip, port = sock.getsockname()

        def request(method: str, ruri: str, cseq: int, to: str, routes: list[str], branch: str) -> str:
            route = "".join(f"Route: {r}\r\n" for r in routes)
            return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};rport;branch=z9hG4bK-{branch}\r\n"
                    f"{route}Max-Forwards: 70\r\nFrom: <sip:gw@pstn.example.com>;tag=gw1\r\nTo: {to}\r\n"
                    f"Call-ID: peer-{port}@{ip}\r\nCSeq: {cseq} {method}\r\nContact: <sip:gw@{ip}:{port}>\r\n"
                    "Content-Length: 0\r\n\r\n")

        def final() -> str:
            while True:
                data = sock.recv(65535).decode(errors="replace")
                if data.startswith("SIP/2.0 ") and data[8] != "1":
                    return data

        sock.sendto(request("INVITE", f"sip:{user}@example.com", 1, f"<sip:{user}@example.com>", [],
                            "peer-inv").encode(), (reg.addr, reg.port))
        answer = final()
        assert answer.startswith("SIP/2.0 200 "), answer.splitlines()[0]
        to = _headers(answer, "To")[0]
        target = _headers(answer, "Contact")[0].strip("<>").split(">")[0]
        routes = list(reversed(_headers(answer, "Record-Route")))
        first_hop = parse_name_addr(routes[0]).sip_uri
        hop = (first_hop.host, first_hop.port or 5060)
        sock.sendto(request("ACK", target, 1, to, routes, "peer-ack").encode(), hop)
        sock.sendto(request("BYE", target, 2, to, routes, "peer-bye").encode(), hop)
        assert final().startswith("SIP/2.0 200 ")
        log = reg.log()
        assert f"challenging INVITE from {peer}" not in log and "challenging BYE" not in log
        assert f"challenging REGISTER from {kam.addr}" in log  # the device itself was asked
    finally:
        sock.close()
        stop(kam)
        stop(reg)


def test_device_registration_through_the_edge_with_credentials(topology, workdir, local_port, callees):
    """The edge passes Authorization through; the registrar's 401 reaches the
    device over its flow and the signed REGISTER is stored with its Path."""
    callee = start_callee(topology["edge1"], workdir, local_port, "auth-via-edge", ua_ip=net(164),
                          cparams=f';+sip.instance="<{instance(local_port)}>";reg-id=1')
    callees.append(callee)
    [binding] = wait_bindings(topology["registrar"], "auth-via-edge", [callee])
    assert binding["Path"]
