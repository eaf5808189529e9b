"""No open relay (RFC 3261 §16.3 local policy, RFC 5626 §5.3.1, RFC 3327 §5.3), table-driven."""

import pytest

from outbound.decisions import Reply
from outbound.relay import (
    Onward,
    ToHome,
    dialog_seal,
    edge_step,
    farm_dialog_refusal,
    foreign_route_refusal,
    next_hop_refusal,
    path_refusal,
    replication_refusal,
    seal_valid,
    single_step,
    stray_reply_refusal,
)
from outbound.routing import LooseRoute, Outgoing, ToFlow
from outbound.tokens import Flow

FLOW = Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 12)
TO_FLOW = ToFlow(FLOW, "token", record_route=False)
OUTGOING = Outgoing(FLOW)
LOOSE = LooseRoute("no Route header")
FORGED = Reply(403, "Forbidden", "forged flow token")
KEY = bytes(range(32))
OLD_KEY = bytes(range(1, 33))


def code(step) -> int | None:
    return step.code if isinstance(step, Reply) else None


@pytest.mark.parametrize(("decision", "from_farm", "in_dialog", "vias", "expected"), [
    # a forged token is 403 from anyone
    (FORGED, True, False, 2, FORGED),
    (FORGED, False, True, 1, FORGED),
    # the farm sends to device flows and onward along its Route set
    (TO_FLOW, True, False, 2, TO_FLOW),
    (TO_FLOW, True, True, 2, TO_FLOW),
    (LOOSE, True, False, 2, Onward(farm_only=False)),
    (LOOSE, True, True, 2, Onward(farm_only=False)),
    (LOOSE, True, False, 1, ToHome()),
    # devices: initial requests go home whatever their Vias and Routes say
    (LOOSE, False, False, 1, ToHome()),
    (LOOSE, False, False, 2, ToHome()),
    (OUTGOING, False, False, 1, ToHome()),
    (OUTGOING, False, False, 3, ToHome()),
    # devices inside a dialog: onward, toward the farm only
    (LOOSE, False, True, 1, Onward(farm_only=True)),
    (OUTGOING, False, True, 1, Onward(farm_only=True)),
])
def test_edge_forwards_device_requests_only_toward_the_farm(decision, from_farm, in_dialog, vias, expected):
    """RFC 3261 §16.3: local policy; the farm is known by the source address, not the Vias."""
    assert edge_step(decision, from_farm=from_farm, in_dialog=in_dialog, first_hop=vias == 1) == expected


@pytest.mark.parametrize("in_dialog", [False, True])
@pytest.mark.parametrize("vias", [1, 2])
def test_token_of_another_flow_from_a_device_is_refused_403(in_dialog, vias):
    """RFC 5626 §5.3.1: only the farm sends requests *to* a flow; a device that
    names another flow's token (replayed from a Path or Record-Route) gets 403."""
    step = edge_step(TO_FLOW, from_farm=False, in_dialog=in_dialog, first_hop=vias == 1)
    assert code(step) == 403 and "outside the farm" in step.log


@pytest.mark.parametrize(("host", "is_ip", "in_farm", "refused"), [
    ("192.0.2.50", True, True, False),
    ("192.0.2.99", True, False, True),
    ("registrar.example.com", False, False, False),
    ("REGISTRAR.example.com.", False, False, False),
    ("evil.example.net", False, False, True),
])
def test_device_in_dialog_next_hop_must_be_the_farm(host, is_ip, in_farm, refused):
    """A name the device chose is never resolved: only the farm's own names pass."""
    refusal = next_hop_refusal(host, host_is_ip=is_ip, ip_in_farm=in_farm,
                               farm_names=frozenset({"registrar.example.com"}))
    assert (code(refusal) == 403) is refused


@pytest.mark.parametrize(("top", "source", "addresses", "trusted", "refused"), [
    (None, "198.51.100.7", (), None, False),  # no Path: nothing to trust
    ("192.0.2.10", "192.0.2.10", ("192.0.2.10",), None, False),  # the edge named itself
    ("192.0.2.10", "198.51.100.7", ("192.0.2.10",), None, True),  # a device wrote the edge's Path
    ("edge.example.com", "192.0.2.11", ("192.0.2.10", "192.0.2.11"), None, False),
    ("edge.example.com", "198.51.100.7", ("192.0.2.10",), None, True),
    ("192.0.2.10", "192.0.2.10", (), False, True),  # trusted_edges configured and not listed
    ("192.0.2.10", "198.51.100.7", (), True, False),  # listed: trusted whatever Path says
])
def test_registrar_stores_path_only_as_a_trusted_edge_wrote_it(top, source, addresses, trusted, refused):
    """RFC 3327 §5.3 / RFC 5626 §6: a Path is a trusted edge's word, never a device's."""
    refusal = path_refusal(top, source_ip=source, host_addresses=addresses, trusted_source=trusted)
    assert (code(refusal) == 403) is refused


@pytest.mark.parametrize(("decision", "peer", "in_dialog", "sealed", "expected"), [
    (LOOSE, False, False, False, ToHome()),
    (OUTGOING, False, False, False, ToHome()),
    (TO_FLOW, True, False, False, TO_FLOW),
    (TO_FLOW, False, True, True, TO_FLOW),
    (LOOSE, False, True, True, Onward(farm_only=False)),
    (OUTGOING, False, True, True, Onward(farm_only=False)),
    (LOOSE, True, True, False, Onward(farm_only=False)),
    (FORGED, False, True, True, FORGED),
])
def test_single_server_relays_its_own_dialogs(decision, peer, in_dialog, sealed, expected):
    assert single_step(decision, from_peer=peer, in_dialog=in_dialog, sealed=sealed) == expected


@pytest.mark.parametrize(("decision", "in_dialog"), [(TO_FLOW, False), (LOOSE, True), (TO_FLOW, True)])
def test_single_server_refuses_unsealed_dialogs_and_device_tokens(decision, in_dialog):
    assert code(single_step(decision, from_peer=False, in_dialog=in_dialog, sealed=False)) == 403


def test_dialog_seal_verifies_for_its_call_id_only_and_across_rotation():
    seal = dialog_seal(OLD_KEY, "a84b4c76e66710@pc33.example.com")
    assert seal_valid([KEY, OLD_KEY], "a84b4c76e66710@pc33.example.com", seal)
    assert not seal_valid([KEY, OLD_KEY], "another-call@pc33.example.com", seal)
    assert not seal_valid([KEY], "a84b4c76e66710@pc33.example.com", seal)
    assert not seal_valid([KEY], "x", None)
    assert not seal_valid([KEY], "x", seal[:-1])
    assert seal.isascii() and all(c.isalnum() or c in "-_" for c in seal)  # URI-safe as a parameter value


@pytest.mark.parametrize(("via", "refused"), [
    ("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1", False),
    ("SIP/2.0/UDP [2001:db8::7]:5060;branch=z9hG4bK1", False),
    ("SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1;received=192.0.2.7", False),  # received wins
    ("SIP/2.0/UDP 255.255.255.255;branch=z9hG4bKbcast", True),  # RFC 4475 §3.3.10
    ("SIP/2.0/UDP 224.0.1.75:5060;branch=z9hG4bK1", True),  # multicast
    ("SIP/2.0/UDP 0.0.0.0:5060;branch=z9hG4bK1", True),
    ("SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bK1", True),  # only Kamailio's resolver would find it
    ("SIP/2.0/UDP", True),
    (None, True),
])
def test_a_stray_reply_goes_on_only_toward_a_unicast_address(via, refused):
    """RFC 3261 §16.11 stateless forwarding of a reply along its next Via, never to
    a broadcast, multicast or unspecified address, never after a DNS lookup."""
    assert (stray_reply_refusal(via) is not None) is refused


@pytest.mark.parametrize(("foreign", "next_is_farm", "refused"), [
    (0, False, False),  # only our own entries: nothing goes on
    (1, True, False),   # the edge: the rest of the set starts at the farm
    (2, True, False),
    (1, False, True),   # toward another hop: no open relay
    (3, False, True),
])
def test_a_preloaded_route_set_goes_on_only_toward_the_farm(foreign, next_is_farm, refused):
    """RFC 3261 §16.4: only our own Route entries come off (issue 13 item 9);
    the relay policy refuses a set that leads past the farm (403, never dropped)."""
    refusal = foreign_route_refusal(foreign, next_is_farm=next_is_farm)

    assert (refusal is not None) is refused
    if refused:
        assert refusal.code == 403


@pytest.mark.parametrize(("has_routes", "sealed", "refused"), [
    (True, True, False), (True, False, True), (False, False, False),
])
def test_the_farm_relays_a_dialog_only_along_its_sealed_record_route(has_routes, sealed, refused):
    """No open relay through the farm: an in-dialog request with a Route set goes
    on only when one of our leading entries is sealed for its Call-ID."""
    refusal = farm_dialog_refusal(has_routes=has_routes, sealed=sealed, top_route="<sip:sink.example;lr>")

    assert (refusal is not None) is refused
    if refused:
        assert refusal.code == 403 and "sink.example" in refusal.log


def test_kdmq_only_from_a_registrar_of_the_farm():
    """KDMQ writes bindings straight into usrloc: anyone else's gets 403."""
    assert replication_refusal("127.0.0.22", from_farm=True) is None
    refusal = replication_refusal("198.18.9.9", from_farm=False)
    assert refusal is not None and refusal.code == 403 and "198.18.9.9" in refusal.log
