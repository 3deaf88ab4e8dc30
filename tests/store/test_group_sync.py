"""Group commit of folder flushes: who waits for which flush, and what a failure does.

The flush is injected: it records, in one event log, the names the folder held when the
flush began and when it ended; placers record when they return. No timing: concurrency
is forced by holding the first flush until every thread has asked for one.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from store.content import ContentStore
from store.group_sync import GroupSync

WAIT_S = 60.0  # a safety net against a hang, never a measurement


@dataclass
class Recorder:
    """An fsync that records what each flush covered and, on one clock, when it ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_first: Callable[[], None] | None = None  # runs inside the first flushes
    held: int = 1  # how many of the first flushes run hold_first
    fail_with: int | None = None  # errno of every flush, or None
    flushes: int = 0
    clock: int = 0  # one tick per event: flush ended, placer returned
    covered: dict[int, tuple[Path, frozenset[str]]] = field(default_factory=dict)
    ended: dict[int, int] = field(default_factory=dict)  # flush -> tick
    returned_at: dict[str, int] = field(default_factory=dict)  # name -> tick
    active: dict[Path, int] = field(default_factory=dict)  # flushes running per folder
    peak: int = 0  # the most flushes of one folder that ran at once

    def __call__(self, folder: Path) -> None:
        with self.lock:
            self.flushes += 1
            n = self.flushes
            # Everything in the folder now was linked before this flush began.
            self.covered[n] = (folder, frozenset(os.listdir(folder)))
            self.active[folder] = self.active.get(folder, 0) + 1
            self.peak = max(self.peak, self.active[folder])
        if n <= self.held and self.hold_first is not None:
            self.hold_first()
        with self.lock:
            self.clock += 1
            self.ended[n] = self.clock
            self.active[folder] -= 1
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with))

    def returned(self, name: str) -> None:
        with self.lock:
            self.clock += 1
            self.returned_at[name] = self.clock

    def covering(self, folder: Path, name: str) -> bool:
        """Whether a flush of ``folder`` that began after ``name`` was linked ended before
        its placer returned (the promise)."""
        back = self.returned_at[name]
        return any(
            flushed == folder and name in names and self.ended.get(n, back) < back
            for n, (flushed, names) in self.covered.items()
        )

    def reset(self) -> None:
        self.flushes = 0
        self.covered.clear()
        self.ended.clear()
        self.returned_at.clear()


class Arrivals(GroupSync):
    """GroupSync that counts the callers that have asked for a flush."""

    def __init__(self, fsync: Recorder, max_running: int = 1) -> None:
        super().__init__(fsync, max_running=max_running)
        self.arrived = 0
        self.cond = threading.Condition()

    def sync(self, folder: Path) -> None:
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
        super().sync(folder)

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.arrived >= n, WAIT_S), "callers missing"


def _spooled(content: ContentStore, name: str) -> Path:
    content.spool.mkdir(parents=True, exist_ok=True)
    path = content.spool / name
    path.write_bytes(name.encode())
    return path


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported to the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "a placer hung"
    return errors


@pytest.mark.parametrize("placers", [1, 2, 8])
def test_concurrent_placers_in_one_folder_share_two_flushes(tmp_path: Path, placers: int) -> None:
    """While one flush runs, everyone arriving waits for one next flush, not one each."""
    recorder = Recorder()
    syncs = Arrivals(recorder)
    content = ContentStore(tmp_path, syncs=syncs)
    warm = _spooled(content, "warm")
    content.place(warm, "instances/1/2/0.dcm")  # folders made and known before the race
    recorder.reset()
    syncs.arrived = 0
    recorder.hold_first = lambda: syncs.wait_for(placers)
    folder = tmp_path / "instances" / "1" / "2"

    def placer(i: int) -> Callable[[], None]:
        def place() -> None:
            content.place(_spooled(content, f"s{i}"), f"instances/1/2/{i + 1}.dcm")
            recorder.returned(f"{i + 1}.dcm")

        return place

    assert _run_threads([placer(i) for i in range(placers)]) == []
    assert recorder.flushes == min(placers, 2)
    for i in range(placers):
        assert recorder.covering(folder, f"{i + 1}.dcm"), f"placer {i} returned uncovered"
    assert syncs._folders == {}  # nobody waits: nothing remembered


@pytest.mark.parametrize("max_running", [1, 2, 3])
def test_many_threads_many_folders_every_placer_is_covered(
    tmp_path: Path, max_running: int
) -> None:
    """No forced overlap: whatever the interleaving, each return follows a covering flush,
    and no more than ``max_running`` flushes of one folder run at once."""
    recorder = Recorder()
    syncs = Arrivals(recorder, max_running)
    content = ContentStore(tmp_path, syncs=syncs)
    threads, per_thread, series = 6, 25, 2

    def placer(t: int) -> Callable[[], None]:
        def place() -> None:
            for k in range(per_thread):
                name = f"{t}-{k}.dcm"
                content.place(_spooled(content, f"s{t}-{k}"), f"instances/1/{k % series}/{name}")
                recorder.returned(name)

        return place

    assert _run_threads([placer(t) for t in range(threads)]) == []
    for t in range(threads):
        for k in range(per_thread):
            folder = tmp_path / "instances" / "1" / str(k % series)
            assert recorder.covering(folder, f"{t}-{k}.dcm")
    assert recorder.flushes <= syncs.arrived  # grouping never adds a flush
    assert recorder.peak <= max_running


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        # (folders already there, folders flushed in order: each folder's parent from the
        # top, then the instance's own folder)
        ((), [".", "instances", "instances/1", "instances/1/2"]),
        (("instances",), [".", "instances", "instances/1", "instances/1/2"]),
        # A folder seen for the first time is flushed into its parent even if it exists:
        # its maker (another thread, a killed process) may not have flushed it yet.
        (("instances/1/2",), [".", "instances", "instances/1", "instances/1/2"]),
    ],
)
def test_a_folders_name_is_flushed_into_its_parent_once_per_store(
    tmp_path: Path, existing: tuple[str, ...], expected: list[str]
) -> None:
    flushed: list[str] = []
    content = ContentStore(
        tmp_path, syncs=GroupSync(lambda p: flushed.append(p.relative_to(tmp_path).as_posix()))
    )
    for rel in existing:
        (tmp_path / rel).mkdir(parents=True)
    content.place(_spooled(content, "a"), "instances/1/2/a.dcm")
    assert flushed == expected
    flushed.clear()
    content.place(_spooled(content, "b"), "instances/1/2/b.dcm")
    content.place(_spooled(content, "c"), "instances/1/3/c.dcm")
    assert flushed == ["instances/1/2", "instances/1", "instances/1/3"]
    assert (tmp_path / "instances/1/2/a.dcm").read_bytes() == b"a"


def test_a_file_is_flushed_before_its_final_name_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name under instances/ always holds complete bytes: flush first, link after."""
    from store import content as content_module

    seen: list[bool] = []
    original = content_module.fsync_file
    final = tmp_path / "instances/1/2/a.dcm"

    def recording(path: Path, fd: int | None = None) -> None:
        seen.append(final.exists())
        original(path, fd)

    monkeypatch.setattr(content_module, "fsync_file", recording)
    content = ContentStore(tmp_path, syncs=GroupSync())
    content.place(_spooled(content, "a"), "instances/1/2/a.dcm")
    assert seen == [False] and final.read_bytes() == b"a"
    assert list(content.spool.iterdir()) == []


@pytest.mark.parametrize("err", [errno.EIO, errno.EROFS])
def test_a_failed_flush_fails_every_placer_it_covered(tmp_path: Path, err: int) -> None:
    """Each waiter gets the error (never retried into a false success); the next flush is
    a fresh one."""
    recorder = Recorder()
    syncs = Arrivals(recorder)
    content = ContentStore(tmp_path, syncs=syncs)
    content.place(_spooled(content, "warm"), "instances/1/2/0.dcm")
    recorder.reset()
    syncs.arrived = 0
    placers = 4
    recorder.hold_first = lambda: syncs.wait_for(placers)
    recorder.fail_with = err
    errors = _run_threads(
        [
            lambda i=i: content.place(_spooled(content, f"s{i}"), f"instances/1/2/{i + 1}.dcm")  # type: ignore[misc]
            for i in range(placers)
        ]
    )
    assert len(errors) == placers
    assert all(isinstance(e, OSError) and e.errno == err for e in errors)
    assert syncs._folders == {}
    recorder.fail_with = None
    content.place(_spooled(content, "again"), "instances/1/2/again.dcm")


@pytest.mark.parametrize("placers", [3, 8])
def test_callers_beyond_max_running_share_one_flush(tmp_path: Path, placers: int) -> None:
    """With two flushes allowed at once, both held until everyone has asked, everyone
    after the first two shares a third."""
    recorder = Recorder()
    syncs = Arrivals(recorder, max_running=2)
    content = ContentStore(tmp_path, syncs=syncs)
    content.place(_spooled(content, "warm"), "instances/1/2/0.dcm")
    recorder.reset()
    syncs.arrived = 0
    recorder.hold_first = lambda: syncs.wait_for(placers)
    recorder.held = 2
    folder = tmp_path / "instances" / "1" / "2"

    def placer(i: int) -> Callable[[], None]:
        def place() -> None:
            content.place(_spooled(content, f"s{i}"), f"instances/1/2/{i + 1}.dcm")
            recorder.returned(f"{i + 1}.dcm")

        return place

    assert _run_threads([placer(i) for i in range(placers)]) == []
    assert recorder.peak == 2 and recorder.flushes == 3
    for i in range(placers):
        assert recorder.covering(folder, f"{i + 1}.dcm")
    with pytest.raises(ValueError, match="max_running"):
        GroupSync(max_running=0)


def test_a_full_disk_during_the_flush_is_disk_full(tmp_path: Path) -> None:
    from store.errors import DiskFull

    def full(_folder: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    content = ContentStore(tmp_path, syncs=GroupSync(full))
    with pytest.raises(DiskFull):
        content.place(_spooled(content, "a"), "instances/1/2/a.dcm")


def test_remove_flushes_the_folder(tmp_path: Path) -> None:
    flushed: list[Path] = []
    content = ContentStore(tmp_path, syncs=GroupSync(flushed.append))
    content.place(_spooled(content, "a"), "instances/1/2/a.dcm")
    flushed.clear()
    content.remove("instances/1/2/a.dcm")
    content.remove("instances/1/2/a.dcm")  # already gone: nothing to flush
    assert flushed == [tmp_path / "instances/1/2"]
    assert not (tmp_path / "instances/1/2/a.dcm").exists()


def test_a_removed_folder_is_made_again(tmp_path: Path) -> None:
    content = ContentStore(tmp_path, syncs=GroupSync())
    content.place(_spooled(content, "a"), "instances/1/2/a.dcm")
    (tmp_path / "instances/1/2/a.dcm").unlink()
    (tmp_path / "instances/1/2").rmdir()
    content.place(_spooled(content, "b"), "instances/1/2/b.dcm")
    assert (tmp_path / "instances/1/2/b.dcm").read_bytes() == b"b"
