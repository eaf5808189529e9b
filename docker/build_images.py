#!/usr/bin/python3
"""Build the kemi-outbound container images locally, with no registry at all.

1. The base image ``kemi-outbound-base:<hash>``: a Debian bookworm root file
   system made by ``debootstrap`` from the Debian mirror this machine's apt
   already uses, with Kamailio, SIPp, NSD and the Python libraries installed
   from Debian packages, turned into an image by ``docker import``.
2. The project image ``kemi-outbound:<hash>``: ``docker/Dockerfile`` on top of
   the base, adding ``kemi/``, ``cfg/``, ``db/`` (the subscriber schema),
   ``tools/ko-subscriber`` and the small entry scripts. One image
   plays every role: edge, registrar, SIPp UA and DNS server.

Each tag is a hash of what goes into the image, so a build is skipped when an
image with the same content exists, and rebuilt when anything changes.
Run as root (debootstrap and the Docker socket need it). Prints the project
image name on stdout as its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
SUITE = "bookworm"
BASE_REPO = "kemi-outbound-base"
IMAGE_REPO = "kemi-outbound"
BASE_PACKAGES = (
    "kamailio", "kamailio-python3-modules", "kamailio-outbound-modules", "sip-tester",
    # digest authentication: auth_db on SQLite (the schema files too) or PostgreSQL
    "kamailio-sqlite-modules", "kamailio-postgres-modules",
    # SIP over WebSocket at the edges (cfg WITH_WEBSOCKET: xhttp is in kamailio, websocket here)
    "kamailio-websocket-modules",
    "python3-yaml", "python3-dnspython", "nsd", "iproute2", "procps", "tini",
)
# What goes into the project image (hashed into its tag).
IMAGE_INPUTS = ("docker/Dockerfile", "docker/entrypoint.sh", "docker/ko-rpc", "docker/ko-subscriber", "docker/dns",
                "kemi", "cfg", "db", "tools/ko-subscriber", "tests/sipp")
LABEL = "org.kemi-outbound.image"


class BuildError(RuntimeError):
    pass


def log(text: str) -> None:
    print(f"build-images: {text}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], text=True, capture_output=True, **kw)
    if check and result.returncode != 0:
        raise BuildError(f"docker {' '.join(args[:3])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def debian_mirror(sources: list[Path] | None = None) -> str:
    """The first Debian mirror apt is configured with for ``bookworm`` main
    (one-line ``deb`` lists or deb822 ``.sources`` files)."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list")]
        folder = Path("/etc/apt/sources.list.d")
        if folder.is_dir():
            sources += sorted(folder.iterdir())
    for path in sources:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if ("deb" in fields.get("types", []) and SUITE in fields.get("suites", [])
                        and "main" in fields.get("components", []) and fields.get("uris")):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                    return words[1]
    raise BuildError(f"no Debian mirror for {SUITE} main in /etc/apt/sources.list(.d)")


def base_tag(mirror: str) -> str:
    recipe = "\n".join([SUITE, "minbase", *BASE_PACKAGES, mirror, "v1"])
    return f"{BASE_REPO}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def ensure_base() -> str:
    mirror = debian_mirror()
    name = base_tag(mirror)
    if image_exists(name):
        log(f"base image {name} exists")
        return name
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (tools/install-docker installs it)")
    log(f"building {name}: debootstrap {SUITE} from {mirror} (about a minute or two)")
    with tempfile.TemporaryDirectory(prefix="ko-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               SUITE, str(rootfs), mirror]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-3000:]
            debootstrap_log = rootfs / "debootstrap" / "debootstrap.log"
            if debootstrap_log.exists():
                tail += "\n" + debootstrap_log.read_text(errors="replace")[-3000:]
            raise BuildError(f"debootstrap failed ({result.returncode}):\n{tail}")
        # keep the image small and free of this machine's apt state
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / sub).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", f"LABEL {LABEL}=base", "--change", 'CMD ["/bin/bash"]', "-", name],
            stdin=tar.stdout, capture_output=True, text=True)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise BuildError(f"docker import failed: {imported.stderr.strip()}")
    log(f"base image {name} built")
    return name


def content_hash(base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for entry in IMAGE_INPUTS:
        path = ROOT / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
            digest.update(str(file.stat().st_mode & 0o111).encode())
    return digest.hexdigest()[:12]


def ensure_image(base: str) -> str:
    name = f"{IMAGE_REPO}:{content_hash(base)}"
    if image_exists(name):
        log(f"image {name} exists")
        return name
    log(f"building {name} from docker/Dockerfile")
    with tempfile.TemporaryDirectory(prefix="ko-context-") as tmp:
        context = Path(tmp)
        for entry in IMAGE_INPUTS:
            source = ROOT / entry
            target = context / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        result = subprocess.run(
            ["docker", "build", "--network", "none", "--force-rm", "--build-arg", f"BASE={base}",
             "--label", f"{LABEL}=app", "-t", name, "-f", str(context / "docker/Dockerfile"), str(context)],
            capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise BuildError(f"docker build failed:\n{(result.stdout + result.stderr)[-4000:]}")
    log(f"image {name} built")
    # earlier builds of the project image, unused for a day: gone (the base stays)
    docker("image", "prune", "-a", "-f", "--filter", f"label={LABEL}=app", "--filter", "until=24h", check=False)
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-only", action="store_true", help="only make sure the base image exists")
    args = parser.parse_args()
    try:
        base = ensure_base()
        print(base if args.base_only else ensure_image(base))
    except BuildError as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
