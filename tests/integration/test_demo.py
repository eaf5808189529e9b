"""./run demo on loopback: the story holds, the summary and the ladder picture appear;
digest authentication is on (401 for the REGISTERs, 407 for the calls, answered);
the registrar pair (DMQ, found by SRV) survives the death of reg1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT


@pytest.mark.parametrize("device", ["tcp", "websocket"])
def test_demo_tells_the_failover_story_and_draws_the_ladder(device):
    """The story with the device on TCP (SIPp) and, ``./run demo --websocket``, on
    WebSocket (RFC 7118: tests/ws_device.py, the edges' ws listeners): the same steps hold."""
    extra = ["--websocket"] if device == "websocket" else []
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), *extra], capture_output=True,
                            text=True, timeout=180, env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert re.search(r"ok\s+1 device registers flow reg-id 2 .* 200 OK .*401 challenge answered", out), out
    assert re.search(r"ok\s+3 call 1: .* 200 OK, answered by flow1 .*407 proxy challenge answered", out), out
    assert re.search(r"ok\s+5 call 2: .* 200 OK, answered by flow2 .*edge1 \(no answer\) -> edge2 \(200\)", out), out
    # issue 14: reg1 dies; edge2 finds reg2 by SRV, which answers from the bindings replicated over DMQ
    assert re.search(r"\.\.\. 6 reg1 killed", out), out
    assert re.search(r"ok\s+7 call 3: .* 200 OK, answered by flow2 .*edge2 sent it to reg1 \(no answer\) -> "
                     r"reg2 \(407 200\); home proxy reg2 tried edge2 \(200\)", out), out
    assert re.search(r"bindings at reg2 when reg1 was killed .*\n\s+reg-id 2 ", out), out
    assert re.search(r"ok\s+8 INVITE with a forged flow token .* 403 Forbidden", out), out
    assert "story: every step held" in out
    transport = "WebSocket" if device == "websocket" else "TCP"
    assert f"two flows over {transport}" in out, out
    # the flows the registrar holds name the device's connections of that transport
    token_transport = "ws" if device == "websocket" else "tcp"
    assert len(re.findall(rf"flow token -> Flow\(transport='{token_transport}'", out)) == 2, out
    # issue 16: what each role counted (its /metrics at the start and at its end), exact increments
    for role, series, change in (
            # each REGISTER twice (401, then with credentials): two Path tokens
            ("edge1", f'kemi_outbound_flow_tokens_total{{transport="{token_transport}", where="path"}}', 2),
            ("edge2", 'kemi_outbound_forged_tokens_total{cause="forged_token"}', 1),
            ("edge2", 'kemi_outbound_refusals_total{cause="forged_token", code="403"}', 1),
            ("edge2", 'kemi_outbound_registrar_failovers_total{cause="timeout"}', 1),  # reg1 killed: call 3
            ("reg1", 'kemi_outbound_flow_failovers_total{cause="408_local"}', 1),  # edge1 killed: call 2
            ("reg2", "kemi_outbound_call_branches_count", 1)):
        assert re.search(rf"^  {role}\s+{re.escape(series)}\s+\+{change}\s", out, re.M), (role, series, out)
    flows_gauge = rf'^  edge2\s+kemi_outbound_flows{{transport="{token_transport}"}}\s+\S+\s+\(now 1\)'
    assert re.search(flows_gauge, out, re.M), out
    assert Path(re.search(r"picture: (\S+)", out).group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ladder = Path(re.search(r"ladder diagram: (\S+)", out).group(1))
    assert ladder.suffix == ".svg" and ladder.stat().st_size > 10_000
    svg = ladder.read_text()
    assert "edge1 killed" in svg and "reg1 killed" in svg and "403 Forbidden (INVITE)" in svg
    assert "KDMQ" in svg, "the ladder shows the replication between reg1 and reg2"
    assert "401 Unauthorized (REGISTER)" in svg and "407 Proxy" in svg
    assert f"reg-id 1, {transport}" in svg
    assert ladder.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
