"""The ``dns`` section of cfg/outbound.yaml: defaults, values, errors naming key and file."""

from pathlib import Path

import pytest
import yaml

from outbound.config import DEFAULTS, DnsConfig, parse_config
from outbound.errors import ConfigError

SOURCE = "/etc/kemi-outbound/outbound.yaml"
SHIPPED = Path(__file__).resolve().parents[2] / "cfg" / "outbound.yaml"


def test_defaults_match_the_dataclass_and_the_shipped_file():
    assert parse_config({}, SOURCE).dns == DnsConfig()
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert parse_config(shipped, str(SHIPPED)).dns == DnsConfig()
    assert set(shipped["dns"]) == set(DEFAULTS["dns"]), "every dns key is documented in the shipped file"


def test_values_are_read_and_normalized():
    cfg = parse_config({"dns": {
        "nameservers": ["127.0.1.53", "::1"], "port": 5353, "timeout_ms": 1500, "attempt_ms": 500,
        "transports": ["TCP", "udp"], "families": ["ipv6"], "max_targets": 3, "cache_entries": 0,
        "max_ttl": 60, "negative_ttl": 0, "failure_ttl": 0, "branch_timeout_ms": 800,
        "peers": ["farm.ko.test", "sips:edges.ko.test;transport=tcp"], "hold_down": 10, "max_hold_down": 20,
        "hold_down_entries": 5,
    }}, SOURCE)

    assert cfg.dns == DnsConfig(
        nameservers=("127.0.1.53", "::1"), port=5353, timeout_ms=1500, attempt_ms=500, transports=("tcp", "udp"),
        families=("ipv6",), max_targets=3, cache_entries=0, max_ttl=60, negative_ttl=0, failure_ttl=0,
        branch_timeout_ms=800, peers=("sip:farm.ko.test", "sips:edges.ko.test;transport=tcp"), hold_down=10,
        max_hold_down=20, hold_down_entries=5,
    )


def test_the_edge_registrar_may_be_a_domain():
    assert parse_config({"edge": {"registrar": "sip:farm.ko.test"}}, SOURCE).registrar_uri == "sip:farm.ko.test"


@pytest.mark.parametrize(
    ("dns", "key"),
    [
        ({"nameservers": ["ns.example.com"]}, "dns.nameservers"),
        ({"nameservers": "127.0.0.1"}, "dns.nameservers"),
        ({"port": 0}, "dns.port"),
        ({"port": 70000}, "dns.port"),
        ({"timeout_ms": 0}, "dns.timeout_ms"),
        ({"timeout_ms": 60000}, "dns.timeout_ms"),
        ({"timeout_ms": 1000, "attempt_ms": 2000}, "dns.attempt_ms"),
        ({"transports": []}, "dns.transports"),
        ({"transports": ["udp", "ws"]}, "dns.transports"),
        ({"transports": ["udp", "UDP"]}, "dns.transports"),
        ({"families": ["ipv5"]}, "dns.families"),
        ({"families": [4]}, "dns.families"),
        ({"max_targets": 0}, "dns.max_targets"),
        ({"cache_entries": -1}, "dns.cache_entries"),
        ({"negative_ttl": -5}, "dns.negative_ttl"),
        ({"branch_timeout_ms": 40000}, "dns.branch_timeout_ms"),
        ({"branch_timeout_ms": 1.5}, "dns.branch_timeout_ms"),
        ({"peers": ["http://farm"]}, "dns.peers"),
        ({"peers": [""]}, "dns.peers"),
        ({"peers": "farm.ko.test"}, "dns.peers"),
        ({"resolver": "8.8.8.8"}, "dns.resolver"),
        ({"hold_down": -1}, "dns.hold_down"),
        ({"hold_down": 400}, "dns.hold_down"),  # above the default max_hold_down (300)
        ({"max_hold_down": 10}, "dns.hold_down"),  # now below the default hold_down (30)
        ({"max_hold_down": 100000}, "dns.max_hold_down"),
        ({"max_hold_down": "60"}, "dns.max_hold_down"),
        ({"hold_down_entries": 0}, "dns.hold_down_entries"),
        ({"hold_down_entries": 5000}, "dns.hold_down_entries"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_bad_dns_values_stop_the_start_naming_key_and_file(dns, key):
    with pytest.raises(ConfigError) as info:
        parse_config({"dns": dns}, SOURCE)

    assert info.value.key == key
    assert SOURCE in str(info.value)
