"""scp.ingest: two receiving processes storing the same SOP Instance UID with other
bytes. A file placed but not yet indexed is its writer's until it is older than
``orphan_after_s``: the second answers 0xA701 (retry later) and never replaces it; an
older one (its writer died before indexing it) is taken over; a writer whose file was
taken over (it looked dead, it was slow) leaves the new file alone; the threshold grows
with ``store.busy_timeout_s``. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from scp.ingest import ORPHAN_AFTER_S, Ingest, Peer, Status, orphan_after_s
from store.catalog import Catalog, InstanceRecord
from store.content import ContentStore
from store.errors import DatabaseUnavailable
from store.models import Instance, InstanceConflict
from tests import synthetic
from tests.conftest import Database

WAIT_S = 30.0
PEER = Peer("MODALITY_A", "COURIER", "127.0.0.1")


class _HeldCatalog(Catalog):
    """A catalog whose index writes wait until released: a writer that placed its file
    and waits on a busy index."""

    def __init__(self, db: Database, *, fails: bool = False) -> None:
        super().__init__(db.sessions)
        self.waiting = threading.Event()
        self.release = threading.Event()
        self.fails = fails  # once released, the write gives up instead

    def add(
        self, rec: InstanceRecord, received_at: datetime | None = None, *, relaxed: bool = False
    ) -> None:
        self.waiting.set()
        assert self.release.wait(WAIT_S)
        if self.fails:
            raise DatabaseUnavailable("the index kept refusing the row")
        super().add(rec, received_at, relaxed=relaxed)


def _two_versions(tmp_path: Path, spool: Path) -> tuple[pydicom.Dataset, Path, Path]:
    """One instance, and the same UIDs with other bytes, as two spooled files."""
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    ds = pydicom.dcmread(src)
    first, second = spool / "first.dcm", spool / "second.dcm"
    ds.save_as(first, enforce_file_format=True)
    ds.SeriesDescription = "OTHER BYTES"
    ds.save_as(second, enforce_file_format=True)
    return ds, first, second


def _store(ingest: Ingest, ds: pydicom.Dataset, path: Path) -> Status:
    return ingest.store(None, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), PEER)


def test_a_file_whose_writer_waits_on_the_index_is_never_replaced(
    db: Database, tmp_path: Path
) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    ds, first, second = _two_versions(tmp_path, content.spool)
    first_bytes, second_bytes = first.read_bytes(), second.read_bytes()
    held = _HeldCatalog(db)
    writer = Ingest(content, held)  # the first receiving process
    other = Ingest(content, Catalog(db.sessions))  # the second
    with ThreadPoolExecutor(1) as pool:
        first_status = pool.submit(_store, writer, ds, first)
        assert held.waiting.wait(WAIT_S)  # placed, its row not committed
        # The second finds a file with no row, placed just now: it answers a status
        # a sender retries and leaves the file alone.
        assert _store(other, ds, second) == Status.OUT_OF_RESOURCES_DB
        held.release.set()
        assert first_status.result(WAIT_S) == Status.SUCCESS
    with db.sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert content.path(row.path).read_bytes() == first_bytes  # what 0x0000 promised
    # Sent again, the other bytes are kept aside as any same-UID conflict is.
    if not second.exists():  # what the receive path does with its spooled file
        second.write_bytes(second_bytes)
    assert _store(other, ds, second) == Status.SUCCESS
    with db.sessions() as s:
        conflict = s.scalars(select(InstanceConflict)).one()
    assert content.path(row.path).read_bytes() == first_bytes
    assert content.path(conflict.path).read_bytes() == second_bytes


def test_a_file_whose_writer_died_before_indexing_it_is_taken_over(
    db: Database, tmp_path: Path
) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    ds, first, second = _two_versions(tmp_path, content.spool)
    second_bytes = second.read_bytes()
    rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    content.place(first, rel)  # placed; its writer died before the row
    later = time.time() + ORPHAN_AFTER_S + 1
    other = Ingest(content, Catalog(db.sessions), wall=lambda: later)
    assert _store(other, ds, second) == Status.SUCCESS
    with db.sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert row.path == rel
    assert content.path(rel).read_bytes() == second_bytes


@pytest.mark.parametrize(
    "writer_add_fails",
    [
        True,  # its write gives up: undoing its placement must not remove the new file
        False,  # its write finds the other's row: it must not move the other's file aside
    ],
)
def test_a_slow_writer_whose_file_was_taken_over_leaves_the_new_file_alone(
    db: Database, tmp_path: Path, writer_add_fails: bool
) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    ds, first, second = _two_versions(tmp_path, content.spool)
    second_bytes = second.read_bytes()
    rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    held = _HeldCatalog(db, fails=writer_add_fails)
    writer = Ingest(content, held)  # alive, but its index write outlasts orphan_after_s
    later = time.time() + ORPHAN_AFTER_S + 1
    other = Ingest(content, Catalog(db.sessions), wall=lambda: later)
    with ThreadPoolExecutor(1) as pool:
        first_status = pool.submit(_store, writer, ds, first)
        assert held.waiting.wait(WAIT_S)  # placed, its row not committed
        assert _store(other, ds, second) == Status.SUCCESS  # took the file over
        held.release.set()
        # Never acknowledged: the sender retries.
        assert first_status.result(WAIT_S) == Status.OUT_OF_RESOURCES_DB
    with db.sessions() as s:
        row = s.scalars(select(Instance)).one()
        conflicts = s.scalars(select(InstanceConflict)).all()
    assert row.path == rel
    assert content.path(rel).read_bytes() == second_bytes  # what 0x0000 promised
    assert conflicts == []


@pytest.mark.parametrize(
    ("busy_timeout_s", "expected_s"),
    [
        (0.5, ORPHAN_AFTER_S),  # never below the floor
        (2.0, ORPHAN_AFTER_S),  # 5 tries x 4 x 2 s + 60 s = 100 s: the floor
        (5.0, 160.0),  # the default: 5 tries x 4 x 5 s + 60 s
        (300.0, 6060.0),  # the largest store.busy_timeout_s allowed
    ],
)
def test_orphan_after_s_outlasts_the_longest_index_write(
    busy_timeout_s: float, expected_s: float
) -> None:
    assert orphan_after_s(busy_timeout_s) == expected_s
