"""The block layer: a raw image behind BlockBackend, and the I/O engine that runs
blocking calls off the caller's thread and completes them under the machine lock."""

from __future__ import annotations

import threading
import time

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
    assert seen == [("work", "io", False), ("done", 7, True)]
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
