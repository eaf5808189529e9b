"""docker/build_images.py: which Debian mirror the base image is bootstrapped from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "build_images.py"
spec = importlib.util.spec_from_file_location("build_images", SCRIPT)
assert spec is not None and spec.loader is not None
build_images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_images)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_deb822_sources_give_the_bookworm_main_mirror_not_security(tmp_path):
    sources = write(tmp_path, "debian.sources", """Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
""")
    assert build_images.debian_mirror([sources]) == "http://mirror.example/debian"


def test_one_line_lists_with_options_are_read(tmp_path):
    lists = write(tmp_path, "sources.list", """# deb http://old.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main non-free
""")
    assert build_images.debian_mirror([lists]) == "http://one.example/debian"


def test_no_bookworm_main_mirror_is_a_clear_error(tmp_path):
    other = write(tmp_path, "nodesource.sources", "Types: deb\nURIs: https://n.example/node\nSuites: nodistro\n"
                  "Components: main\n")
    with pytest.raises(build_images.BuildError, match="no Debian mirror for bookworm main"):
        build_images.debian_mirror([other, tmp_path / "missing.list"])


def test_base_tag_follows_the_recipe():
    assert build_images.base_tag("http://a.example/debian") == build_images.base_tag("http://a.example/debian")
    assert build_images.base_tag("http://a.example/debian") != build_images.base_tag("http://b.example/debian")
    assert build_images.base_tag("http://a.example/debian").startswith("kemi-outbound-base:")


def test_the_image_carries_the_subscriber_schema_and_tool():
    """Digest authentication: auth_db's SQLite / PostgreSQL modules in the base (their
    schema files too), db/ and tools/ko-subscriber in the project image's hash."""
    assert {"kamailio-sqlite-modules", "kamailio-postgres-modules"} <= set(build_images.BASE_PACKAGES)
    assert {"db", "tools/ko-subscriber", "docker/ko-subscriber"} <= set(build_images.IMAGE_INPUTS)
    dockerfile = (SCRIPT.parent / "Dockerfile").read_text()
    assert "COPY tools/ko-subscriber /usr/share/kemi-outbound/tools/ko-subscriber" in dockerfile
    assert "COPY db /usr/share/kemi-outbound/db" in dockerfile


def test_the_edges_of_the_topology_listen_on_websocket():
    """Issue 15: the base image has Kamailio's websocket module (xhttp is in
    kamailio), and compose.yaml gives edge1 and edge2 WITH_WEBSOCKET on :8080,
    the registrars and UAs none of it."""
    import yaml

    assert "kamailio-websocket-modules" in build_images.BASE_PACKAGES
    services = yaml.safe_load((SCRIPT.parent / "compose.yaml").read_text())["services"]
    for edge in ("edge1", "edge2"):
        env = services[edge]["environment"]
        assert env["KO_DEFINES"] == "${KO_EDGE_DEFINES-WITH_WEBSOCKET}" and env["KO_WS_PORT"] == "8080", env
    for other in ("reg1", "reg2", "ua-a", "ua-b", "dns"):
        assert "WITH_WEBSOCKET" not in str(services[other].get("environment", {})), other
