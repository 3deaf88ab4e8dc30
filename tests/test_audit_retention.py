"""Retention end to end on an injected clock: a package is audited as an export when it is
built; its files stay until its link expired plus ``delivery.purge_grace_days``, then go
(audited); the received instances go ``store.retention_days`` after the request ended
(audited); a disc image is audited as an export. No audit row names the patient."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from delivery.batch import DeliveryBatch
from delivery.grants import GrantKeys
from delivery.outbox import Outbox
from store.models import AuditEvent, Package, RequestState, Study, StudyState
from tests import synthetic
from tests.conftest import Database
from tests.delivery.test_disc import Stored, export, stored  # noqa: F401  (fixture)
from tests.release.helpers import EMAIL, MOBILE, draft
from tests.release.test_cli_requests import config  # noqa: F401  (fixture: node.yaml on db)
from tests.release.test_purge import World

GRACE_DAYS = 7
RETENTION_DAYS = 10  # World's purger


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def _batch(world: World, root: Path) -> DeliveryBatch:
    return DeliveryBatch(
        world.sessions,
        world.content,
        world.book,
        Outbox(clock=world.clock),
        GrantKeys(b"k" * 32),
        root / "packages",
        purge_grace_days=GRACE_DAYS,
        clock=world.clock,
    )


def _trail(world: World) -> list[AuditEvent]:
    with world.sessions() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def patient_data_absent(rows: list[AuditEvent], *secrets: str) -> None:
    """No audit field holds any of ``secrets`` (patient name, IDs, contacts)."""
    text = "\n".join(
        " ".join(str(getattr(r, c)) for c in AuditEvent.__table__.columns.keys())  # noqa: SIM118
        for r in rows
    )
    for secret in secrets:
        assert secret not in text


def test_package_files_outlive_the_link_by_the_grace_then_are_purged_and_audited(
    world: World, tmp_path: Path
) -> None:
    batch = _batch(world, tmp_path)
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC88"}]), "t")
    uid = world.receive("pkg", 2, accession="ACC88")
    world.settle()
    assert batch.deliver(req.reference) == "notified"
    folder = tmp_path / "packages" / req.reference
    assert any(folder.iterdir())
    [export] = [e for e in _trail(world) if e.kind == "export"]
    assert (export.request_ref, export.study_uids.split(), export.actor) == (
        req.reference,
        [uid],
        "delivery",
    )
    link_ends = world.clock.now + timedelta(days=30)

    # The link runs out: the request expires, the files stay through the grace.
    world.clock.now = link_ends + timedelta(minutes=1)
    assert batch.expire() == [req.reference]
    assert world.book.get(req.reference).state == RequestState.EXPIRED
    world.clock.now = link_ends + timedelta(days=GRACE_DAYS) - timedelta(minutes=1)
    assert batch.expire() == []
    assert batch.purge_packages() == []
    assert folder.is_dir()
    assert not [e for e in _trail(world) if e.kind == "package-deleted"]

    world.clock.now = link_ends + timedelta(days=GRACE_DAYS)
    assert batch.purge_packages() == [req.reference]
    assert batch.purge_packages() == []  # once
    assert not folder.exists()
    with world.sessions() as s:
        package = s.scalars(select(Package)).one()
        assert package.deleted_at == world.clock.now
    [gone] = [e for e in _trail(world) if e.kind == "package-deleted"]
    assert (gone.request_ref, gone.study_uids.split(), gone.event_id, gone.action) == (
        req.reference,
        [uid],
        "110103",
        "D",
    )
    # The received instances: retention_days after the request ended (its expiry).
    ended = link_ends + timedelta(minutes=1)
    world.clock.now = ended + timedelta(days=RETENTION_DAYS) - timedelta(minutes=1)
    assert world.purger.sweep() == []
    world.clock.now = ended + timedelta(days=RETENTION_DAYS)
    assert world.purger.sweep() == [uid]
    assert world.study(uid).state == StudyState.PURGED
    kinds = [e.kind for e in _trail(world)]
    assert kinds == ["instances-stored", "export", "package-deleted", "study-deleted"]
    patient_data_absent(
        _trail(world),
        "Ppkg",
        synthetic.PATIENT_NAME,
        "MRN-000123",
        "Test^Patient",
        EMAIL,
        MOBILE,
        MOBILE[-6:],
    )


def test_a_cancelled_requests_package_is_purged_a_grace_after_the_cancellation(
    world: World, tmp_path: Path
) -> None:
    batch = _batch(world, tmp_path)
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC89"}]), "t")
    world.receive("cancel", 1, accession="ACC89")
    world.settle()
    assert batch.deliver(req.reference) == "notified"
    world.book.cancel(req.reference, "staff:alice", "wrong patient")
    cancelled = world.clock.now
    world.clock.now = cancelled + timedelta(days=GRACE_DAYS) - timedelta(seconds=1)
    assert batch.expire() == []  # cancelled, not expired: nothing to expire, not yet due
    assert (tmp_path / "packages" / req.reference).is_dir()
    world.clock.now = cancelled + timedelta(days=GRACE_DAYS)
    assert batch.expire() == []
    assert not (tmp_path / "packages" / req.reference).exists()
    assert [e.request_ref for e in _trail(world) if e.kind == "package-deleted"] == [req.reference]


def test_a_disc_image_is_audited_as_an_export_without_its_path(
    stored: Stored,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "Smith_John.iso"  # staff name files after patients: never recorded
    assert export(config, stored.reference, str(out), "--json") == 0
    with stored.db.sessions() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.kind == "export")).all()
        with_studies = s.scalars(select(Study.study_uid)).all()
    assert (event.request_ref, event.action, event.event_id) == (stored.reference, "R", "110106")
    assert event.actor.startswith("cli:")
    assert sorted(event.study_uids.split()) == sorted(with_studies)
    assert "disc image written" in event.detail and "Smith" not in event.detail
