"""The test DNS server's address and the `dns` YAML section that points at it.

Shared by the integration tests that run Debian's nsd (tests/nsd.py); the
`nsd` fixture itself is in tests/integration/conftest.py.
"""

from __future__ import annotations

import yaml

from topology import ko_yaml, net

NS = net(53)
NS_PORT = 5353
DNS_SETTINGS = {
    "nameservers": [NS], "port": NS_PORT, "timeout_ms": 1000, "attempt_ms": 500, "branch_timeout_ms": 1000,
    "failure_ttl": 1, "negative_ttl": 5,
}


def dns_yaml(**changes: object) -> str:
    """cfg/outbound.yaml with its `dns` section pointed at the test server."""
    data = yaml.safe_load(ko_yaml())
    data["dns"].update({**DNS_SETTINGS, **changes})
    return yaml.safe_dump(data)
