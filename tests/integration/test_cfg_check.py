"""Every shipped cfg parses in every define combination an operator may use (`kamailio -c`).

No network: `-c` only parses the cfg and loads the modules. WITH_TLS needs a tls.cfg,
made with a throwaway certificate (tests/tls_setup.py). KO_ADVERTISE with a name is
checked in test_path_dns.py (it must resolve); an IP literal here covers the
advertise branches of edge.cfg, TLS included. The auth switches of registrar.cfg
and single.cfg (WITH_NOAUTH, WITH_SHA256_DIGEST) show in the debug log only: with
WITH_DEBUG the test checks that the auth modules (and the algorithm parameter) are
loaded as the switches say.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import Kamailio
from tls_setup import make_certs, write_tls_cfg
from topology import net

ADDR = net(1)
SWITCHES = {
    "edge.cfg": [(), ("WITH_DEBUG",), ("WITH_TLS",), ("WITH_TLS", "WITH_DEBUG"), ("KO_ADVERTISE",),
                 ("KO_ADVERTISE", "WITH_TLS"), ("WITH_NOPIKE",), ("WITH_NOPIKE", "WITH_TLS"),
                 ("WITH_WEBSOCKET",), ("WITH_WEBSOCKET", "WITH_TLS"), ("WITH_WEBSOCKET", "KO_ADVERTISE"),
                 ("WITH_WEBSOCKET", "KO_ADVERTISE", "WITH_TLS"), ("WITH_WEBSOCKET", "WITH_DEBUG"),
                 ("WITH_NOMETRICS",), ("WITH_NOMETRICS", "WITH_WEBSOCKET"), ("WITH_NOMETRICS", "KO_ADVERTISE")],
    # auth (registrar and single only): WITH_NOAUTH (labs: no auth modules at all),
    # WITH_SHA256_DIGEST (RFC 8760 challenges, the ha1_sha256 column); WITH_NOGRUU
    # (no pub-gruu / temp-gruu, RFC 5627)
    "registrar.cfg": [(), ("WITH_DEBUG",), ("WITH_NOPIKE",), ("WITH_NOAUTH",), ("WITH_NOAUTH", "WITH_DEBUG"),
                      ("WITH_NOAUTH", "WITH_NOPIKE"), ("WITH_SHA256_DIGEST",),
                      ("WITH_SHA256_DIGEST", "WITH_DEBUG"), ("WITH_SHA256_DIGEST", "WITH_NOPIKE"),
                      ("WITH_NOGRUU",), ("WITH_NOGRUU", "WITH_NOAUTH"), ("WITH_NOMETRICS",),
                      ("WITH_NOMETRICS", "WITH_DEBUG")],
    "single.cfg": [(), ("WITH_DEBUG",), ("WITH_TLS",), ("WITH_TLS", "WITH_DEBUG"), ("WITH_NOPIKE",),
                   ("WITH_NOAUTH",), ("WITH_NOAUTH", "WITH_DEBUG"), ("WITH_NOAUTH", "WITH_TLS"),
                   ("WITH_NOAUTH", "WITH_NOPIKE"), ("WITH_SHA256_DIGEST",), ("WITH_SHA256_DIGEST", "WITH_DEBUG"),
                   ("WITH_SHA256_DIGEST", "WITH_TLS"), ("WITH_SHA256_DIGEST", "WITH_TLS", "WITH_DEBUG"),
                   ("WITH_NOGRUU",), ("WITH_NOGRUU", "WITH_TLS"), ("WITH_WEBSOCKET",),
                   ("WITH_WEBSOCKET", "WITH_TLS"), ("WITH_WEBSOCKET", "WITH_NOAUTH"),
                   ("WITH_WEBSOCKET", "WITH_TLS", "WITH_DEBUG"), ("WITH_NOMETRICS",),
                   ("WITH_NOMETRICS", "WITH_WEBSOCKET", "WITH_TLS")],
}
CASES = [pytest.param(cfg, switches, id=f"{cfg}-{'+'.join(switches) or 'plain'}")
         for cfg, combos in SWITCHES.items() for switches in combos]


@pytest.fixture(scope="module")
def tls_cfg(workdir: Path) -> Path:
    folder = workdir / "cfg-check-tls"
    return write_tls_cfg(folder, make_certs(folder, [ADDR]))


@pytest.mark.parametrize(("cfg", "switches"), CASES)
def test_cfg_parses(workdir, tls_cfg, cfg, switches):
    defines: dict[str, str] = {}
    for switch in switches:
        if switch == "WITH_TLS":
            defines.update({"WITH_TLS": "", "KO_TLS_PORT": "5098", "KO_TLS_CFG": f'"{tls_cfg}"'})
        elif switch == "WITH_WEBSOCKET":
            defines.update({"WITH_WEBSOCKET": "", "KO_WS_PORT": "5096", "KO_WSS_PORT": "5097"})
        elif switch == "KO_ADVERTISE":
            defines["KO_ADVERTISE"] = net(2)
        else:
            defines[switch] = ""
    defines["KO_METRICS_PORT"] = "5095"
    kam = Kamailio(f"check-{cfg}-{'-'.join(switches) or 'plain'}", cfg, workdir, ADDR, 5099, defines=defines)
    result = kam.check()
    problems = [line for line in result.stderr.splitlines() if " ERROR: " in line or "CRITICAL" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    # each switch really reached the cfg
    assert ("tls: " in result.stdout and ":5098" in result.stdout) == ("WITH_TLS" in switches), result.stdout
    assert (f"advertise {net(2)}:" in result.stdout) == ("KO_ADVERTISE" in switches), result.stdout
    # WITH_WEBSOCKET: a TCP listener on KO_WS_PORT, and with WITH_TLS a TLS one on KO_WSS_PORT (RFC 7118)
    assert (":5096" in result.stdout) == ("WITH_WEBSOCKET" in switches), result.stdout
    assert (":5097" in result.stdout) == ("WITH_WEBSOCKET" in switches and "WITH_TLS" in switches), result.stdout
    # the metrics socket (issue 16): a TCP listener on KO_METRICS_PORT unless WITH_NOMETRICS
    assert (f"tcp: {ADDR} [{ADDR}]:5095" in result.stdout or f"{ADDR}:5095" in result.stdout) == \
        ("WITH_NOMETRICS" not in switches), result.stdout
    if not os.environ.get("KO_DEBUG"):  # KO_DEBUG=1 turns WITH_DEBUG on for every Kamailio of a run
        assert (" DEBUG: " in result.stderr) == ("WITH_DEBUG" in switches)
    if " DEBUG: " in result.stderr and cfg != "edge.cfg":
        # only the debug log shows which modules and parameters the auth switches chose
        loaded = "loading module auth_db.so" in result.stderr and "loading module auth.so" in result.stderr
        assert loaded == ("WITH_NOAUTH" not in switches), "auth modules loaded under WITH_NOAUTH or not without it"
        assert ("found <algorithm> in module auth " in result.stderr) == ("WITH_SHA256_DIGEST" in switches)
