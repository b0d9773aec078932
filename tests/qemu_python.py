"""QEMU's own Python harness (python/qemu/machine: QEMUMachine), fetched for the
tests that drive kvmkit with it. It is not on PyPI, so it comes out of Debian's
QEMU source tarballs: 7.2 (bookworm; its QEMUMachine listens on a socket path)
and the newest trixie release (10.x; its QEMUMachine hands the VMM one end of a
socketpair). Each is checked against the digest Debian publishes, unpacked once
into a cache directory and never committed here."""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import tarfile
import urllib.request
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("KVMKIT_TEST_CACHE",
                            Path.home() / ".cache" / "kvmkit-tests"))


def _sources_entry(suite: str, package: str) -> tuple[str, str]:
    """(orig tarball name, its sha256) of a source package in a Debian suite."""
    url = f"{MIRROR}/dists/{suite}/main/source/Sources.xz"
    with urllib.request.urlopen(url, timeout=60) as response:
        text = lzma.decompress(response.read()).decode(errors="replace")
    for stanza in text.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M) is None:
            continue
        checksums = stanza.split("Checksums-Sha256:", 1)[1]
        for line in checksums.splitlines()[1:]:
            if not line.startswith(" "):
                break
            digest, _size, name = line.split()
            if name.endswith(".orig.tar.xz"):
                return name, digest
    raise LookupError(f"{package} not found in {suite}")


def machine_package(suite: str) -> Path:
    """A directory whose qemu/machine is that suite's QEMUMachine, to put first on
    PYTHONPATH (with the qemu/qmp of its time if the tarball has one; else
    qemu.qmp comes from PyPI, as newer QEMU's harness expects)."""
    name, digest = _sources_entry(suite, "qemu")
    target = CACHE / name.removesuffix(".orig.tar.xz")
    if (target / "qemu" / "machine" / "machine.py").exists() and \
            (target / "complete").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / name
    if not tarball.exists() or hashlib.sha256(tarball.read_bytes()).hexdigest() != digest:
        prefix = name.split("_")[0][:1]
        with urllib.request.urlopen(f"{MIRROR}/pool/main/{prefix}/qemu/{name}",
                                    timeout=300) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise OSError(f"{name}: sha256 does not match Debian's Sources")
        tarball.write_bytes(data)
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            # qemu/machine, and qemu/qmp where the tarball still has it (7.2's
            # QEMUMachine calls the QMP library of its own time)
            if parts[1:3] == ["python", "qemu"] and len(parts) > 3 and \
                    parts[3] in ("machine", "qmp") and member.isfile():
                member.name = "/".join(parts[2:])          # qemu/machine/...
                tar.extract(member, target, filter="data")
    (target / "complete").touch()
    return target
