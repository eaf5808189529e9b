"""Flow tokens (RFC 5626 §5.2): round trip, tamper evidence, key rotation, input checks."""

import base64
import re
import secrets

import pytest

from outbound.errors import KeyFormatError, TokenError
from outbound.tokens import MAKE_KEY_COMMAND, MIN_KEY_BYTES, Flow, FlowTokenCodec, Verdict, parse_key

# codec keys (raw bytes, MIN_KEY_BYTES or more); parse_key's own checks are tested below
OLD_KEY = b"old-key-0123456789abcdef-32-bytes"
NEW_KEY = b"new-key-0123456789abcdef-32-bytes"
OTHER_KEY = b"someone-elses-key-0123456-32bytes"
# 32 random bytes (secrets.token_bytes(32), made once)
RANDOM_32 = bytes.fromhex("54cfe17e1df03de20418161f8b2c595be1f35522dc16439053c72dcd7e24914b")

UDP_V4 = Flow("udp", "192.0.2.10", 5060, "198.51.100.7", 40000, 0)
TCP_V4 = Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 1234)
TLS_V6 = Flow("tls", "2001:db8::10", 5061, "2001:db8:ffff::7", 50001, 4294967295)

# RFC 3261 §25.1: these are "unreserved" in a user part, so the token needs no escaping.
URI_USER_SAFE = re.compile(r"[A-Za-z0-9_-]+")


@pytest.fixture
def codec() -> FlowTokenCodec:
    return FlowTokenCodec([OLD_KEY])


def flip_bit(token: str, bit: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[bit // 8] ^= 1 << (bit % 8)
    return base64.urlsafe_b64encode(bytes(raw)).decode("ascii")


@pytest.mark.parametrize(
    ("flow", "length"),
    [(UDP_V4, 36), (TCP_V4, 36), (TLS_V6, 68)],
    ids=["udp-v4-no-conn-id", "tcp-v4-conn-id", "tls-v6"],
)
def test_token_round_trips_to_the_same_flow(codec, flow, length):
    token = codec.encode(flow)

    assert len(token) == length
    assert URI_USER_SAFE.fullmatch(token)
    decoded = codec.decode(token)
    assert decoded.verdict is Verdict.VALID
    assert decoded.flow == flow


def test_transport_name_is_case_insensitive_and_decodes_lower_case(codec):
    token = codec.encode(Flow("TCP", "192.0.2.10", 5060, "198.51.100.7", 49152, 7))

    assert codec.decode(token).flow == Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 7)


def test_bracketed_ipv6_addresses_are_accepted(codec):
    token = codec.encode(Flow("tls", "[2001:db8::10]", 5061, "[2001:db8:ffff::7]", 50001, 1))

    assert codec.decode(token).flow == Flow("tls", "2001:db8::10", 5061, "2001:db8:ffff::7", 50001, 1)


@pytest.mark.parametrize("flow", [UDP_V4, TLS_V6], ids=["v4", "v6"])
def test_every_single_bit_flip_is_forged(codec, flow):
    """RFC 5626 §5.2: the edge must detect any tampering with the token."""
    token = codec.encode(flow)
    bits = len(base64.urlsafe_b64decode(token)) * 8

    verdicts = {bit: codec.decode(flip_bit(token, bit)).verdict for bit in range(bits)}

    assert bits in (27 * 8, 51 * 8)
    assert {bit: v for bit, v in verdicts.items() if v is not Verdict.FORGED} == {}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A" * 35,
        "A" * 37,
        "A" * 1100,
        "A" * 35 + "+",
        "A" * 35 + "/",
        "A" * 35 + "=",
        "A" * 35 + "@",
        "A" * 35 + ";",
        "A" * 67 + "=",
    ],
    ids=["empty", "35-chars", "37-chars", "1k-chars", "plus", "slash", "padding", "at", "semicolon", "v6-padding"],
)
def test_text_that_cannot_be_a_token_is_not_a_token(codec, text):
    decoded = codec.decode(text)

    assert decoded.verdict is Verdict.NOT_A_TOKEN
    assert decoded.flow is None


def test_standard_base64_alphabet_of_a_real_token_is_not_a_token(codec):
    token = codec.encode(TCP_V4)
    standard = token.replace("-", "+").replace("_", "/")
    if standard == token:  # make sure the case exercises the alphabet check
        standard = "+" + token[1:]

    assert codec.decode(standard).verdict is Verdict.NOT_A_TOKEN


def test_old_key_tokens_still_verify_after_rotation():
    token = FlowTokenCodec([OLD_KEY]).encode(TCP_V4)

    decoded = FlowTokenCodec([NEW_KEY, OLD_KEY]).decode(token)

    assert decoded.verdict is Verdict.VALID
    assert decoded.flow == TCP_V4


def test_first_key_signs_after_rotation():
    token = FlowTokenCodec([NEW_KEY, OLD_KEY]).encode(TCP_V4)

    assert FlowTokenCodec([NEW_KEY]).decode(token).verdict is Verdict.VALID
    assert FlowTokenCodec([OLD_KEY]).decode(token).verdict is Verdict.FORGED


def test_token_from_another_key_is_forged(codec):
    token = FlowTokenCodec([OTHER_KEY]).encode(UDP_V4)

    decoded = codec.decode(token)

    assert decoded.verdict is Verdict.FORGED
    assert decoded.flow is None


def test_reconnect_from_same_addresses_is_a_new_flow(codec):
    """RFC 5626 §3.4/§5.2: a token must not match a later connection from the same address."""
    first = Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 100)
    second = Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 49152, 101)

    first_token, second_token = codec.encode(first), codec.encode(second)

    assert first_token != second_token
    assert codec.decode(first_token).flow.conn_id == 100
    assert codec.decode(second_token).flow.conn_id == 101


def test_encoding_is_deterministic(codec):
    assert codec.encode(TLS_V6) == codec.encode(TLS_V6)


@pytest.mark.parametrize(
    "flow",
    [
        Flow("carrier-pigeon", "192.0.2.10", 5060, "198.51.100.7", 40000),
        Flow("udp", "192.0.2.300", 5060, "198.51.100.7", 40000),
        Flow("udp", "192.0.2.10", 5060, "edge.example.com", 40000),
        Flow("udp", "192.0.2.10", 0, "198.51.100.7", 40000),
        Flow("udp", "192.0.2.10", 5060, "198.51.100.7", 70000),
        Flow("udp", "192.0.2.10", 5060, "2001:db8::7", 40000),
        Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 40000, -1),
        Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 40000, 2**32),
    ],
    ids=["unknown-transport", "bad-ip", "hostname", "port-0", "port-70000", "mixed-families",
         "negative-conn-id", "conn-id-too-big"],
)
def test_unencodable_flow_raises_token_error(codec, flow):
    with pytest.raises(TokenError):
        codec.encode(flow)


@pytest.mark.parametrize(
    "keys",
    [[], [b"x" * (MIN_KEY_BYTES - 1)], [NEW_KEY, b"short"]],
    ids=["no-key", "31-byte-key", "one-short-key-among-good"],
)
def test_codec_refuses_missing_or_short_keys(keys):
    with pytest.raises(ValueError):
        FlowTokenCodec(keys)


def test_thirty_two_byte_key_is_enough():
    codec = FlowTokenCodec([RANDOM_32])

    assert codec.decode(codec.encode(UDP_V4)).verdict is Verdict.VALID


@pytest.mark.parametrize(
    "text",
    [
        "hex:" + RANDOM_32.hex(),
        "hex:" + RANDOM_32.hex().upper(),
        "  hex:" + RANDOM_32.hex() + " \n",
        "base64:" + base64.b64encode(RANDOM_32).decode(),
    ],
    ids=["hex", "hex-upper-case", "surrounding-space", "base64"],
)
def test_parse_key_formats(text):
    assert parse_key(text) == RANDOM_32


def test_longer_keys_are_accepted():
    long_key = RANDOM_32 + bytes(reversed(RANDOM_32))

    assert parse_key("base64:" + base64.b64encode(long_key).decode()) == long_key


@pytest.mark.parametrize("attempt", range(20))
def test_keys_made_the_documented_way_parse(attempt):
    """docs/operations.md: MAKE_KEY_COMMAND prints "hex:" + secrets.token_hex(32)."""
    assert 'print("hex:" + secrets.token_hex(32))' in MAKE_KEY_COMMAND
    text = "hex:" + secrets.token_hex(32) + "\n"

    assert len(parse_key(text)) == 32


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("correct horse battery staple and then some more words", "passphrase"),
        ("hexadecimal-looking passphrase", "passphrase"),
        ("sha256:" + RANDOM_32.hex(), "passphrase"),
        (RANDOM_32.hex(), "passphrase"),
        ("hex:zz" + RANDOM_32.hex(), "not hex"),
        ("base64:not base64!", "not base64"),
        ("hex:" + RANDOM_32[:31].hex(), "31 bytes"),
        ("base64:" + base64.b64encode(b"sixteen byte key").decode(), "16 bytes"),
        ("hex:" + "5eed" * 16, "only 2 different byte values"),
        ("hex:" + "00" * 32, "only 1 different byte values"),
        ("hex:" + "0123456789abcdef" * 4, "only 8 different byte values"),
    ],
    ids=["passphrase", "passphrase-without-prefix", "unknown-prefix", "hex-without-prefix", "bad-hex",
         "bad-base64", "31-bytes", "16-bytes", "repeated-pattern", "all-zero", "short-cycle"],
)
def test_parse_key_refuses_what_is_not_32_random_bytes(text, problem):
    with pytest.raises(KeyFormatError) as info:
        parse_key(text)

    assert problem in str(info.value)


def test_refusal_never_quotes_the_key():
    secret = "my private passphrase nobody may see in a log"

    with pytest.raises(KeyFormatError) as info:
        parse_key(secret)

    assert "private" not in str(info.value) and "passphrase nobody" not in str(info.value)
    assert MAKE_KEY_COMMAND in str(info.value)


def test_flow_names_its_ends_as_kamailio_wants_them():
    flow = Flow("tcp", "2001:db8::10", 5060, "2001:db8::7", 49152, 5)

    assert flow.destination == "sip:[2001:db8::7]:49152;transport=tcp"
    assert flow.socket == "tcp:[2001:db8::10]:5060"
    assert flow.local_uri() == "sip:[2001:db8::10]:5060;transport=tcp"
    assert flow.local_uri("TOKEN") == "sip:TOKEN@[2001:db8::10]:5060;transport=tcp"


def test_flow_key_is_one_spelling_of_an_ipv6_flow():
    """Kamailio prints 2001:DB8:0:0:0:0:0:1; a decoded token says 2001:db8::1:
    one flow, one key (checklist A4.5/D9: closing it finds its bindings)."""
    as_kamailio_says = Flow("TCP", "2001:DB8:0:0:0:0:0:10", 5060, "2001:DB8:0:0:0:0:0:7", 49152)
    as_token_says = Flow("tcp", "2001:db8::10", 5060, "2001:db8::7", 49152)

    assert as_kamailio_says.key == as_token_says.key == "tcp:2001:db8::10:5060>2001:db8::7:49152"
    assert as_kamailio_says.canonical() == as_token_says


def count_macs(monkeypatch) -> list[int]:
    """Counts the HMACs the codec computes (outbound.tokens._mac)."""
    import outbound.tokens as tokens

    calls = [0]
    real = tokens._mac

    def counted(key: bytes, body: bytes) -> bytes:
        calls[0] += 1
        return real(key, body)

    monkeypatch.setattr(tokens, "_mac", counted)
    return calls


def test_a_flow_is_signed_once_and_a_valid_token_checked_once(codec, monkeypatch):
    """A device refreshing over one flow costs one HMAC per process, not one per REGISTER."""
    macs = count_macs(monkeypatch)
    token = codec.encode(TCP_V4)
    assert codec.encode(TCP_V4) == token
    assert macs[0] == 1
    assert codec.decode(token).flow == TCP_V4
    assert codec.decode(token).flow == TCP_V4
    assert macs[0] == 2


def test_forged_tokens_are_checked_every_time(codec, monkeypatch):
    """Only valid tokens are remembered: a forged one is refused on every request."""
    forged = flip_bit(codec.encode(UDP_V4), 8 * 20)
    macs = count_macs(monkeypatch)
    assert codec.decode(forged).verdict is Verdict.FORGED
    assert codec.decode(forged).verdict is Verdict.FORGED
    assert macs[0] == 2


def test_remembered_tokens_are_bounded(codec, monkeypatch):
    import outbound.tokens as tokens

    monkeypatch.setattr(tokens, "MEMO_MAX", 4)
    flows = [Flow("tcp", "192.0.2.10", 5060, "198.51.100.7", 40000 + i, i + 1) for i in range(10)]
    tokens_made = [codec.encode(f) for f in flows]
    macs = count_macs(monkeypatch)
    # the first ones were let go: signed again, to the same token
    assert codec.encode(flows[0]) == tokens_made[0]
    assert macs[0] == 1
    assert [codec.decode(t).flow for t in tokens_made] == flows
