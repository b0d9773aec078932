"""The block layer: a raw image behind BlockBackend, and the I/O engine that runs
blocking calls off the caller's thread and completes them under the machine lock."""

from __future__ import annotations

import threading
import time

import pytest

from vmm.block.engine import IoEngine
from vmm.block.raw import RawImage


def test_raw_image_reads_writes_discards_and_zeroes(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xAA" * (1 << 20))
    image = RawImage(str(path), unmap=True)
    assert image.size == 1 << 20 and not image.read_only
    image.write(4096, b"hello")
    first, second = memoryview(bytearray(3)), memoryview(bytearray(4))
    image.read_into(4096, [first, second])
    assert bytes(first) + bytes(second) == b"hel" + b"lo\xAA\xAA"
    image.write_zeroes(8192, 4096, may_unmap=False)
    image.discard(65536, 65536)
    image.flush()
    data = path.read_bytes()
    assert data[8192:12288] == bytes(4096)
    assert data[65536:131072] == bytes(65536)          # punched: reads back as zeroes
    assert path.stat().st_blocks * 512 < 1 << 20       # and deallocated
    image.close()
    keep = RawImage(str(path), unmap=False)            # discard=ignore: nothing changes
    keep.discard(0, 4096)
    assert path.read_bytes()[:4] == b"\xAA" * 4
    keep.close()


def test_engine_runs_work_off_the_lock_and_completes_under_it():
    lock = threading.RLock()
    engine = IoEngine(lock)
    seen = []
    started = threading.Event()

    def work():
        started.set()
        seen.append(("work", threading.current_thread().name, lock._is_owned()))
        return 7

    def done(result):
        seen.append(("done", result, lock._is_owned()))

    with lock:                        # the submitter (a vCPU) holds the lock
        engine.submit(work, done)
        assert started.wait(5)        # the work ran while the lock was held elsewhere
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [("work", "io #0", False), ("done", 7, True)] or \
        (seen[0][0], seen[0][1].startswith("io #"), seen[0][2], seen[1]) == \
        ("work", True, False, ("done", 7, True))


def test_engine_has_several_requests_in_flight():
    """A queue depth above one reaches the disk: four calls run at the same time
    (each waits for all four to have started)."""
    lock = threading.RLock()
    engine = IoEngine(lock, workers=4)
    barrier = threading.Barrier(4, timeout=5)
    results = []
    for n in range(4):
        engine.submit(lambda n=n: (barrier.wait(), n)[1], results.append)
    deadline = time.monotonic() + 5
    while len(results) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    assert sorted(results) == [0, 1, 2, 3]
    engine.close()


def test_cancel_drops_completions_of_earlier_work():
    lock = threading.RLock()
    engine = IoEngine(lock)
    release = threading.Event()
    completed = []
    with lock:
        engine.submit(lambda: release.wait(5), completed.append)     # in progress
        engine.submit(lambda: 2, completed.append)                   # queued
        time.sleep(0.05)
        threading.Timer(0.1, release.set).start()
        engine.cancel()               # waits for the call in progress, holds the lock
    engine.submit(lambda: 3, completed.append)
    deadline = time.monotonic() + 5
    while completed != [3] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert completed == [3]
    engine.close()


@pytest.mark.kvm
@pytest.mark.qemu
@pytest.mark.parametrize("first, second, readonly, message", [
    ("qemu", "kvmkit", False, 'Failed to get "write" lock'),
    ("kvmkit", "qemu", False, 'Failed to get "write" lock'),
    ("kvmkit", "kvmkit", True, 'Failed to get shared "write" lock'),
    ("qemu", "kvmkit", True, 'Failed to get shared "write" lock')])
def test_an_image_in_use_is_locked_against_qemu_and_kvmkit(tmp_path, first, second, readonly,
                                                           message):
    """QEMU's image locks, both ways: a second writer, or a reader that would not let
    the first write, is refused with QEMU's words, whichever VMM came first."""
    import subprocess

    from guest import QEMU, kvmkit_command, start_with_qmp

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    vmm = {"kvmkit": kvmkit_command(), "qemu": [QEMU, "-accel", "kvm"]}
    args = ["-nodefaults", "-display", "none", "-S", "-drive",
            f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"]
    holder = start_with_qmp(vmm[first] + args, str(tmp_path / "first.sock"))
    try:
        drive = f"file={image},format=raw,if=none,id=d0" + (",readonly=on" if readonly else "")
        result = subprocess.run(vmm[second] + args[:-3] + [drive, "-device",
                                                           "virtio-blk-pci,drive=d0"],
                                capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 1
        assert result.stderr.splitlines()[-2:] == [
            f"{result.stderr.splitlines()[-2].split(':')[0]}: -device virtio-blk-pci,drive=d0: "
            f"{message}", f"Is another process using the image [{image}]?"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.kvm
def test_readers_share_an_image(tmp_path):
    from guest import kvmkit_command, start_with_qmp

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    args = ["-nodefaults", "-display", "none", "-S", "-drive",
            f"file={image},format=raw,if=none,id=d0,readonly=on",
            "-device", "virtio-blk-pci,drive=d0"]
    first = start_with_qmp(kvmkit_command() + args, str(tmp_path / "a.sock"))
    second = start_with_qmp(kvmkit_command() + args, str(tmp_path / "b.sock"))
    try:
        assert first.poll() is None and second.poll() is None
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_direct_io_takes_misaligned_buffers_and_offsets(tmp_path):
    """cache=none: a guest's buffer need not be aligned, nor a qcow2 metadata write
    whole blocks; both go through the bounce buffer and land where they should."""
    path = tmp_path / "direct.img"
    path.write_bytes(bytes(range(256)) * 64)
    image = RawImage(str(path), direct=True)
    image.write(100, b"\x01" * 1000)                     # neither end on a block
    backing = bytearray(8192)
    odd = memoryview(backing)[3:3 + 4096]                # a misaligned guest buffer
    image.read_into(4096, [odd])
    image.close()
    expected = bytearray(bytes(range(256)) * 64)
    expected[100:1100] = b"\x01" * 1000
    assert path.read_bytes() == bytes(expected)
    assert bytes(odd) == bytes(expected[4096:8192])


def test_a_throttle_group_shares_its_limit():
    """Two drives in one group at iops=100: together they get 100 a second (after
    the bucket's first tenth of a second), not 100 each."""
    from vmm.block.throttle import ThrottleConfig, ThrottleGroup

    group = ThrottleGroup("g", ThrottleConfig({"iops": 100}))
    never = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [group.acquire(False, 4096, never)
                                                for _ in range(40)]) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert 0.65 <= elapsed <= 1.2, elapsed            # (80 - 10) / 100 seconds
