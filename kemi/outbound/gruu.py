"""GRUUs of the instance bindings (RFC 5627), sans-I/O: how they are built, read and dereferenced.

A REGISTER whose Contact carries ``+sip.instance`` and that says ``Supported:
gruu`` gets two GRUUs per Contact of the 2xx that has an instance (§5.2):

* the **public GRUU** (§3.1.1, §5.4): the AOR with ``gr=<instance URN>``,
  ``sip:alice@example.com;gr=urn:uuid:f81d4fae-...``; always the same for one
  AOR and instance;
* a **temporary GRUU** (§3.1.2, §5.4): ``sip:tgruu.<opaque>@example.com;gr``,
  a new one in every 2xx. The opaque part is :class:`TempGruuCodec`'s: the AOR,
  the instance and a digest of each Call-ID the instance was registered with
  when the GRUU was made, encrypted and MACed with the registrar's keys. No
  state is kept for it: it names the AOR and instance only to whoever holds the
  key (§5.4: two temporary GRUUs cannot be told to be of one AOR or instance),
  and it is as valid as the registrations it names (§5.1, §5.3): while one of
  the instance's live bindings still has one of those Call-IDs. A UA that
  restarts registers with a new Call-ID, and every temporary GRUU it was given
  before is invalid from then on; one it was given at an earlier refresh of
  the same registration still works.

A request to a GRUU (§6.1) reaches that instance only: :func:`request_target`
reads the Request-URI, :func:`instance_flows` picks the instance's live
bindings (one branch, its flows tried one after the other, RFC 5626 §7) or
says why there are none: a GRUU this registrar never made is 404, one whose
instance has no live binding now is 480 (the instance may come back), a
temporary GRUU whose registrations all ended in a new Call-ID is 404.

The cipher is HMAC-SHA256 in counter mode (the keystream is HMAC(k_enc,
nonce || counter)) with a 96-bit random nonce, then HMAC-SHA256/80 over the
version, nonce and ciphertext (encrypt-then-MAC, keys derived from each
configured key with a label of their own): the standard library has no block
cipher, and HMAC is a PRF. Keys, the clock and randomness are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .bindings import Binding, normalize_instance
from .decisions import Reply
from .errors import SipSyntaxError
from .sipmsg import SipUri

GR_PARAM = "gr"
OPTION_TAG = "gruu"
TEMP_PREFIX = "tgruu."
VERSION = 1
NONCE_BYTES = 12
MAC_BYTES = 10
CALL_ID_DIGEST_BYTES = 8
MAX_CALL_IDS = 8  # the instance's flows a temporary GRUU names, most recent first
MAX_FIELD = 255  # an AOR or instance longer than this gets no GRUU
MAX_TOKEN_CHARS = 4 * (1 + NONCE_BYTES + 2 * (1 + MAX_FIELD) + 1 + MAX_CALL_IDS * CALL_ID_DIGEST_BYTES
                       + MAC_BYTES) // 3 + 3
_ENC_LABEL = b"kemi-outbound temp-gruu encryption v1"
_MAC_LABEL = b"kemi-outbound temp-gruu mac v1"
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# RFC 3261 §25.1 paramchar without "escaped": what a gr value may hold as we write it
_PARAM_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/:&+$")


@dataclass(frozen=True, slots=True)
class GruuTarget:
    """A Request-URI that is one of our GRUUs, read (§3.1, §6.1): the AOR and
    instance it names; for a temporary GRUU the digests of the Call-IDs of the
    registrations it is valid with."""

    aor: str
    instance: str
    temporary: bool = False
    call_ids: frozenset[bytes] = frozenset()


def wanted(supported: frozenset[str], required: frozenset[str]) -> bool:
    """The UA asks for GRUUs (§4.1: ``Supported: gruu``; a ``Require: gruu`` asks too)."""
    return OPTION_TAG in supported or OPTION_TAG in required


def call_id_digest(call_id: str) -> bytes:
    """What a temporary GRUU keeps of a Call-ID (inside the ciphertext)."""
    return hashlib.sha256(call_id.encode("utf-8", "surrogateescape")).digest()[:CALL_ID_DIGEST_BYTES]


def aor_of(uri: str) -> str | None:
    """The AOR a GRUU is made of: ``scheme:user@host[:port]`` of a To URI or a
    Request-URI, without parameters; None when it has no user part."""
    try:
        parsed = SipUri.parse(uri)
    except SipSyntaxError:
        return None
    if not parsed.user:
        return None
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}:{parsed.user}@{parsed.host}{port}"


def gruu_instance(instance: str) -> str | None:
    """The instance as a ``gr`` value (§3.1.1: the instance ID, a URN, RFC 5626
    §4.1), or None when it is no URN we can write as a URI parameter value."""
    if not instance.startswith("urn:") or len(instance) > MAX_FIELD or not _PARAM_CHARS.issuperset(instance):
        return None
    return instance


def public_gruu(aor: str, instance: str) -> str:
    """§5.4: the AOR with a ``gr`` parameter whose value is the instance ID."""
    return f"{aor};{GR_PARAM}={instance}"


def _hostport(aor: str) -> tuple[str, str]:
    scheme, _, rest = aor.partition(":")
    return scheme, rest.rpartition("@")[2]


class TempGruuCodec:
    """Makes and opens the opaque part of temporary GRUUs (§5.4). The first
    key makes them, every key opens them (rotation, like flow tokens)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a temporary GRUU needs at least one key")
        self._keys = tuple((hmac.digest(k, _ENC_LABEL, "sha256"), hmac.digest(k, _MAC_LABEL, "sha256"))
                           for k in keys)

    def make(self, aor: str, instance: str, call_ids: Iterable[bytes], nonce: bytes) -> str | None:
        """The user part ``tgruu.<opaque>`` of a new temporary GRUU for
        ``instance`` of ``aor``, valid with the registrations of ``call_ids``
        (digests); None when the AOR or instance is too long to carry."""
        digests = tuple(call_ids)[:MAX_CALL_IDS]
        aor_bytes, instance_bytes = aor.encode(), instance.encode()
        if len(aor_bytes) > MAX_FIELD or len(instance_bytes) > MAX_FIELD or len(nonce) != NONCE_BYTES:
            return None
        if any(len(d) != CALL_ID_DIGEST_BYTES for d in digests):
            raise ValueError("call-id digests are call_id_digest() values")
        plain = (bytes((len(aor_bytes),)) + aor_bytes + bytes((len(instance_bytes),)) + instance_bytes
                 + bytes((len(digests),)) + b"".join(digests))
        enc_key, mac_key = self._keys[0]
        head = bytes((VERSION,)) + nonce
        body = head + _xor(plain, _keystream(enc_key, nonce, len(plain)))
        raw = body + hmac.digest(mac_key, body, "sha256")[:MAC_BYTES]
        return TEMP_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def open(self, user: str) -> GruuTarget | None:
        """The AOR, instance and Call-ID digests of a temporary GRUU's user
        part, or None when it is not one this registrar made (any byte changed,
        another key, not our form)."""
        if not user.startswith(TEMP_PREFIX):
            return None
        text = user[len(TEMP_PREFIX):]
        if len(text) > MAX_TOKEN_CHARS or not _TOKEN_ALPHABET.issuperset(text):
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 1 + NONCE_BYTES + 3 + MAC_BYTES or raw[0] != VERSION:
            return None
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        for enc_key, mac_key in self._keys:
            if hmac.compare_digest(hmac.digest(mac_key, body, "sha256")[:MAC_BYTES], mac):
                nonce, cipher = body[1:1 + NONCE_BYTES], body[1 + NONCE_BYTES:]
                return _unpack(_xor(cipher, _keystream(enc_key, nonce, len(cipher))))
        return None


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    return b"".join(hmac.digest(key, nonce + struct.pack("!I", n), "sha256") for n in range(blocks))[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def _unpack(plain: bytes) -> GruuTarget | None:
    """Signed by us, so well formed unless the format changed: still checked."""
    try:
        fields = []
        at = 0
        for _ in range(2):
            size = plain[at]
            fields.append(plain[at + 1:at + 1 + size].decode())
            at += 1 + size
        count = plain[at]
        digests = plain[at + 1:]
    except (IndexError, UnicodeDecodeError):
        return None
    if len(digests) != count * CALL_ID_DIGEST_BYTES:
        return None
    found = {digests[i:i + CALL_ID_DIGEST_BYTES] for i in range(0, len(digests), CALL_ID_DIGEST_BYTES)}
    return GruuTarget(fields[0], fields[1], temporary=True, call_ids=frozenset(found))


# ----- the registrar's 2xx (§5.2) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterAnswer:
    """The Contact header body of a REGISTER's 2xx (every live binding, RFC
    3261 §10.3 step 8, with GRUUs on those with an instance) and the instances
    given a public GRUU (to be remembered: a request to it finds 480, not 404,
    while the instance is away)."""

    contact: str
    instances: tuple[str, ...] = ()


def _live(binding: Binding, now: int) -> bool:
    return binding.expires == 0 or binding.expires > now


def register_answer(bindings: Sequence[Binding], *, to_uri: str, now: int, codec: TempGruuCodec,
                    nonce: Callable[[int], bytes], received_param: str = "received") -> RegisterAnswer:
    """The 2xx Contact list the way Kamailio's registrar writes it (``<uri>;q=;
    expires=;received="";+sip.instance="<>";reg-id=``), each binding with an
    instance also given ``pub-gruu`` and ``temp-gruu`` (§5.2). A temporary GRUU
    names the Call-IDs of the instance's live bindings now: it stays valid
    while one of those registrations lives (§5.1, §5.3)."""
    aor = aor_of(to_uri)
    live = [b for b in bindings if _live(b, now)]
    values = []
    instances: list[str] = []
    for binding in live:
        params = []
        if binding.q != 1.0:
            params.append(f";q={_q_text(binding.q)}")
        params.append(f";expires={max(binding.expires - now, 0) if binding.expires else 0}")
        if binding.received and received_param:
            params.append(f';{received_param}="{binding.received}"')
        instance = gruu_instance(binding.instance) if binding.instance else None
        if aor is not None and instance is not None:
            flows = sorted((b for b in live if b.instance == binding.instance), key=lambda b: -b.modified)
            user = codec.make(aor, instance, (call_id_digest(b.callid) for b in flows), nonce(NONCE_BYTES))
            params.append(f';pub-gruu="{public_gruu(aor, instance)}"')
            if user is not None:
                scheme, hostport = _hostport(aor)
                params.append(f';temp-gruu="{scheme}:{user}@{hostport};{GR_PARAM}"')
            if instance not in instances:
                instances.append(instance)
        if binding.instance:
            params.append(f';+sip.instance="<{binding.instance}>"')
        if binding.reg_id:
            params.append(f";reg-id={binding.reg_id}")
        values.append(f"<{binding.contact}>" + "".join(params))
    return RegisterAnswer(", ".join(values), tuple(instances))


def _q_text(q: float) -> str:
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text or "0"


# ----- a request to a GRUU (§6.1) -------------------------------------------------


def request_target(ruri: str, codec: TempGruuCodec) -> GruuTarget | Reply | None:
    """What a Request-URI asks for: None when it is no GRUU (no ``gr``
    parameter: the AOR's bindings as usual), the AOR and instance of a public
    or temporary GRUU, or 404 for a ``gr`` URI this registrar never made (a
    temporary GRUU that does not open, or is presented under another domain)."""
    try:
        uri = SipUri.parse(ruri)
    except SipSyntaxError:
        return None
    if GR_PARAM not in uri.params:
        return None
    value = uri.params[GR_PARAM]
    if value:
        aor = aor_of(ruri)
        if aor is None:
            return Reply(404, "Not Found", "public GRUU without a user part", cause="gruu_unknown")
        return GruuTarget(aor, normalize_instance(urllib.parse.unquote(value)))
    found = codec.open(uri.user or "")
    if found is None:
        return Reply(404, "Not Found", "a temporary GRUU this registrar did not make", cause="gruu_unknown")
    scheme, hostport = _hostport(found.aor)
    port = f":{uri.port}" if uri.port else ""
    if (scheme, hostport.lower()) != (uri.scheme, f"{uri.host}{port}"):
        return Reply(404, "Not Found", "a temporary GRUU presented under another domain", cause="gruu_unknown")
    return found


def instance_flows(target: GruuTarget, bindings: Sequence[Binding], now: int) -> tuple[Binding, ...] | Reply | None:
    """The bindings a request to ``target`` may go to (§6.1: only the
    instance's, RFC 5626 §7 then tries its flows one at a time), or the answer
    when there are none:

    * the instance's live bindings; for a temporary GRUU only while one of
      them has a Call-ID the GRUU names (§5.1: a new Call-ID invalidates the
      temporary GRUUs made before: 404);
    * the instance has bindings, none live (expired, not yet purged): 480;
    * a temporary GRUU whose instance has no binding at all: its registration
      ended, the instance may register again: 480;
    * a public GRUU whose instance has no binding at all: None, the adapter
      knows whether this registrar ever gave it out (:func:`unknown_instance`).
    """
    flows = [b for b in bindings if b.instance == target.instance]
    live = tuple(b for b in flows if _live(b, now))
    if live:
        if target.temporary and not any(call_id_digest(b.callid) in target.call_ids for b in live):
            return Reply(404, "Not Found", "temporary GRUU of a registration that ended in a new Call-ID",
                         cause="gruu_unknown")
        return live
    if flows or target.temporary:
        return Reply(480, "Temporarily Unavailable", f"GRUU of {target.aor}: its instance has no live binding",
                     cause="gruu_not_registered")
    return None


def unknown_instance(target: GruuTarget, remembered: bool) -> Reply:
    """A public GRUU with no binding of its instance: 480 when this registrar
    gave it out (the instance registered before and may again), 404 when it
    never did (§6.1)."""
    if remembered:
        return Reply(480, "Temporarily Unavailable", f"GRUU of {target.aor}: its instance is not registered now",
                     cause="gruu_not_registered")
    return Reply(404, "Not Found", f"no GRUU of {target.aor} for that instance", cause="gruu_unknown")


def memory_key(aor: str, instance: str) -> str:
    """The key under which the adapter remembers a public GRUU it gave out."""
    return f"{aor} {instance}"
