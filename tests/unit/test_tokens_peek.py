"""peek_flow: a token's fields read without its MAC (display only, tools/ko-view)."""

import pytest

from outbound.tokens import Flow, FlowTokenCodec, peek_flow

KEY = b"peek-key-0123456789abcdef-32-bytes"
OTHER_KEY = b"someone-elses-key-0123456-32bytes"
FLOWS = [
    Flow("udp", "192.0.2.10", 5060, "198.51.100.7", 40000, 0),
    Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 1234),
    Flow("ws", "192.0.2.10", 8080, "198.51.100.8", 50000, 7),
    Flow("tls", "2001:db8::10", 5061, "2001:db8:ffff::7", 50001, 4294967295),
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.transport)
def test_peek_reads_the_flow_a_valid_token_names(flow):
    token = FlowTokenCodec([KEY]).encode(flow)
    assert peek_flow(token) == flow == FlowTokenCodec([KEY]).flow_of(token)


def test_peek_does_not_check_the_mac_so_a_foreign_token_still_peeks():
    """Unverified: a token made with a key we do not have reads the same; the
    codec with our key calls it forged. This is why peek_flow is display only."""
    token = FlowTokenCodec([OTHER_KEY]).encode(FLOWS[1])
    assert peek_flow(token) == FLOWS[1]
    assert FlowTokenCodec([KEY]).flow_of(token) is None


@pytest.mark.parametrize("text", [None, "", "abc", "A" * 35, "A" * 37, "!" * 36, "A" * 36, "sip:x@y"])
def test_peek_of_anything_but_a_token_is_none(text):
    """Wrong length or alphabet, or a header byte of no known transport/version."""
    assert peek_flow(text) is None
