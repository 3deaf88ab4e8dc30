"""The spool (scp/spool.py): files written straight to the kernel, and the pool of
ready files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scp import spool


def test_a_spool_file_writes_through_and_discards_without_a_trace(tmp_path: Path) -> None:
    spooled = spool.SpoolFile(tmp_path)
    spooled.write(b"DICM" * 256)
    assert os.path.getsize(spooled.name) == 1024 and spooled.tell() == 1024
    spooled.close()
    spooled.discard()
    assert list(tmp_path.iterdir()) == []


def _wait_full(expected: int) -> set[str]:
    """The pool's files once it holds ``expected`` (bounded wait: the thread makes one in
    well under a millisecond)."""
    deadline = time.monotonic() + 10
    while len(spool.ready_names()) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    # ready_names() counts a file the thread is still creating: wait until it is made.
    pool = spool._pool
    while pool is not None and pool._making is not None and time.monotonic() < deadline:
        time.sleep(0.001)
    return spool.ready_names()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[Path]:
    """The spool installed in a folder of its own, its pool stopped afterwards."""
    folder = tmp_path / "spool"
    spool.install(folder)
    yield folder
    spool.shutdown()


def test_the_pool_hands_out_distinct_empty_files_and_refills(pooled: Path) -> None:
    ready = _wait_full(spool.POOL_SIZE)
    assert len(ready) == spool.POOL_SIZE
    assert {p.name for p in pooled.iterdir()} == {Path(n).name for n in ready}
    taken = [spool.open_spool() for _ in range(spool.POOL_SIZE + 2)]  # two past the pool
    files = [t for t in taken if t is not None]
    assert len({f.name for f in files}) == len(taken)
    for f in files:
        assert os.stat(f.name).st_size == 0
        assert os.stat(f.name).st_mode & 0o777 == 0o600
        assert Path(f.name).name.startswith(f"{os.getpid()}-") and f.name.endswith(".part")
    assert ready & {f.name for f in files}, "the pool's own files were handed out"
    # The thread refills while files are still being taken and rests once the pool is
    # full; a take after that leaves it above half, which wakes nothing (by design), so
    # the pool is somewhere above half here, never holding a file handed out.
    refilled = _wait_full(spool.POOL_SIZE // 2 + 1)
    assert len(refilled) > spool.POOL_SIZE // 2 and not refilled & {f.name for f in files}
    for f in files:
        f.write(b"x")
        f.discard()
    half = [spool.open_spool() for _ in range(spool.POOL_SIZE // 2)]  # wakes the thread
    assert len(_wait_full(spool.POOL_SIZE)) == spool.POOL_SIZE
    for spooled in half:
        assert spooled is not None
        spooled.discard()


def test_an_orderly_stop_leaves_no_file_and_no_descriptor(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool.shutdown()  # another test's pool, if any
    before = _fds()
    spool.install(folder)
    _wait_full(spool.POOL_SIZE)
    assert _fds() == before + spool.POOL_SIZE
    used = spool.open_spool()
    assert used is not None
    used.discard()
    assert len(spool.ready_names()) == spool.POOL_SIZE - 1  # refilled at half only
    spool.shutdown()
    assert list(folder.iterdir()) == []
    assert _fds() == before
    assert spool.ready_names() == set()
    spooled = spool.open_spool()  # still installed: created inline
    assert spooled is not None
    spooled.discard()
    assert _fds() == before


def test_a_failing_folder_is_logged_once_and_files_are_created_inline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "POOL_BACKOFF_S", 0.01)
    folder = tmp_path / "spool"
    spool.install(folder)
    _wait_full(spool.POOL_SIZE)
    spool.shutdown()
    folder.rmdir()
    pool = spool._Pool(folder)  # as install's, on a folder that went away
    monkeypatch.setattr(spool, "_pool", pool)
    try:
        with caplog.at_level(logging.WARNING, logger="courier.scp.spool"):
            for _ in range(3):
                with pytest.raises(FileNotFoundError):  # inline, as without a pool
                    spool.open_spool()
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)  # several retries (back-off 0.01 s, doubling)
        warnings = [r for r in caplog.records if "cannot prepare spool files" in r.message]
        assert len(warnings) == 1
        folder.mkdir()  # the folder is back: the pool fills again
        with caplog.at_level(logging.INFO, logger="courier.scp.spool"):
            assert len(_wait_full(spool.POOL_SIZE)) == spool.POOL_SIZE
    finally:
        pool.shutdown()
    assert list(folder.iterdir()) == []
