"""RFC 4475 torture messages (tests/data/rfc4475/<name>.dat, the bytes of the
RFC's Appendix A archive) and what RFC 4475 says of each.

Every message of §3.1.1 (valid), §3.1.2 (invalid), §3.2 (transaction layer),
§3.3 (application layer) and §3.4 (backward compatibility) is here, in the
RFC's order. Besides the RFC's verdict, an entry records where Kamailio 5.6
itself (outside our Python) refuses a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "rfc4475"
ROLES = ("edge", "registrar", "single")


@dataclass(frozen=True)
class Torture:
    name: str  # RFC 4475's name, e.g. "wsinv"
    section: str  # e.g. "3.1.1.1"
    title: str  # the section's title
    valid: bool  # the RFC's verdict: well formed (process it) or not (refuse it)
    rfc: str  # what RFC 4475 says should happen
    # a response: nothing answers it, a proxy drops it when no transaction matches
    response: bool = False
    # Kamailio 5.6 refuses it by itself (docs/parsing.md): its core drops it
    # before the script or cannot build a reply to it; the reason ...
    core_drops: str = ""
    # ... or its registrar module answers 400 (save() fails) on roles that save
    registrar_refuses: str = ""
    # ... or the sanity module answers 400 (the prologue's sanity_check(1511, 7),
    # kemi/adapter/base.py, on every role)
    sanity_refuses: str = ""
    # the RFC itself names 400 as a right answer for this valid message
    rfc_allows_400: bool = False
    # framing over TCP, where UDP cannot show it: "closes" (Kamailio must close
    # the connection), "waits" (the message is complete only after Content-Length
    # octets of body; the stream stays in step)
    tcp: str = ""
    # the final answer the RFC requires (checked instead of the generic rule)
    rfc_code: int | None = None

    @property
    def title_line(self) -> str:
        return f"{self.name} (RFC 4475 §{self.section} {self.title})"


SANITY_RURI = "sanity check_ruri_scheme (flag 2): an R-URI that is not sip/sips/tel is 400 'Bad Request URI'"

TORTURE: tuple[Torture, ...] = (
    # §3.1.1 valid messages
    Torture("wsinv", "3.1.1.1", "A Short Tortuous INVITE", True,
            "well formed: every element must accept it",
            core_drops="parse_cseq: a folded CSeq ('0009' CRLF '  INVITE') has 'no method'"),
    Torture("intmeth", "3.1.1.2", "Wide Range of Valid Characters", True,
            "well formed: an unknown method, every token character; a proxy forwards it",
            core_drops="parse_hname2: '!', '%', '*', '`', \"'\" are no header name characters "
                       "(extensionHeader-!.%*+_`'~): no reply can be built"),
    Torture("esc01", "3.1.1.3", "Valid Use of the % Escaping Mechanism", True,
            "well formed: % HEX HEX is an escape in the URIs"),
    Torture("escnull", "3.1.1.4", "Escaped Nulls in URIs", True,
            "well formed: registers two distinct contacts; %00 must not shorten the user",
            registrar_refuses="registrar save(): un_escape refuses %00 in the To user (no AOR)"),
    Torture("esc02", "3.1.1.5", "Use of % When It Is Not an Escape", True,
            "well formed: an unknown method; a proxy forwards or rejects it, an endpoint answers 501",
            core_drops="parse_hname2: '%' is no header name character ('C%6Fntact'): no reply can be built"),
    Torture("lwsdisp", "3.1.1.6", "Message with No LWS between Display Name and <", True,
            "accept it as well formed"),
    Torture("longreq", "3.1.1.7", "Long Values in Header Fields", True,
            "well formed: long display name, parameters, tag, Call-ID, 34 Vias"),
    Torture("dblreq", "3.1.1.8", "Extra Trailing Octets in a UDP Datagram", True,
            "handle the REGISTER normally, ignore the octets after its (empty) body (RFC 3261 §18.3)",
            sanity_refuses="sanity check_cl (flag 128): a datagram longer than Content-Length is "
                           "400 'Content-Length mis-match'"),
    Torture("semiuri", "3.1.1.9", "Semicolon-Separated Parameters in URI User Part", True,
            "well formed: the user part is 'user;par=u@example.net'"),
    Torture("transports", "3.1.1.10", "Varied and Unknown Transport Types", True,
            "well formed: process it as if every Via said UDP"),
    Torture("mpart01", "3.1.1.11", "Multipart MIME Message", True,
            "well formed: a binary body part with NULs must be framed by Content-Length"),
    Torture("unreason", "3.1.1.12", "Unusual Reason Phrase", True,
            "a well-formed 200 with a UTF-8 reason phrase", response=True),
    Torture("noreason", "3.1.1.13", "Empty Reason Phrase", True,
            "a well-formed 100 with an empty reason phrase", response=True),
    # §3.1.2 invalid messages
    Torture("badinv01", "3.1.2.1", "Extraneous Header Field Separators", False,
            "400 Bad Request", core_drops="parse_via: ';;,;,,' is a Via parse error"),
    Torture("clerr", "3.1.2.2", "Content Length Larger Than Message", False,
            "UDP: 400; TCP: wait for more data (close the connection if none comes)", tcp="waits"),
    Torture("ncl", "3.1.2.3", "Negative Content-Length", False,
            "an error; over TCP the framing error cannot be recovered: close the connection",
            core_drops="parse_content_length: '-' (no reply can be built)", tcp="closes"),
    Torture("scalar02", "3.1.2.4", "Request Scalar Fields with Overlarge Values", False,
            "400 Bad Request (the CSeq is above 2**32-1)"),
    Torture("scalarlg", "3.1.2.5", "Response Scalar Fields with Overlarge Values", False,
            "discard the response", response=True),
    Torture("quotbal", "3.1.2.6", "Unterminated Quoted String in Display Name", False,
            "400 Bad Request", core_drops="parse_to: the unterminated quote is a To parse error"),
    Torture("ltgtruri", "3.1.2.7", "<> Enclosing Request-URI", False, "400 Bad Request"),
    Torture("lwsruri", "3.1.2.8", "Malformed SIP Request-URI (embedded LWS)", False,
            "400 Bad Request", core_drops="parse_first_line: 'sip:user@example.com; lr' is no request line"),
    Torture("lwsstart", "3.1.2.9", "Multiple SP Separating Request-Line Elements", False,
            "may be rejected as malformed", core_drops="parse_first_line: two SP are no request line"),
    Torture("trws", "3.1.2.10", "SP Characters at End of Request-Line", False,
            "may be rejected as malformed; a liberal element ignores the SPs"),
    Torture("escruri", "3.1.2.11", "Escaped Headers in SIP Request-URI", False,
            "may be 400; a proxy must not turn the escaped headers into real ones"),
    Torture("baddate", "3.1.2.12", "Invalid Time Zone in Date Header Field", False,
            "may be rejected; an element that does not use Date may ignore it"),
    Torture("regbadct", "3.1.2.13", "Failure to Enclose name-addr URI in <>", False,
            "400 Bad Request is reasonable (a liberal element could infer the <>)"),
    Torture("badaspec", "3.1.2.14", "Spaces within addr-spec", False,
            "must not break; 400 Bad Request is reasonable"),
    Torture("baddn", "3.1.2.15", "Non-token Characters in Display Name", False, "400 Bad Request"),
    Torture("badvers", "3.1.2.16", "Unknown Protocol Version", False,
            "505 Version Not Supported", core_drops="parse_via: 'SIP/7.0' is a Via parse error"),
    Torture("mismatch01", "3.1.2.17", "Start Line and CSeq Method Mismatch", False, "400 Bad Request"),
    Torture("mismatch02", "3.1.2.18", "Unknown Method with CSeq Method Mismatch", False,
            "501 Not Implemented (400 is also acceptable)"),
    Torture("bigcode", "3.1.2.19", "Overlarge Response Code", False, "drop the response",
            response=True),
    # §3.2 transaction layer semantics
    Torture("badbranch", "3.2.1", "Missing Transaction Identifier", True,
            "must not break: 400 (statelessly) or fall back to RFC 2543 transaction matching"),
    # §3.3 application-layer semantics
    Torture("insuf", "3.3.1", "Missing Required Header Fields", False,
            "must not break; ideally 400 Bad Request",
            core_drops="receive_msg: no To, From, Call-ID: 'required headers not found in request'"),
    Torture("unkscm", "3.3.2", "Request-URI with Unknown Scheme", True,
            "well formed: 416 Unsupported URI Scheme; never route by the To", sanity_refuses=SANITY_RURI),
    Torture("novelsc", "3.3.3", "Request-URI with Known but Atypical Scheme", True,
            "well formed: 416 if the scheme is never meaningful here, else 404", sanity_refuses=SANITY_RURI),
    Torture("unksm2", "3.3.4", "Unknown URI Schemes in Header Fields", True,
            "well formed: a proxy treats it as any request; a registrar answers 400 (the To is no SIP AOR)",
            rfc_allows_400=True),
    Torture("bext01", "3.3.5", "Proxy-Require and Require", True,
            "420 Bad Extension listing the unsupported options (Proxy-Require at a proxy)", rfc_code=420),
    Torture("invut", "3.3.6", "Unknown Content-Type", True,
            "a proxy processes it as any INVITE; an endpoint answers 415"),
    Torture("regaut01", "3.3.7", "Unknown Authorization Scheme", True,
            "a registrar that ignores authentication processes it as if the field were absent"),
    Torture("multi01", "3.3.8", "Multiple Values in Single Value Required Fields", False,
            "400 Bad Request", core_drops="parse_headers: 'duplicate CSeq header field'"),
    Torture("mcl01", "3.3.9", "Multiple Content-Length Values", False,
            "an error; over TCP the framing cannot be recovered: close the connection",
            core_drops="parse_headers: 'duplicate Content-Length header field' (no reply can be built)",
            tcp="closes"),
    Torture("bcast", "3.3.10", "200 OK Response with Broadcast Via Header Field Value", True,
            "an endpoint discards it; a proxy must drop it, never forward it to the broadcast address",
            response=True),
    Torture("zeromf", "3.3.11", "Max-Forwards of Zero", True,
            "a proxy answers 483 Too Many Hops; an endpoint processes it"),
    Torture("cparam01", "3.3.12", "REGISTER with a Contact Header Parameter", True,
            "the REGISTER succeeds; 'unknownparam' is a contact-param"),
    Torture("cparam02", "3.3.13", "REGISTER with a url-parameter", True,
            "the REGISTER succeeds; 'unknownparam' is a url-parameter"),
    Torture("regescrt", "3.3.14", "REGISTER with a URL Escaped Header", True,
            "the REGISTER succeeds; the binding keeps the escaped Route header in its URI"),
    Torture("sdp01", "3.3.15", "Unacceptable Accept Offering", True,
            "406 Not Acceptable, or 400 (a UA supporting INVITE must support SDP)", rfc_allows_400=True),
    # §3.4 backward compatibility
    Torture("inv2543", "3.4.1", "INVITE with RFC 2543 Syntax", True,
            "accept it (no branch, no From tag, no Content-Length, no Max-Forwards)"),
)

BY_NAME = {torture.name: torture for torture in TORTURE}


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()
