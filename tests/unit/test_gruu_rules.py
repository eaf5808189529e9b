"""GRUUs (RFC 5627), table-driven, each test named after the rule it shows.

The codec and the rules are the pure core's (kemi/outbound/gruu.py); the fork
transaction toward a GRUU is driven the way adapter/home_proxy.py drives it,
its questions answered by a scripted world.
"""

from __future__ import annotations

import base64
import itertools
import re

import pytest
import test_forking

from outbound import gruu
from outbound.bindings import Binding
from outbound.decisions import Reply
from outbound.forking import AddBranch, Fork, ForkState, Outcome, Recall
from outbound.sipmsg import parse_name_addr, split_values

KEY = b"gruu-key-0123456789abcdef-32bytes"
NEW_KEY = b"gruu-new-0123456789abcdef-32bytes"
OTHER_KEY = b"someone-elses-key-0123456-32bytes"
AOR = "sip:alice@example.com"
PHONE = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
LAPTOP = "urn:uuid:11111111-7dec-11d0-a765-00a0c91e6bf6"
NOW = 1_000_000
URI_USER_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def nonces():
    """Distinct nonces, as secrets.token_bytes would give."""
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def flow(ruid: str, instance: str = PHONE, reg_id: int = 1, *, callid: str = "", expires: int = NOW + 600,
         modified: int = 0) -> Binding:
    return Binding(ruid, f"sip:{ruid}@198.51.100.7", instance=instance, reg_id=reg_id, outbound=True,
                   callid=callid or f"cid-{ruid}", expires=expires, modified=modified)


def temp_user(codec: gruu.TempGruuCodec, *callids: str, instance: str = PHONE, nonce: bytes = b"\x01" * 12) -> str:
    user = codec.make(AOR, instance, [gruu.call_id_digest(c) for c in callids], nonce)
    assert user is not None
    return user


# ----- §5.4: how GRUUs are made ----------------------------------------------------


def test_5_4_public_gruu_is_the_aor_with_gr_set_to_the_instance():
    assert gruu.public_gruu(AOR, PHONE) == f"{AOR};gr={PHONE}"
    assert parse_name_addr(f"<{gruu.public_gruu(AOR, PHONE)}>").sip_uri.params["gr"] == PHONE


@pytest.mark.parametrize(("instance", "usable"), [
    (PHONE, True),
    ("urn:foo:bar.baz+1", True),
    ("not-a-urn", False),
    ('urn:uuid:"quoted"', False),
    ("urn:x:semi;colon", False),
    ("urn:x:" + "a" * 300, False),
])
def test_5_4_only_an_instance_urn_that_is_a_valid_gr_value_gets_gruus(instance, usable):
    assert (gruu.gruu_instance(instance) is not None) is usable


def test_5_4_temporary_gruu_round_trips_to_its_aor_instance_and_call_ids():
    codec = gruu.TempGruuCodec([KEY])
    user = temp_user(codec, "cid-1", "cid-2")
    assert user.startswith(gruu.TEMP_PREFIX) and URI_USER_SAFE.fullmatch(user)
    found = codec.open(user)
    assert found == gruu.GruuTarget(AOR, PHONE, temporary=True,
                                    call_ids=frozenset({gruu.call_id_digest("cid-1"), gruu.call_id_digest("cid-2")}))


def test_5_4_temporary_gruus_of_one_aor_and_instance_cannot_be_linked():
    """Two temporary GRUUs of the same AOR and instance share nothing a reader
    could compare: not the AOR or instance in clear, not a common prefix past
    the version byte (a fresh nonce encrypts each)."""
    codec = gruu.TempGruuCodec([KEY])
    fresh = nonces()
    first, second = (codec.make(AOR, PHONE, [gruu.call_id_digest("c")], fresh(12)) for _ in range(2))
    assert first and second and first != second
    raw = [base64.urlsafe_b64decode(u[len(gruu.TEMP_PREFIX):] + "==") for u in (first, second)]
    assert raw[0][0] == raw[1][0] == gruu.VERSION
    ciphertexts = [r[1 + gruu.NONCE_BYTES:-gruu.MAC_BYTES] for r in raw]
    assert len(ciphertexts[0]) == len(ciphertexts[1])
    assert sum(a == b for a, b in zip(*ciphertexts, strict=True)) < len(ciphertexts[0]) // 4
    for user in (first, second):
        assert "alice" not in user and "f81d4fae" not in user


@pytest.mark.parametrize("change", ["flip-one-char", "truncate", "extend", "other-prefix", "not-base64", "empty"])
def test_5_4_a_temporary_gruu_changed_in_any_way_does_not_open(change):
    codec = gruu.TempGruuCodec([KEY])
    user = temp_user(codec, "cid-1")
    body = user[len(gruu.TEMP_PREFIX):]
    changed = {
        "flip-one-char": gruu.TEMP_PREFIX + body[:20] + ("A" if body[20] != "A" else "B") + body[21:],
        "truncate": user[:-3],
        "extend": user + "AAAA",
        "other-prefix": "tgruX." + body,
        "not-base64": user[:-2] + "!!",
        "empty": gruu.TEMP_PREFIX,
    }[change]
    assert codec.open(changed) is None


def test_5_4_keys_rotate_the_first_makes_every_one_opens_and_other_keys_do_not():
    old = temp_user(gruu.TempGruuCodec([KEY]), "cid-1")
    rotated = gruu.TempGruuCodec([NEW_KEY, KEY])
    assert rotated.open(old) is not None
    assert gruu.TempGruuCodec([NEW_KEY]).open(temp_user(rotated, "cid-1")) is not None
    assert gruu.TempGruuCodec([OTHER_KEY]).open(old) is None


def test_5_4_an_aor_too_long_to_carry_gets_no_temporary_gruu():
    assert gruu.TempGruuCodec([KEY]).make("sip:" + "a" * 300 + "@example.com", PHONE, [], b"\x00" * 12) is None


# ----- §5.1-§5.2: the registrar's 2xx ------------------------------------------------


def answer(bindings: list[Binding], to_uri: str = AOR,
           nonce=None) -> tuple[gruu.RegisterAnswer, dict[str, dict[str, str]]]:
    result = gruu.register_answer(bindings, to_uri=to_uri, now=NOW, codec=gruu.TempGruuCodec([KEY]),
                                  nonce=nonce or nonces())
    by_uri = {}
    for value in split_values(result.contact):
        contact = parse_name_addr(value)
        by_uri[contact.uri] = {k: (v or "").strip('"') for k, v in contact.params.items()}
    return result, by_uri


@pytest.mark.parametrize("option", [frozenset({"gruu"}), frozenset({"path", "gruu", "outbound"})])
def test_4_1_a_register_saying_supported_gruu_asks_for_gruus(option):
    assert gruu.wanted(option, frozenset())
    assert gruu.wanted(frozenset(), frozenset({"gruu"}))
    assert not gruu.wanted(frozenset({"path", "outbound"}), frozenset())


def test_5_2_each_contact_with_an_instance_gets_pub_gruu_and_temp_gruu():
    result, listed = answer([flow("a", PHONE), flow("b", LAPTOP),
                             Binding("plain", "sip:plain@198.51.100.9", expires=NOW + 60)])
    phone, laptop, plain = listed["sip:a@198.51.100.7"], listed["sip:b@198.51.100.7"], listed["sip:plain@198.51.100.9"]
    assert phone["pub-gruu"] == f"{AOR};gr={PHONE}" and laptop["pub-gruu"] == f"{AOR};gr={LAPTOP}"
    temp = parse_name_addr(f"<{phone['temp-gruu']}>").sip_uri
    assert temp.host == "example.com" and "gr" in temp.params and temp.params["gr"] is None
    assert gruu.TempGruuCodec([KEY]).open(temp.user or "").instance == PHONE
    assert "pub-gruu" not in plain and "temp-gruu" not in plain
    assert result.instances == (PHONE, LAPTOP)


def test_5_2_the_contact_list_is_written_as_kamailios_registrar_writes_it():
    """RFC 3261 §10.3 step 8: every live binding with its expires; q, received,
    +sip.instance and reg-id as Kamailio's registrar prints them."""
    stored = Binding("r1", "sip:bob@198.51.100.7:5070;transport=tcp;ob", instance=PHONE, reg_id=2, q=0.5,
                     received="sip:198.51.100.7:40000;transport=tcp", expires=NOW + 90)
    result, _ = answer([stored])
    assert re.fullmatch(r'<sip:bob@198\.51\.100\.7:5070;transport=tcp;ob>;q=0\.5;expires=90;'
                        r'received="sip:198\.51\.100\.7:40000;transport=tcp";pub-gruu="[^"]+";temp-gruu="[^"]+";'
                        rf'\+sip\.instance="<{PHONE}>";reg-id=2', result.contact), result.contact


def test_5_3_an_expired_binding_is_not_listed_and_gets_no_gruu():
    result, listed = answer([flow("old", expires=NOW - 1), flow("new", LAPTOP)])
    assert list(listed) == ["sip:new@198.51.100.7"] and result.instances == (LAPTOP,)


def test_5_1_a_new_temporary_gruu_in_every_2xx_the_public_one_unchanged():
    bindings, fresh = [flow("a")], nonces()
    (_, first), (_, second) = answer(bindings, nonce=fresh), answer(bindings, nonce=fresh)
    one, two = first["sip:a@198.51.100.7"], second["sip:a@198.51.100.7"]
    assert one["pub-gruu"] == two["pub-gruu"] and one["temp-gruu"] != two["temp-gruu"]


def test_5_1_a_temporary_gruu_names_the_call_ids_of_all_the_instances_live_flows():
    """With outbound one instance has a flow (and a Call-ID) per reg-id: the
    temporary GRUU stays valid while any of them lives (RFC 5626 §4.2.1)."""
    _, listed = answer([flow("f1", reg_id=1, callid="c1", modified=2), flow("f2", reg_id=2, callid="c2", modified=1),
                        flow("gone", reg_id=3, callid="c3", expires=NOW - 5)])
    target = gruu.TempGruuCodec([KEY]).open(parse_name_addr(f"<{listed['sip:f1@198.51.100.7']['temp-gruu']}>")
                                            .sip_uri.user or "")
    assert target is not None and target.call_ids == {gruu.call_id_digest("c1"), gruu.call_id_digest("c2")}


def test_5_4_a_to_uri_with_parameters_or_a_port_makes_the_aor_without_parameters():
    assert gruu.aor_of("sip:alice@Example.COM:5070;user=phone") == "sip:alice@example.com:5070"
    assert gruu.aor_of("sip:example.com") is None
    _, listed = answer([flow("a")], to_uri="sips:alice@example.com;foo=bar")
    assert listed["sip:a@198.51.100.7"]["pub-gruu"] == f"sips:alice@example.com;gr={PHONE}"
    assert listed["sip:a@198.51.100.7"]["temp-gruu"].startswith("sips:tgruu.")


# ----- §6.1: a request to a GRUU -------------------------------------------------------


CODEC = gruu.TempGruuCodec([KEY])


@pytest.mark.parametrize(("ruri", "expected"), [
    (AOR, None),
    (f"{AOR};transport=tcp", None),
    (f"{AOR};gr={PHONE}", gruu.GruuTarget(AOR, PHONE)),
    (f"sip:alice@EXAMPLE.com;gr=<{PHONE.upper()}>", gruu.GruuTarget(AOR, PHONE)),
    (f"sip:alice@example.com;gr=urn%3Auuid%3A{PHONE[9:]}", gruu.GruuTarget(AOR, PHONE)),
    ("sip:tgruu.nothing@example.com;gr", 404),
    ("sip:example.com;gr=urn:uuid:1", 404),
    ("sip:alice@example.com;gr", 404),
    ("garbage", None),
])
def test_6_1_the_request_uri_says_which_gruu_if_any(ruri, expected):
    found = gruu.request_target(ruri, CODEC)
    if isinstance(expected, int):
        assert isinstance(found, Reply) and found.code == expected
    else:
        assert found == expected


def test_6_1_a_temporary_gruu_is_honoured_only_under_its_own_domain():
    user = temp_user(CODEC, "c1")
    assert isinstance(gruu.request_target(f"sip:{user}@example.com;gr", CODEC), gruu.GruuTarget)
    assert isinstance(gruu.request_target(f"sip:{user}@EXAMPLE.com;gr;transport=tcp", CODEC), gruu.GruuTarget)
    moved = gruu.request_target(f"sip:{user}@example.net;gr", CODEC)
    assert isinstance(moved, Reply) and moved.code == 404


PUB = gruu.GruuTarget(AOR, PHONE)


def temp(*callids: str) -> gruu.GruuTarget:
    return gruu.GruuTarget(AOR, PHONE, temporary=True, call_ids=frozenset(gruu.call_id_digest(c) for c in callids))


@pytest.mark.parametrize(("target", "bindings", "expected"), [
    pytest.param(PUB, [flow("p1"), flow("p2", reg_id=2), flow("l", LAPTOP)], ("p1", "p2"), id="pub-only-its-instance"),
    pytest.param(PUB, [flow("p1", expires=NOW - 1), flow("p2", reg_id=2)], ("p2",), id="pub-live-flows-only"),
    pytest.param(PUB, [flow("p1", expires=NOW)], 480, id="pub-only-expired-480"),
    pytest.param(PUB, [flow("l", LAPTOP)], None, id="pub-no-binding-ask-memory"),
    pytest.param(PUB, [], None, id="pub-no-aor-ask-memory"),
    pytest.param(temp("cid-p1"), [flow("p1"), flow("l", LAPTOP)], ("p1",), id="temp-its-registration"),
    pytest.param(temp("cid-p1"), [flow("p1"), flow("p2", reg_id=2)], ("p1", "p2"), id="temp-all-flows-of-instance"),
    pytest.param(temp("old"), [flow("p1")], 404, id="temp-after-new-call-id-404"),
    pytest.param(temp("cid-p1"), [flow("p1", expires=NOW - 1)], 480, id="temp-registration-expired-480"),
    pytest.param(temp("cid-p1"), [flow("l", LAPTOP)], 480, id="temp-instance-gone-480"),
    pytest.param(temp("c1", "c2"), [flow("p2", reg_id=2, callid="c2")], ("p2",), id="temp-one-flow-left"),
])
def test_6_1_a_gruu_reaches_its_instances_live_flows_else_404_or_480(target, bindings, expected):
    found = gruu.instance_flows(target, bindings, NOW)
    if isinstance(expected, int):
        assert isinstance(found, Reply) and found.code == expected
    elif expected is None:
        assert found is None
    else:
        assert tuple(b.ruid for b in found) == expected


@pytest.mark.parametrize(("remembered", "code"), [(True, 480), (False, 404)])
def test_6_1_a_public_gruu_whose_instance_is_away_is_480_if_it_was_given_out_else_404(remembered, code):
    assert gruu.unknown_instance(PUB, remembered).code == code


# ----- the fork transaction toward a GRUU (§6.1 with RFC 5626 §7) -----------------------


class World(test_forking.World):
    """test_forking's scripted usrloc and tm, with the memory of public GRUUs given out."""

    def __init__(self, bindings: list[Binding], remembered: bool = False) -> None:
        super().__init__(bindings)
        self.remembered = remembered

    def answer(self, action: object) -> object:
        if isinstance(action, Recall):
            return self.remembered
        return super().answer(action)


def event(state: str, world: World, name: str, *args: object, **kw: object) -> tuple[str, list[object]]:
    fork = Fork(ForkState.from_text(state), max_parallel=8)
    actions = world.run(getattr(fork, name)(*args, **kw))
    return fork.state.to_text(), actions


def branches(actions: list[object]) -> list[str]:
    return [a.binding.ruid for a in actions if isinstance(a, AddBranch)]


def replies(actions: list[object]) -> list[int]:
    return [a.code for a in actions if isinstance(a, Reply)]


DEVICE = [flow("p1", modified=2), flow("p2", reg_id=2, modified=1), flow("l1", LAPTOP, modified=3)]


def test_6_1_a_gruu_forks_one_branch_to_its_instance_never_to_the_other_instances():
    state, actions = event("", World(DEVICE), "lookup", AOR, only=PUB, now=NOW)
    assert branches(actions) == ["p1"]
    assert ForkState.from_text(state).instance == PHONE


def test_6_1_a_gruu_fails_over_on_430_to_its_instances_next_flow_and_no_further():
    world = World(DEVICE)
    state, _ = event("", world, "lookup", AOR, only=PUB, now=NOW)
    slot = max(ForkState.from_text(state).branches)
    state, actions = event(state, world, "branch_failed", Outcome(430, slot, replied=True))
    assert branches(actions) == ["p2"] and "p1" in world.gone
    slot = max(ForkState.from_text(state).branches)
    state, actions = event(state, world, "branch_failed", Outcome(430, slot, replied=True))
    assert branches(actions) == []
    state, actions = event(state, world, "all_failed", Outcome(430))
    assert branches(actions) == [], "the failure route forked to another instance of the AOR"
    assert replies(actions) == [480]


@pytest.mark.parametrize(("target", "remembered", "bindings", "code", "asked"), [
    (PUB, True, DEVICE[2:], 480, True),
    (PUB, False, DEVICE[2:], 404, True),
    (PUB, False, [], 404, True),
    (temp("gone"), False, DEVICE, 404, False),
    (temp("cid-p1"), False, DEVICE[2:], 480, False),
])
def test_6_1_a_gruu_without_a_live_flow_is_answered_and_nothing_is_forked(target, remembered, bindings, code, asked):
    _, actions = event("", World(bindings, remembered), "lookup", AOR, only=target, now=NOW)
    assert replies(actions) == [code] and branches(actions) == []
    assert any(isinstance(a, Recall) for a in actions) is asked


def test_the_aor_itself_still_forks_to_every_instance():
    _, actions = event("", World(DEVICE), "lookup", AOR)
    assert sorted(branches(actions)) == ["l1", "p1"]


def test_fork_state_without_an_instance_reads_as_the_whole_aor():
    """Text written before GRUUs (no "instance" key) still reads."""
    text = ForkState(aor=AOR).to_text().replace(',"instance":""', "")
    assert '"instance"' not in text and ForkState.from_text(text).aor == AOR
