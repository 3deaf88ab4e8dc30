"""What an interrupted disc image write leaves in ``<data_dir>/discs`` (the hidden image
and its offline viewer's spool) is swept at start-up, and nothing else is: not a
finished image, not what this run began, not a visible file, and (shared database) not
what another node is writing under a live claim. On SQLite the node is the only writer,
so a claim left by the run that died does not keep its leftovers. The periodic sweep
(the delivery worker's sweep job) keeps what a live claim covers on every database and
removes it once the claim lapses: a writer killed on a shared database is cleaned up
without another start."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from delivery.disc_images import FOLDER, LEASE, sweep_leftovers
from release.requests import RequestBook
from store.content import ContentStore
from store.models import DiscJob
from tests.conftest import Database
from tests.release.helpers import draft

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _old(path: Path, started: float) -> Path:
    os.utime(path, (started - 3600, started - 3600))
    return path


def _request(db: Database, writing_since: datetime | None) -> str:
    req = RequestBook(db.sessions, lambda: NOW).create(draft(), "test")
    with db.sessions() as s, s.begin():
        s.add(
            DiscJob(
                request_id=req.id,
                why="staff",
                queued_at=NOW,
                queued_by="staff:alice",
                writing_since=writing_since,
            )
        )
    return req.reference


def test_leftovers_older_than_the_run_are_swept_at_start(db: Database, tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    folder = content.root / FOLDER
    folder.mkdir()
    started = time.time()
    dead = _request(db, None)
    live = _request(db, NOW - LEASE / 2)  # someone holds a claim to write it
    lapsed = _request(db, NOW - LEASE - timedelta(minutes=1))

    def spool(ref: str, tag: str) -> Path:
        path = folder / f".{ref}.iso.viewer.{tag}.partial"
        (path / "s1").mkdir(parents=True)
        (path / "s1" / "i1.jpg").write_bytes(b"\xff\xd8 a rendered image")
        for p in (path / "s1" / "i1.jpg", path / "s1", path):
            _old(p, started)
        return path

    image = folder / f".{dead}.iso.a1b2c3.partial"
    image.write_bytes(b"half an image")
    gone = [_old(image, started), spool(dead, "d4e5f6"), spool(lapsed, "0a0b0c")]
    kept = [
        folder / f"{dead}.iso",  # a finished image
        folder / "notes.partial",  # not hidden: not ours
    ]
    for path in kept:
        path.write_bytes(b"keep")
        _old(path, started)
    fresh = folder / f".{dead}.iso.viewer.ffffff.partial"  # begun in this run
    fresh.mkdir()
    claimed = [spool(live, "123456")]

    removed = sweep_leftovers(db.sessions, content, started, clock=lambda: NOW)

    shared = db.kind == "postgresql"
    assert removed == len(gone) + (0 if shared else len(claimed))
    assert [p for p in gone if p.exists()] == []
    assert all(p.exists() for p in [*kept, fresh])
    assert all(p.exists() == shared for p in claimed)
    assert sweep_leftovers(db.sessions, content, started, clock=lambda: NOW) == 0


def test_the_periodic_sweep_removes_them_once_the_claim_lapses(
    db: Database, tmp_path: Path
) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    folder = content.root / FOLDER
    folder.mkdir()
    killed = _request(db, NOW - LEASE / 2)  # its writer died; its claim still holds
    image = folder / f".{killed}.iso.a1b2c3.partial"
    spool = folder / f".{killed}.iso.viewer.d4e5f6.partial"
    (spool / "s1").mkdir(parents=True)
    image.write_bytes(b"half an image")
    now = time.time()
    for path in (spool / "s1", spool, image):
        _old(path, now)
    fresh = folder / ".CR-NONE-0000-0.iso.b7b8b9.partial"  # newer than the sweep's start
    fresh.write_bytes(b"just begun")
    os.utime(fresh, (now + 60, now + 60))

    # While the claim holds (a writer of this process, on SQLite too): kept.
    assert sweep_leftovers(db.sessions, content, now, clock=lambda: NOW, periodic=True) == 0
    assert image.exists() and spool.exists()
    lapsed = NOW + LEASE / 2 + timedelta(minutes=1)
    assert sweep_leftovers(db.sessions, content, now, clock=lambda: lapsed, periodic=True) == 2
    assert not image.exists() and not spool.exists()
    assert fresh.exists()


def test_no_folder_is_clean(db: Database, tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    assert sweep_leftovers(db.sessions, content, time.time()) == 0


def test_the_node_sweeps_them_when_delivery_starts(tmp_path: Path) -> None:
    """``courier serve``'s delivery start-up runs the sweep (SQLite: the node alone)."""
    from node.config import load_config
    from node.delivery import DeliveryService
    from node.stores import open_store

    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\n")
    cfg = load_config(path)
    engine, sessions, content = open_store(cfg)
    try:
        leftover = content.root / FOLDER / ".CR-TEST-0000-0.iso.viewer.abcdef.partial"
        (leftover / "s1").mkdir(parents=True)
        _old(leftover, time.time())
        service = DeliveryService(cfg, sessions, content)
        service.start()
        service.stop()
        assert not leftover.exists()
    finally:
        engine.dispose()


def test_the_node_sweeps_them_periodically(tmp_path: Path) -> None:
    """The delivery worker's sweep job (``DeliveryService.expire``) runs the sweep too."""
    from node.config import load_config
    from node.delivery import DeliveryService
    from node.stores import open_store

    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\n")
    cfg = load_config(path)
    engine, sessions, content = open_store(cfg)
    try:
        service = DeliveryService(cfg, sessions, content)
        leftover = content.root / FOLDER / ".CR-TEST-0000-0.iso.a1b2c3.partial"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half an image")
        _old(leftover, time.time())  # left after the start (no claim: its job is gone)
        service.expire()
        assert not leftover.exists()
    finally:
        engine.dispose()
