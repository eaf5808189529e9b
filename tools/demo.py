"""The main job: an edge and a registrar on loopback, a SIPp UA registers through
the edge over TCP, and the binding stored in usrloc is printed (read over RPC).

Run with ./run demo. Everything it starts it stops again, pass or fail.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "kemi"))

from harness import CFG_DIR, Kamailio, SippResult, describe, sipp  # noqa: E402
from outbound.sipmsg import parse_name_addr  # noqa: E402
from outbound.tokens import FlowTokenCodec, parse_key  # noqa: E402

UA_IP = "127.0.0.10"
INSTANCE = '"<urn:uuid:00000000-0000-4000-8000-0000000de001>"'


def main() -> int:
    out = ROOT / "out" / "demo" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    yaml_text = (CFG_DIR / "outbound.yaml").read_text()
    key = "hex:" + secrets.token_hex(32)  # a fresh flow-token key for this demo run
    registrar = Kamailio("registrar", "registrar.cfg", out, "127.0.0.1", 5070, yaml_text=yaml_text)
    edge = Kamailio("edge", "edge.cfg", out, "127.0.0.2", 5060, env={"KO_FLOW_KEYS": key},
                    defines={"KO_REGISTRAR": f'"{registrar.uri}"'}, yaml_text=yaml_text)
    try:
        registrar.start()
        edge.start()
        print(f"registrar {registrar.uri}   edge {edge.uri}   UA {UA_IP} (SIPp, TCP)")
        keys = {
            "user": "alice", "domain": "example.com", "expires": "600", "supported": "path, outbound",
            "extra": "X-Demo: yes", "cseq": "1",
            "contact": f"<sip:alice@{UA_IP}:5090;transport=tcp;ob>;+sip.instance={INSTANCE};reg-id=1",
        }
        result = sipp("register_expect", f"{edge.addr}:{edge.port}", workdir=out, local_ip=UA_IP,
                      transport="tcp", keys=keys, check=False)
        assert isinstance(result, SippResult)
        if result.value("final") != "200":
            print(describe(result))
            print(edge.log()[-3000:], registrar.log()[-3000:])
            return 1
        print(f"REGISTER -> {result.value('final')}   Require: {result.value('require')}   "
              f"Flow-Timer: {result.value('flowtimer')}")
        print(f"Path: {result.value('path')}")
        token = parse_name_addr(result.value("path")).sip_uri.user or ""
        flow = FlowTokenCodec([parse_key(key)]).decode(token).flow
        print(f"flow token decodes to: {flow}")
        print("binding in usrloc (RPC ul.dump), keyed by (AOR, +sip.instance, reg-id):")
        for binding in registrar.bindings("alice"):
            shown = {k: binding[k] for k in ("AoR", "Instance", "Reg-Id", "Address", "Path", "Expires", "CFlags")}
            print(json.dumps(shown, indent=2))
        print(f"logs and SIPp traces: {out}")
        return 0
    finally:
        edge.stop()
        registrar.stop()


if __name__ == "__main__":
    sys.exit(main())
