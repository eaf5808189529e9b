"""Flow-token keys at start (issue 10, "Edge hardening"): 32+ random bytes or no edge.

An edge given a passphrase (in the environment or in a key file) refuses to
start, and its log names where the bad key is (flow_tokens.keys_env entry N,
flow_tokens.keys_file line N) without quoting it. Rotation: an edge restarted
with a new key first and the old one after still routes over a flow whose
token the old key signed, and signs new tokens with the new key.
"""

from __future__ import annotations

import secrets

import pytest

from actors import call, instance, ob_params, start_callee, wait_bindings
from harness import TEST_KEY, Kamailio, ProcessError, describe
from outbound.sipmsg import parse_name_addr
from outbound.tokens import FlowTokenCodec, Verdict, parse_key
from topology import edge, net, registrar, start, stop

REGISTRAR = net(150)
EDGE = net(151)
UA = net(152)
CALLER = net(153)
PASSPHRASE = "Tr0ub4dor&3-was-a-good-passphrase-once"
NEW_KEY = "hex:" + secrets.token_hex(32)


def refused(kam: Kamailio, started: list) -> str:
    started.append(kam)
    with pytest.raises(ProcessError):
        start(kam)
    stop(kam)
    return kam.log()


def test_edge_with_a_passphrase_key_refuses_to_start_naming_the_entry(workdir, started):
    log = refused(edge(workdir, "key-passphrase-env", EDGE, f"sip:{REGISTRAR}:5070",
                       key=f"{TEST_KEY},{PASSPHRASE}"), started)

    assert "configuration error" in log
    assert "flow_tokens.keys_env: entry 2 of $KO_FLOW_KEYS: not hex:... or base64:..." in log
    assert "a passphrase is not a key" in log and "secrets.token_hex(32)" in log
    assert PASSPHRASE not in log and "Tr0ub4dor" not in log, "the log must never quote a key"


def test_edge_with_a_passphrase_in_its_key_file_refuses_to_start_naming_the_line(workdir, started):
    keys_file = workdir / "key-passphrase-file.keys"
    keys_file.write_text(f"# new key first\n{PASSPHRASE}\n{TEST_KEY}\n")
    kam = edge(workdir, "key-passphrase-file", EDGE, f"sip:{REGISTRAR}:5070", key="")
    kam.defines["KO_FLOW_KEYS_FILE"] = f'"{keys_file}"'
    log = refused(kam, started)

    assert f"flow_tokens.keys_file: line 2 of {keys_file}: not hex:... or base64:..." in log
    assert PASSPHRASE not in log


def test_edge_with_a_short_hex_key_refuses_to_start(workdir, started):
    log = refused(edge(workdir, "key-short", EDGE, f"sip:{REGISTRAR}:5070",
                       key="hex:" + secrets.token_hex(16)), started)

    assert "flow_tokens.keys_env: entry 1 of $KO_FLOW_KEYS: 16 bytes; a key needs at least 32" in log


def test_rotation_new_key_signs_old_key_still_verifies(workdir, local_port, started):
    """The first key signs, every key verifies: a UDP flow registered while the
    edge had only the old key is still reached after the edge restarts with
    "new,old"; a REGISTER after the restart carries a token of the new key."""
    reg = start(registrar(workdir, "key-registrar", addr=REGISTRAR))
    started.append(reg)
    old_edge = start(edge(workdir, "key-edge-old", EDGE, reg.uri, key=TEST_KEY))
    started.append(old_edge)
    user = "key-rotation"
    callee = start_callee(old_edge, workdir, local_port, user, ua_ip=UA, transport="udp",
                          cparams=ob_params(instance(local_port), 1))
    started.append(callee)
    [binding] = wait_bindings(reg, user, [callee])
    old_token = parse_name_addr(binding["Path"]).sip_uri.user or ""
    old_only, new_only = FlowTokenCodec([parse_key(TEST_KEY)]), FlowTokenCodec([parse_key(NEW_KEY)])
    assert old_only.decode(old_token).verdict is Verdict.VALID
    stop(old_edge)

    rotated = start(edge(workdir, "key-edge-rotated", EDGE, reg.uri, key=f"{NEW_KEY},{TEST_KEY}"))
    started.append(rotated)
    result = call(rotated, workdir, local_port + 1, user, ua_ip=CALLER)
    assert result.value("who") == user, describe(result)
    assert "call ended" in callee.wait(20).log

    second = start_callee(rotated, workdir, local_port + 2, "key-rotation-new", ua_ip=UA, transport="udp",
                          cparams=ob_params(instance(local_port + 2), 1))
    started.append(second)
    [fresh] = wait_bindings(reg, "key-rotation-new", [second])
    new_token = parse_name_addr(fresh["Path"]).sip_uri.user or ""
    assert new_only.decode(new_token).verdict is Verdict.VALID, "the first key signs"
    assert old_only.decode(new_token).verdict is Verdict.FORGED
