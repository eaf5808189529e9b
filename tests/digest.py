"""A digest client for raw-socket tests (RFC 2617 §3.2.2, RFC 8760 §2): read a
401/407 challenge, write the Authorization / Proxy-Authorization header a UA
would send. Test-only; the server side is Kamailio's auth module."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class ChallengeHeader:
    header: str  # "WWW-Authenticate" or "Proxy-Authenticate"
    realm: str
    nonce: str
    qop: str
    algorithm: str
    stale: bool
    opaque: str | None


def challenges(response: str) -> list[ChallengeHeader]:
    """Every Digest challenge of a 401/407 response, in order."""
    found = []
    for line in response.replace("\r\n", "\n").split("\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() not in ("www-authenticate", "proxy-authenticate"):
            continue
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "digest":
            continue
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAM.finditer(rest)}
        found.append(ChallengeHeader(name.strip(), params.get("realm", ""), params.get("nonce", ""),
                                     params.get("qop", ""), params.get("algorithm", "MD5"),
                                     params.get("stale", "").lower() == "true", params.get("opaque")))
    return found


def _hash(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm.upper()]
    return hashlib.new(name, text.encode()).hexdigest()


def authorization(challenge: ChallengeHeader, method: str, uri: str, username: str, password: str,
                  *, nc: int = 1, cnonce: str | None = None, algorithm: str | None = None) -> str:
    """The credentials header line (without CRLF) answering ``challenge``."""
    algorithm = algorithm or challenge.algorithm or "MD5"
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = _hash(algorithm, f"{username}:{challenge.realm}:{password}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    params = [f'username="{username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"', f'uri="{uri}"']
    if "auth" in [q.strip() for q in challenge.qop.split(",")]:
        count = f"{nc:08x}"
        response = _hash(algorithm, f"{ha1}:{challenge.nonce}:{count}:{cnonce}:auth:{ha2}")
        params += [f'response="{response}"', "qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        params.append(f'response="{_hash(algorithm, f"{ha1}:{challenge.nonce}:{ha2}")}"')
    if algorithm.upper() != "MD5" or challenge.algorithm.upper() != "MD5":
        params.append(f"algorithm={algorithm}")
    if challenge.opaque is not None:
        params.append(f'opaque="{challenge.opaque}"')
    name = "Authorization" if challenge.header.lower() == "www-authenticate" else "Proxy-Authorization"
    return f"{name}: Digest " + ", ".join(params)
