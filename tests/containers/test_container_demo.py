"""./run demo --containers: the same story on the container topology."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT

DOCKER_NET = os.environ.get("KO_DOCKER_NET", "198.18.7")  # as in conftest.py


@pytest.mark.parametrize("device", ["tcp", "websocket"])
def test_container_demo_tells_the_failover_story_and_draws_the_ladder(image, device):
    """The story on the containers, the device in ua-b on TCP (SIPp) and, with
    --websocket, on WebSocket (tests/ws_device.py run by ua-b's python3)."""
    env = {**os.environ, "KO_DEMO_NET": DOCKER_NET}
    extra = ["--websocket"] if device == "websocket" else []
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--containers", *extra],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert re.search(r"ok\s+5 call 2: .* 200 OK, answered by flow2 .*edge1 \(no answer\) -> edge2 \(200\)", out), out
    assert re.search(r"\.\.\. 6 reg1 killed \(docker kill", out), out
    assert re.search(r"ok\s+7 call 3: .* 200 OK, answered by flow2 .*edge2 sent it to reg1 \(no answer\) -> "
                     r"reg2 \(407 200\); home proxy reg2 tried edge2 \(200\)", out), out
    assert re.search(r"ok\s+8 INVITE with a forged flow token .* 403 Forbidden", out), out
    assert "story: every step held" in out
    assert f"two flows over {'WebSocket' if device == 'websocket' else 'TCP'}" in out, out
    ladder = Path(re.search(r"ladder diagram: (\S+)", out).group(1))
    svg = ladder.read_text()
    assert "edge1 killed (docker kill" in svg and "reg1 killed (docker kill" in svg and "KDMQ" in svg
    projects = subprocess.run(["docker", "ps", "-a", "--filter", "label=org.kemi-outbound.topology",
                               "--format", '{{.Label "com.docker.compose.project"}}'],
                              capture_output=True, text=True, check=True).stdout.split()
    assert not [p for p in projects if p.startswith("kodemo")], "the demo left containers behind"
