"""Unreadable report instances never starve new ones (:mod:`ris.dicom`), on SQLite and
PostgreSQL.

Report instances are stored as the SCP would (content store, index rows from start-up
recovery); some are then damaged or taken away on disk. More of them than one sweep's
limit used to be selected again by every sweep, so new report instances were never
reached. Now each unreadable one is marked once and left out; new ones are recorded in
as many sweeps as they need; a marked one is read again a day after its last failure
(and recorded if it came back); its instance row is untouched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ris.dicom import RETRY_AFTER, DicomReports
from ris.reports import ReportBook
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Instance, Report
from tests.conftest import Database
from tests.ris.reportdata import make_pdf, make_sr

STUDY = "1.2.826.0.1.3680043.8.498.6161"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Store:
    db: Database
    content: ContentStore
    src: Path
    clock: Clock

    def push(self, n: int) -> list[str]:
        """Store ``n`` report instances (SR and PDF in turn); their relative paths."""
        rels = []
        for k in range(n):
            path, _ = (make_sr if k % 2 == 0 else make_pdf)(self.src, STUDY)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = self.content.instance_relpath(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            self.content.path(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.content.path(rel))
            rels.append(rel)
        recover(self.content, self.db.sessions, Catalog(self.db.sessions, clock=self.clock))
        return rels

    def recorded(self, rels: list[str]) -> int:
        with self.db.sessions() as s:
            return len(
                s.scalars(
                    select(Report.id)
                    .join(Instance, Instance.id == Report.instance_id)
                    .where(Instance.path.in_(rels))
                ).all()
            )

    def marked(self, rels: list[str]) -> list[datetime | None]:
        with self.db.sessions() as s:
            return list(
                s.scalars(select(Instance.report_unreadable_at).where(Instance.path.in_(rels)))
            )


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Store:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    src = tmp_path / "src"
    src.mkdir()
    return Store(db, content, src, Clock())


def _damage(store: Store, rels: list[str], how: str) -> None:
    for rel in rels:
        path = store.content.path(rel)
        if how == "garbage":
            path.write_bytes(b"not a DICOM file" * 20)
        elif how == "empty":
            path.write_bytes(b"")
        else:  # the file cannot be opened right now (unmounted, permissions)
            path.rename(path.with_name(path.name + ".away"))


@pytest.mark.parametrize(
    ("limit", "unreadable", "new", "how"),
    [
        (3, 7, 4, "garbage"),  # more unreadable than a sweep's limit
        (3, 3, 2, "empty"),  # exactly the limit
        (2, 5, 5, "empty"),
        (4, 0, 6, "garbage"),  # none unreadable: as before
    ],
)
def test_unreadable_report_instances_never_starve_new_ones(
    store: Store, limit: int, unreadable: int, new: int, how: str
) -> None:
    sweep = DicomReports(
        store.db.sessions,
        store.content,
        ReportBook(store.db.sessions, store.content),
        clock=store.clock,
    )
    bad = store.push(unreadable)
    _damage(store, bad, how)
    good = store.push(new)
    rounds = 0
    while store.recorded(good) < new:  # bounded: each sweep makes progress
        rounds += 1
        assert rounds <= (unreadable + new) // limit + 2, "new report instances starved"
        sweep.sweep(limit=limit)
    assert store.recorded(bad) == 0
    assert all(at == store.clock.now for at in store.marked(bad))  # staff can list them
    assert store.marked(good) == [None] * new
    # Later instances are reached at once, however many unreadable ones there are.
    later = store.push(1)
    assert sweep.sweep(limit=limit) == 1
    # A fresh process (first sweep: every instance) does not read the marked ones again.
    fresh = DicomReports(
        store.db.sessions,
        store.content,
        ReportBook(store.db.sessions, store.content),
        clock=store.clock,
    )
    assert fresh.sweep(limit=1) == 0
    assert store.recorded(later) == 1
    assert all(at == store.clock.now for at in store.marked(bad))
    with store.db.sessions() as s:  # the rows themselves are untouched
        rows = s.scalars(select(Instance).where(Instance.path.in_(bad))).all()
        assert len(rows) == unreadable and not any(r.file_missing for r in rows)


def test_an_unreadable_instance_is_read_again_a_day_later(store: Store) -> None:
    sweep = DicomReports(
        store.db.sessions,
        store.content,
        ReportBook(store.db.sessions, store.content),
        clock=store.clock,
    )
    rels = store.push(2)
    _damage(store, rels, "away")
    assert sweep.sweep() == 0
    first = store.clock.now
    store.clock.now += RETRY_AFTER - timedelta(minutes=1)
    assert sweep.sweep() == 0  # not due yet: not read
    assert store.marked(rels) == [first, first]
    for rel in rels[:1]:  # one comes back
        path = store.content.path(rel)
        path.with_name(path.name + ".away").rename(path)
    store.clock.now += timedelta(minutes=2)
    assert sweep.sweep() == 1
    assert store.recorded(rels[:1]) == 1 and store.recorded(rels[1:]) == 0
    assert sorted(store.marked(rels), key=lambda x: x is None) == [store.clock.now, None]
