"""qcow2 images (vmm/block/qcow2.py) against QEMU's own tools: what kvmkit writes
passes `qemu-img check` and equals (`qemu-img compare`) a raw image given the
same writes, whatever the version, cluster size, refcount width, backing file,
compression or snapshots; broken images are refused with a clear error."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess

import pytest

from vmm.block.qcow2 import Corrupt, Qcow2Image, create
from vmm.block.raw import RawImage
from vmm.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
SIZE = 8 << 20


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def qemu_img_check(path) -> dict:
    result = run("qemu-img", "check", "--output=json", str(path))
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return report


def open_chain(path: str, read_only: bool = False) -> Qcow2Image:
    image = Qcow2Image(RawImage(path, read_only=read_only), read_only=read_only, unmap=True)
    if image.backing_file:
        backing = os.path.join(os.path.dirname(path), image.backing_file)
        image.backing = open_chain(backing, read_only=True) \
            if image.backing_format != "raw" else RawImage(backing, read_only=True)
    return image


def exercise(image: Qcow2Image, mirror: RawImage, seed: int, operations: int) -> None:
    """Random writes, zeroings and discards on both; every read agrees."""
    rnd = random.Random(seed)
    for _ in range(operations):
        offset = rnd.randrange(SIZE // 512) * 512
        length = min(rnd.choice((512, 4096, 65536, 69632, 299008)), SIZE - offset)
        choice = rnd.random()
        if choice < 0.7:
            data = rnd.randbytes(length)
            image.write(offset, data)
            mirror.write(offset, data)
        elif choice < 0.85:
            image.write_zeroes(offset, length, rnd.random() < 0.5)
            mirror.write(offset, bytes(length))
        else:                          # what a discarded range reads is unspecified
            image.discard(offset, length)
            now = bytearray(length)
            image.read_into(offset, [memoryview(now)])
            mirror.write(offset, now)
        at = rnd.randrange(SIZE // 512) * 512
        length = min(length, SIZE - at)
        ours, theirs = bytearray(length), bytearray(length)
        split = length // 3
        image.read_into(at, [memoryview(ours)[:split], memoryview(ours)[split:]])
        mirror.read_into(at, [memoryview(theirs)])
        assert ours == theirs


def with_backing(tmp_path):
    base = tmp_path / "base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), str(SIZE))
    run("qemu-io", "-c", "write -P 0x5a 0 3M", "-c", "write -P 0x33 5M 1M", str(base))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
        str(tmp_path / "test.qcow2"), str(SIZE))


def raw_backing(tmp_path):
    (tmp_path / "base.raw").write_bytes(b"\x77" * SIZE)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
        str(tmp_path / "test.qcow2"), str(SIZE))


def compressed(kind):
    def make(tmp_path):
        source = tmp_path / "source.raw"
        source.write_bytes(bytes(range(256)) * (SIZE // 256))
        run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", f"compression_type={kind}",
            str(source), str(tmp_path / "test.qcow2"))
    return make


def with_snapshot(tmp_path):
    path = str(tmp_path / "test.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(SIZE))
    run("qemu-io", "-c", "write -P 0x77 0 4M", path)
    run("qemu-img", "snapshot", "-c", "before", path)


def created(options):
    def make(tmp_path):
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options,
            str(tmp_path / "test.qcow2"), str(SIZE))
    return make


@pytest.mark.parametrize("make", [
    created("compat=1.1"), created("compat=0.10"), created("cluster_size=512"),
    created("cluster_size=512,refcount_bits=1"), created("cluster_size=1024,refcount_bits=64"),
    created("cluster_size=2M"), with_backing, raw_backing, compressed("zlib"),
    compressed("zstd"), with_snapshot],
    ids=["v3", "v2", "512-byte-clusters", "1-bit-refcounts", "64-bit-refcounts",
         "2M-clusters", "qcow2-backing", "raw-backing", "zlib", "zstd", "snapshot"])
def test_writes_pass_qemu_img_check_and_compare(tmp_path, make):
    make(tmp_path)
    path = str(tmp_path / "test.qcow2")
    mirror_path = str(tmp_path / "mirror.raw")
    assert run("qemu-img", "convert", "-O", "raw", path, mirror_path).returncode == 0
    image, mirror = open_chain(path), RawImage(mirror_path)
    exercise(image, mirror, seed=len(str(tmp_path)), operations=150)
    image.flush()
    image.close()
    image.file.close()
    mirror.close()
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    compared = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, mirror_path)
    assert compared.returncode == 0, compared.stdout
    if make is with_snapshot:                  # the snapshot still reads as it was
        listed = run("qemu-img", "snapshot", "-l", path).stdout
        assert "before" in listed
        run("qemu-img", "snapshot", "-a", "before", path)
        check = run("qemu-io", "-c", "read -P 0x77 0 4M", path)
        assert "Pattern verification failed" not in check.stdout, check.stdout


def test_the_refcount_table_grows(tmp_path):
    """512-byte clusters: one table cluster counts 8 MiB; writing 20 MiB grows it."""
    path = str(tmp_path / "grow.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, "24M")
    image = Qcow2Image(RawImage(path))
    assert image.rt_clusters == 1
    for offset in range(0, 20 << 20, 65536):
        image.write(offset, bytes([offset >> 16 & 255]) * 65536)
    assert image.rt_clusters > 1
    image.close()
    image.file.close()
    assert qemu_img_check(path).get("leaks", 0) == 0
    pattern = run("qemu-io", "-c", "read -P 0x13 0x130000 64k", path)
    assert "verification failed" not in pattern.stdout, pattern.stdout


def test_resize_grows_and_shrinks(tmp_path):
    path = str(tmp_path / "r.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M")
    image = Qcow2Image(RawImage(path))
    image.write((8 << 20) - 4096, b"\x11" * 4096)
    image.truncate(64 << 20)                    # beyond what one L1 cluster holds
    image.write((64 << 20) - 4096, b"\x22" * 4096)
    image.truncate(32 << 20)
    image.close()
    image.file.close()
    assert qemu_img_check(path).get("leaks", 0) == 0
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert info["virtual-size"] == 32 << 20
    assert "verification failed" not in run("qemu-io", "-c", "read -P 0x11 8188k 4k",
                                            path).stdout


def test_created_images_are_valid(tmp_path):
    for size in (0, 1 << 20, 10 << 30, 5 << 40):
        path = tmp_path / f"new-{size}.qcow2"
        create(str(path), size)
        assert qemu_img_check(path).get("corruptions", 0) == 0
        info = json.loads(run("qemu-img", "info", "--output=json", str(path)).stdout)
        assert info["virtual-size"] == size


def test_a_dirty_image_gets_its_refcounts_rebuilt(tmp_path):
    """A lazy-refcounts image left dirty, with a refcount wrong, is repaired when it
    is opened for writing, and the bit cleared."""
    path = str(tmp_path / "dirty.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "8M")
    run("qemu-io", "-c", "write -P 0x42 0 1M", path)
    with open(path, "r+b") as f:
        header = bytearray(f.read(112))
        incompatible = struct.unpack_from(">Q", header, 72)[0] | 1
        f.seek(72)
        f.write(struct.pack(">Q", incompatible))
        f.seek(struct.unpack_from(">Q", header, 48)[0])
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block + 2 * 5)                  # cluster 5's count, lost
        f.write(b"\0\0")
    assert run("qemu-img", "check", path).returncode != 0
    image = Qcow2Image(RawImage(path))
    assert not image.dirty
    image.close()
    image.file.close()
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert info["dirty-flag"] is False


def _patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _l1_offset(path) -> int:
    with open(path, "rb") as f:
        f.seek(40)
        return struct.unpack(">Q", f.read(8))[0]


BROKEN = {
    "not-qcow2": (lambda p: _patch(p, 0, b"XXXX"), "Image is not in qcow2 format"),
    "version-4": (lambda p: _patch(p, 4, struct.pack(">I", 4)), "Unsupported qcow2 version 4"),
    "cluster-bits": (lambda p: _patch(p, 20, struct.pack(">I", 30)),
                     "Unsupported cluster size: 2^30"),
    "l2-past-end": (lambda p: _patch(p, _l1_offset(p), struct.pack(">Q", (1 << 63) | 1 << 40)),
                    "L2 table offset 0x10000000000 past the end of the image"),
    "l2-unaligned": (lambda p: _patch(p, _l1_offset(p), struct.pack(">Q", 0x30200)),
                     "L2 table offset 0x30200 unaligned"),
    "truncated-l1": (lambda p: os.truncate(p, 0x30000),
                     "Active L1 table lies past the end of the image"),
    "truncated-refblock": (lambda p: os.truncate(p, 0x20000),
                           "Refcount block offset 0x20000 (refcount table index 0) lies past"),
    "refcount-order": (lambda p: _patch(p, 96, struct.pack(">I", 7)),
                       "Reference count entry width too large"),
    "refcount-table-huge": (lambda p: _patch(p, 56, struct.pack(">I", 1 << 20)),
                            "Reference count table too large"),
    "unknown-feature": (lambda p: _patch(p, 72, struct.pack(">Q", 1 << 40)),
                        "Unsupported qcow2 feature(s): Unknown incompatible feature: "
                        "10000000000"),
    "corrupt-bit": (lambda p: _patch(p, 72, struct.pack(">Q", 2)),
                    "qcow2: Image is corrupt; cannot be opened read/write"),
    "l1-too-small": (lambda p: _patch(p, 36, struct.pack(">I", 0)), "L1 table is too small"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_images_are_refused_when_opened(tmp_path, case):
    path = str(tmp_path / "broken.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
    run("qemu-io", "-c", "write -P 1 0 64k", path)
    before = os.path.getsize(path)
    breaker, message = BROKEN[case]
    breaker(path)
    size = os.path.getsize(path)
    file = RawImage(path)
    with pytest.raises(UserError) as refused:
        Qcow2Image(file)
    file.close()
    assert message in str(refused.value)
    assert os.path.getsize(path) == size and size <= before       # nothing written


def test_a_backing_loop_is_refused(tmp_path):
    from vmm.block.graph import BlockGraph

    run("qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2",
        str(tmp_path / "b.qcow2"), "1M")
    run("qemu-img", "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", str(tmp_path / "a.qcow2"))
    graph = BlockGraph()
    with pytest.raises(UserError) as refused:
        graph.open({"driver": "qcow2", "file": {"driver": "file",
                                                 "filename": str(tmp_path / "a.qcow2")}}, {})
    assert "creates an infinite loop" in str(refused.value)
    assert graph.nodes == []                    # everything opened on the way was closed


def test_corruption_found_later_marks_the_image_corrupt(tmp_path):
    """An L2 entry pointing past the end: the read fails, the header's corrupt bit is
    set (qemu-img sees it), and later requests fail too, without writing data."""
    path = str(tmp_path / "c.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
    run("qemu-io", "-c", "write -P 1 0 64k", path)
    image = Qcow2Image(RawImage(path))
    l2 = image.l1[0] & 0x00FFFFFFFFFFFE00
    image.close()
    image.file.close()
    _patch(path, l2, struct.pack(">Q", (1 << 63) | (1 << 40)))
    image = Qcow2Image(RawImage(path))
    with pytest.raises(Corrupt):
        image.read_into(0, [memoryview(bytearray(512))])
    with pytest.raises(OSError):
        image.write(1 << 20, b"x" * 512)
    image.close()
    image.file.close()
    info = json.loads(run("qemu-img", "info", "--output=json", "-U", path).stdout)
    assert info["format-specific"]["data"]["corrupt"] is True


def test_concurrent_requests_keep_the_image_consistent(tmp_path):
    """Four threads (as the I/O engine's workers) write, zero and discard regions
    of their own at once; each reads back what it wrote and the image stays clean."""
    import threading

    path = str(tmp_path / "shared.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path,
        str(SIZE))
    image = Qcow2Image(RawImage(path), unmap=True)
    region = SIZE // 4
    failures = []

    def worker(n: int) -> None:
        rnd = random.Random(n)
        mine = bytearray(region)
        base = n * region
        try:
            for _ in range(300):
                offset = rnd.randrange(region // 512) * 512
                length = min(rnd.choice((512, 4096, 12288, 65536)), region - offset)
                if rnd.random() < 0.8:
                    data = rnd.randbytes(length)
                    image.write(base + offset, data)
                    mine[offset:offset + length] = data
                else:
                    image.write_zeroes(base + offset, length, True)
                    mine[offset:offset + length] = bytes(length)
            back = bytearray(region)
            image.read_into(base, [memoryview(back)])
            if back != mine:
                failures.append(n)
        except Exception as e:              # reported below, with the thread
            failures.append((n, e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    image.close()
    image.file.close()
    assert failures == []
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
