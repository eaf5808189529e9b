"""The flood check of the request prologue: its order in cfg/routing.cfg, and
what the Python decides once pike finds a source too busy (adapter.base).

``KSR`` exists only inside Kamailio. Here a stand-in records the calls and
returns scripted answers of the types Kamailio gives (pike and sht_inc ints,
is_myself and ifdef bools); it implements none of
their behaviour. That the limit bans a flooding address inside a real Kamailio
is shown by tests/integration/test_flood.py.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from ksr_script import Script

KSR = sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter import base  # noqa: E402
from adapter.base import BaseRoutes, flood_ban_seconds  # noqa: E402
from adapter.names import BAN_TABLE  # noqa: E402
from outbound.errors import ConfigError  # noqa: E402

SRC = "198.51.100.9"
ROUTING_CFG = Path(__file__).resolve().parents[2] / "cfg" / "routing.cfg"


@pytest.fixture
def script(monkeypatch) -> Script:
    s = Script(**{"kx.get_srcip": SRC, "kx.ifdef": False, "kx.get_def": "300", "htable.sht_get": 0,
                  "pike.pike_check_req": 1, "is_myself": False, "htable.sht_inc": 1})
    monkeypatch.setattr(KSR, "kx", s.namespace("kx.", "get_srcip", "ifdef", "get_def", "get_method"), raising=False)
    monkeypatch.setattr(KSR, "htable", s.namespace("htable.", "sht_get", "sht_inc", "sht_setex"), raising=False)
    monkeypatch.setattr(KSR, "pike", s.namespace("pike.", "pike_check_req"), raising=False)
    monkeypatch.setattr(KSR, "maxfwd", s.namespace("maxfwd.", "process_maxfwd"), raising=False)
    for name in ("is_myself", "notice", "info", "warn", "err"):
        monkeypatch.setattr(KSR, name, s.recorder(name), raising=False)
    return s


class Routes(BaseRoutes):
    trusted = False

    def __init__(self) -> None:  # no Runtime: the prologue's flood check needs none
        self.ban_seconds = 300
        self.bus = None  # no registrar pair
        self.asked_trusted = 0

    def trusted_source(self) -> bool:
        self.asked_trusted += 1
        return self.trusted


def cfg_block(head: str) -> str:
    """The statements of one route block of cfg/routing.cfg, its comment lines left out."""
    text = ROUTING_CFG.read_text()
    found = re.search(rf"^{re.escape(head)} {{\n(.*?)^}}", text, re.M | re.S)
    assert found is not None, head
    return "\n".join(line.strip() for line in found.group(1).splitlines() if not line.strip().startswith("#"))


def test_the_prologue_is_the_first_step_of_every_request_after_a_pairs_kdmq():
    steps = [line for line in cfg_block("request_route").splitlines() if line and not line.startswith("#!")]
    kdmq = steps.index('if (is_method("KDMQ")) {')
    assert steps[kdmq + 1:kdmq + 4] == ['python_exec("ksr_kdmq");', "exit;", "}"]
    assert steps[kdmq + 4] == "route(KO_PROLOGUE);"


def test_a_banned_source_is_dropped_before_pike_or_any_parsing_and_pike_comes_before_the_python():
    prologue = cfg_block("route[KO_PROLOGUE]")
    ban = prologue.index("if ($sht(ipban=>$si) > 0) {\nexit;\n}")
    pike = prologue.index("if (!pike_check_req()) {")
    python = prologue.index('if (!python_exec("ksr_flood")) {\nexit;\n}')
    assert ban < pike < python < prologue.index("maxfwd_process")
    assert "python_exec" not in prologue[:pike], "a source within the limit never enters the Python for it"


def test_trusted_source_over_the_limit_goes_on_unbanned(script):
    routes = Routes()
    routes.trusted = True

    assert routes.ksr_flood(None) == 1

    assert routes.asked_trusted == 1
    assert "htable.sht_inc" not in script.names()


def test_our_own_address_over_the_limit_goes_on_unbanned(script):
    script.answers["is_myself"] = True

    assert Routes().ksr_flood(None) == 1

    assert ("is_myself", (f"sip:{SRC}",)) in script.calls
    assert "htable.sht_inc" not in script.names()


def test_first_worker_to_ban_sets_the_expiry_and_logs_once(script):
    routes = Routes()
    routes.ban_seconds = 120

    assert routes.ksr_flood(None) == -1

    assert ("htable.sht_inc", (BAN_TABLE, SRC)) in script.calls
    assert ("htable.sht_setex", (BAN_TABLE, SRC, 120)) in script.calls
    [(_, (line,))] = [c for c in script.calls if c[0] == "notice"]
    assert f"flood from {SRC}: banned for 120 s" in line


def test_a_second_worker_racing_the_ban_neither_logs_nor_touches_the_expiry(script):
    script.answers["htable.sht_inc"] = 2

    assert Routes().ksr_flood(None) == -1

    assert "notice" not in script.names() and "htable.sht_setex" not in script.names()


def test_ipv6_source_is_bracketed_for_is_myself(script):
    script.answers["kx.get_srcip"] = "2001:db8::9"

    Routes().ksr_flood(None)

    assert ("is_myself", ("sip:[2001:db8::9]",)) in script.calls


def test_with_the_limit_off_the_python_lets_everything_on(script):
    routes = Routes()
    routes.ban_seconds = None

    assert routes.ksr_flood(None) == 1
    assert script.names() == []


def test_base_routes_trust_nobody_by_default():
    assert BaseRoutes.trusted_source(object.__new__(BaseRoutes)) is False


def test_ban_time_comes_from_the_define(script):
    script.answers["kx.get_def"] = "45"

    assert flood_ban_seconds() == 45


def test_with_nopike_switches_the_limit_off(script):
    script.answers["kx.ifdef"] = True

    assert flood_ban_seconds() is None
    assert "pike.pike_check_req" not in script.names()


def test_without_the_pike_module_the_limit_is_off_and_says_so(script, monkeypatch):
    monkeypatch.delattr(KSR, "pike")

    assert flood_ban_seconds() is None
    assert "warn" in script.names()


@pytest.mark.parametrize("value", ["", "0", "abc", "86401", "²"])
def test_bad_ban_time_stops_the_start_naming_the_define(script, value):
    script.answers["kx.get_def"] = value

    with pytest.raises(ConfigError) as info:
        flood_ban_seconds()

    assert info.value.key == base.BAN_DEFINE
