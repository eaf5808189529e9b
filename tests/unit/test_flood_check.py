"""The order of the flood check in the request prologue (adapter.base).

``KSR`` exists only inside Kamailio. Here a stand-in records the calls and
returns scripted answers of the types Kamailio gives (pike and sht_inc ints,
is_myself and ifdef bools); it implements none of
their behaviour. That the limit bans a flooding address inside a real Kamailio
is shown by tests/integration/test_flood.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from ksr_script import Script

KSR = sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter import base  # noqa: E402
from adapter.base import BaseRoutes, flood_ban_seconds  # noqa: E402
from adapter.names import BAN_TABLE  # noqa: E402
from outbound.errors import ConfigError  # noqa: E402

SRC = "198.51.100.9"


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


def test_banned_source_is_dropped_before_pike_or_any_parsing(script):
    script.answers["htable.sht_get"] = 1
    routes = Routes()

    assert routes.ksr_request_route(None) == 1

    assert script.names() == ["kx.get_srcip", "htable.sht_get"], "nothing else, no log line, no reply"
    assert routes.asked_trusted == 0


def test_source_within_the_limit_goes_on_and_trust_is_not_asked(script):
    routes = Routes()

    assert routes.flood_check(300) is True

    assert script.names() == ["kx.get_srcip", "htable.sht_get", "pike.pike_check_req"]
    assert routes.asked_trusted == 0


@pytest.mark.parametrize("pike", [-1, -2], ids=["still-red", "newly-red"])
def test_trusted_source_over_the_limit_goes_on_unbanned(script, pike):
    script.answers["pike.pike_check_req"] = pike
    routes = Routes()
    routes.trusted = True

    assert routes.flood_check(300) is True

    assert routes.asked_trusted == 1
    assert "htable.sht_inc" not in script.names()


def test_our_own_address_over_the_limit_goes_on_unbanned(script):
    script.answers["pike.pike_check_req"] = -1
    script.answers["is_myself"] = True

    assert Routes().flood_check(300) is True

    assert ("is_myself", (f"sip:{SRC}",)) in script.calls
    assert "htable.sht_inc" not in script.names()


def test_first_worker_to_ban_sets_the_expiry_and_logs_once(script):
    script.answers["pike.pike_check_req"] = -2

    assert Routes().flood_check(120) is False

    assert ("htable.sht_inc", (BAN_TABLE, SRC)) in script.calls
    assert ("htable.sht_setex", (BAN_TABLE, SRC, 120)) in script.calls
    [(_, (line,))] = [c for c in script.calls if c[0] == "notice"]
    assert f"flood from {SRC}: banned for 120 s" in line


def test_a_second_worker_racing_the_ban_neither_logs_nor_touches_the_expiry(script):
    script.answers["pike.pike_check_req"] = -1
    script.answers["htable.sht_inc"] = 2

    assert Routes().flood_check(120) is False

    assert "notice" not in script.names() and "htable.sht_setex" not in script.names()


def test_ipv6_source_is_bracketed_for_is_myself(script):
    script.answers["kx.get_srcip"] = "2001:db8::9"
    script.answers["pike.pike_check_req"] = -1

    Routes().flood_check(300)

    assert ("is_myself", ("sip:[2001:db8::9]",)) in script.calls


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
