"""Held and discarded studies are purged after their retention, and the purge is recorded
and audited; the studies of ended requests are purged ``store.retention_days`` after the
last of them ended, never while another request uses them; a ready request whose study
changes goes back to receiving (injected clock throughout)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, text

from release import progress
from release.matching import Matcher
from release.purge import Purger
from release.requests import RequestBook
from rules import load_rules_text
from scp.recovery import recover
from scp.stability import StabilitySweep
from store.catalog import Catalog
from store.content import ContentStore
from store.models import (
    AuditEvent,
    Instance,
    ReleaseRequest,
    RequestState,
    RequestStudy,
    Study,
    StudyEvent,
    StudyState,
)
from tests import synthetic
from tests.conftest import Database
from tests.pglocks import wait_until_blocked_on
from tests.release.helpers import draft

RULES = """\
rules:
  - name: junk
    when: {StudyDescription: SCOUT}
    action: discard
    retention_days: 2
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
"""


class Clock:
    def __init__(self) -> None:
        # Near the real time, like the rows that default to it; recovery's dates (file
        # mtimes) come from this clock, see World.receive.
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


class World:
    """Store, matcher and purger over one database, all on one injected clock."""

    def __init__(self, db: Database, root: Path) -> None:
        self.clock = Clock()
        self.content = ContentStore(root / "data")
        self.content.prepare()
        self.sessions = db.sessions
        self.catalog = Catalog(db.sessions, clock=self.clock)
        self.book = RequestBook(db.sessions, clock=self.clock)
        rules = load_rules_text(RULES)
        self.matcher = Matcher(
            db.sessions, self.content, lambda: rules, self.book, clock=self.clock
        )
        self.sweep = StabilitySweep(db.sessions, 60, clock=self.clock)
        self.purger = Purger(db.sessions, self.content, 30, clock=self.clock, retention_days=10)
        self.src = root / "src"

    def receive(
        self,
        name: str,
        n: int,
        accession: str,
        description: str = "",
        patient_id: str = "MRN-000123",
        edit: Callable[[pydicom.Dataset], None] | None = None,
    ) -> str:
        """Put ``n`` synthetic instances in the store (indexed as recovery does). The
        patient is the one :func:`tests.release.helpers.draft` asks for (the identity
        check holds another's study); ``edit`` changes each header before it is stored."""
        paths = synthetic.make_small_instances(
            self.src / name,
            n=n,
            n_series=1,
            accession=accession,
            patient_id=patient_id,
            # One study per name, whoever the patient (the UID it always had).
            study_uid=synthetic.synthetic_uid("small", 0, f"P{name}", accession, "study"),
        )
        for p in paths:
            ds = pydicom.dcmread(p)
            if description:
                ds.StudyDescription = description
            if edit is not None:
                edit(ds)
            if description or edit is not None:
                ds.save_as(p)
            rel = self.content.instance_relpath(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            dest = self.content.path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
            # Recovery dates a re-indexed file by its mtime: stamp it with this clock, not
            # the real time, which under load runs past the clock (settle's 61 s step then
            # leaves the study receiving, and its request pending).
            stamp = self.clock.now.timestamp()
            os.utime(dest, (stamp, stamp))
        recover(self.content, self.sessions, self.catalog)
        return str(pydicom.dcmread(paths[0]).StudyInstanceUID)

    def settle(self) -> None:
        """Let studies go stable and the rules decide."""
        self.clock.now += timedelta(seconds=61)
        self.sweep.run()
        self.matcher.sweep_changed()
        self.matcher.on_stable(self.matcher.undecided())

    def study(self, uid: str) -> Study:
        with self.sessions() as s:
            st = s.scalars(select(Study).where(Study.study_uid == uid)).one()
            s.expunge(st)
            return st

    def audited(self, kind: str) -> list[AuditEvent]:
        with self.sessions() as s:
            return list(
                s.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id))
            )

    def files(self, uid: str) -> int:
        with self.sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(Instance)
                    .join(Study)
                    .where(Study.study_uid == uid)
                )
                or 0
            )


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def test_held_and_discarded_studies_are_purged_after_retention(world: World) -> None:
    held = world.receive("held", 3, accession="NOREQ1")
    junk = world.receive("junk", 2, accession="", description="SCOUT")
    world.book.create(draft(selection=[{"kind": "accession", "value": "WANTED"}]), "test")
    wanted = world.receive("wanted", 2, accession="WANTED")
    world.settle()

    # Day 1: nothing is due yet.
    world.clock.now += timedelta(days=1)
    assert world.purger.sweep() == []
    # Day 2+: the discard rule's own retention (2 days) has passed; held ones wait 30.
    world.clock.now += timedelta(days=1, minutes=1)
    assert world.purger.sweep() == [junk]
    assert world.purger.sweep() == []  # purged once
    world.clock.now += timedelta(days=29)
    assert world.purger.sweep() == [held]

    for uid in (held, junk):
        st = world.study(uid)
        assert (st.state, st.instance_count, world.files(uid)) == (StudyState.PURGED, 0, 0)
    # The study attached to a request is never purged, however old.
    assert world.study(wanted).state == StudyState.STABLE
    assert world.files(wanted) == 2
    on_disk = list(world.content.iter_instances())
    assert len(on_disk) == 2 and all(wanted in rel for rel in on_disk)
    with world.sessions() as s:
        reasons = [
            e.reason
            for e in s.scalars(select(StudyEvent).where(StudyEvent.to_state == StudyState.PURGED))
        ]
    assert len(reasons) == 2
    assert any("purged after 2 days (rule junk): 2 file(s) deleted" in r for r in reasons)
    assert any("purged after 30 days (rule by-accession): 3 file(s)" in r for r in reasons)
    audited = world.audited("study-deleted")
    assert [(e.study_uids.split(), e.action, e.outcome, e.actor) for e in audited] == [
        ([junk], "D", 0, "node"),
        ([held], "D", 0, "node"),
    ]
    assert "purged after 2 days (rule junk): 2 file(s) deleted" in audited[0].detail


def test_a_purge_interrupted_after_its_claim_is_finished_by_the_next_sweep(world: World) -> None:
    held = world.receive("held", 2, accession="NOREQ2")
    world.settle()
    world.clock.now += timedelta(days=31)
    [candidate] = world.purger.due()
    assert world.purger._claim(candidate.study_id)  # the crash came right after the claim
    assert world.study(held).state == StudyState.PURGING
    assert world.purger.sweep() == [held]
    assert world.study(held).state == StudyState.PURGED
    assert list(world.content.iter_instances()) == []


def test_a_purged_study_that_arrives_again_is_received_and_decided_again(world: World) -> None:
    held = world.receive("again", 2, accession="NOREQ3")
    world.settle()
    world.clock.now += timedelta(days=31)
    assert world.purger.sweep() == [held]
    world.receive("again", 2, accession="NOREQ3")
    st = world.study(held)
    assert (st.state, st.instance_count) == (StudyState.RECEIVING, 2)
    world.settle()
    assert world.study(held).state == StudyState.STABLE
    assert world.purger.sweep() == []  # a fresh decision: its retention starts again


def test_a_ready_request_goes_back_to_receiving_when_its_study_changes(world: World) -> None:
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC77"}]), "test")
    uid = world.receive("grow", 2, accession="ACC77")
    world.settle()
    assert world.book.get(req.reference).state == RequestState.READY
    # Two more instances of the same study arrive before packaging.
    paths = synthetic.make_small_instances(
        world.src / "grow2", n=4, n_series=1, accession="ACC77", patient_id="Pgrow"
    )
    for p in paths[2:]:
        ds = pydicom.dcmread(p)
        rel = world.content.instance_relpath(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        world.content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, world.content.path(rel))
    recover(world.content, world.sessions, world.catalog)
    assert world.study(uid).state == StudyState.RECEIVING
    assert world.matcher.sweep_changed() == [req.reference]
    assert world.book.get(req.reference).state == RequestState.RECEIVING
    world.settle()
    assert world.book.get(req.reference).state == RequestState.READY
    assert world.study(uid).instance_count == 4
    states = [e.to_state for e in world.book.timeline(req.reference)]
    assert states[-3:] == ["ready", "receiving", "ready"]


def test_a_request_for_a_study_already_here_joins_it(world: World) -> None:
    """Staff often ask after the PACS pushed: the held study is decided again and the
    new request becomes ready, without the study being sent again."""
    uid = world.receive("early", 3, accession="ACC55")
    world.settle()
    assert world.purger.due() == []  # held, not yet due
    world.clock.now += timedelta(minutes=5)
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC55"}]), "test")
    assert world.matcher.sweep_new_requests() == [req.reference]
    assert world.book.get(req.reference).state == RequestState.READY
    assert world.matcher.sweep_new_requests() == []  # looked at once
    assert world.study(uid).state == StudyState.STABLE


def test_studies_of_ended_requests_are_purged_after_retention_and_never_while_in_use(
    world: World,
) -> None:
    first = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC31"}]), "t")
    uid = world.receive("shared", 3, accession="ACC31")
    world.settle()
    assert world.book.get(first.reference).state == RequestState.READY
    # A second request uses the same study (staff asked again, for a clinician).
    second = world.book.create(draft(selection=[{"kind": "study_uid", "value": uid}]), "t")
    with world.sessions() as s, s.begin():
        s.add(
            RequestStudy(
                request_id=second.id, study_id=world.study(uid).id, matched_at=world.clock.now
            )
        )
    world.book.cancel(first.reference, "staff:alice", "sent on CD instead")
    world.clock.now += timedelta(days=30)
    assert world.purger.sweep() == []  # the second request is still open
    assert world.files(uid) == 3
    world.book.cancel(second.reference, "staff:alice", "no longer needed")
    ended = world.clock.now
    world.clock.now = ended + timedelta(days=10) - timedelta(minutes=1)
    assert world.purger.due() == []
    world.clock.now = ended + timedelta(days=10)
    assert world.purger.sweep() == [uid]
    assert world.purger.sweep() == []
    st = world.study(uid)
    assert (st.state, world.files(uid)) == (StudyState.PURGED, 0)
    assert list(world.content.iter_instances()) == []
    [event] = world.audited("study-deleted")
    assert (event.study_uids.split(), event.request_ref, event.outcome) == (
        [uid],
        second.reference,
        0,
    )
    assert "its requests ended" in event.detail and "3 file(s) deleted" in event.detail
    with world.sessions() as s:
        assert s.get(ReleaseRequest, first.id) is not None  # requests and rows stay


def test_a_reopened_request_counts_retention_from_its_last_end(world: World) -> None:
    """An expired request the patient reopened (release.states.REOPEN) ends again
    later: its studies are kept retention_days after that second end."""
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC41"}]), "t")
    uid = world.receive("reopened", 2, accession="ACC41")
    world.settle()
    for state in (RequestState.PACKAGING, RequestState.NOTIFIED, RequestState.EXPIRED):
        world.book.transition(req.reference, state, "delivery", "x")
    world.clock.now += timedelta(days=3)
    with world.sessions() as s, s.begin():  # as portal.more_time reopens it
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        world.book.move(
            s,
            fresh,
            RequestState.EXPIRED,
            RequestState.NOTIFIED,
            "patient:grant-1",
            "x",
            world.clock.now,
        )
    world.clock.now += timedelta(days=14)
    world.book.transition(req.reference, RequestState.EXPIRED, "delivery", "again")
    ended = world.clock.now
    world.clock.now = ended + timedelta(days=10) - timedelta(minutes=1)
    assert world.purger.due() == []  # 27 days after the first end: not yet
    world.clock.now = ended + timedelta(days=10)
    assert world.purger.sweep() == [uid]


@pytest.mark.parametrize("writer", ["progress.note", "book.move"])
def test_a_note_on_an_ended_request_does_not_restart_its_retention(
    world: World, writer: str
) -> None:
    """Notes are events with from_state == to_state (portal.grantsession.audit when the
    patient asks for more time on an expired link, release.progress.note, book.move of a
    CD queued, burned or cancelled): only a real move into a final state starts the
    retention, so a note every few weeks never keeps the study for ever."""
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC42"}]), "t")
    uid = world.receive("noted", 2, accession="ACC42")
    world.settle()
    for state in (RequestState.PACKAGING, RequestState.NOTIFIED, RequestState.EXPIRED):
        world.book.transition(req.reference, state, "delivery", "x")
    ended = world.clock.now
    world.clock.now += timedelta(days=9)
    with world.sessions() as s, s.begin():
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        if writer == "progress.note":
            progress.note(s, fresh, "patient:grant-1", "asked for more time", world.clock.now)
        else:
            expired = RequestState.EXPIRED
            world.book.move(s, fresh, expired, expired, "staff", "CD queued", world.clock.now)
    world.clock.now = ended + timedelta(days=10) - timedelta(minutes=1)
    assert world.purger.due() == []
    world.clock.now = ended + timedelta(days=10)
    assert world.purger.sweep() == [uid]


def test_a_purge_listed_before_a_reopen_does_not_claim_after_it(world: World) -> None:
    """The sweep read the study as due; the patient reopened the expired request before
    its claim: the claim re-checks that no request uses the study, and keeps it."""
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC43"}]), "t")
    uid = world.receive("reopened-late", 2, accession="ACC43")
    world.settle()
    for state in (RequestState.PACKAGING, RequestState.NOTIFIED, RequestState.EXPIRED):
        world.book.transition(req.reference, state, "delivery", "x")
    world.clock.now += timedelta(days=10)
    [due] = world.purger.due()
    with world.sessions() as s, s.begin():  # as portal.more_time reopens it
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        expired, notified = RequestState.EXPIRED, RequestState.NOTIFIED
        world.book.move(s, fresh, expired, notified, "patient:grant-1", "x", world.clock.now)
    assert world.purger.purge(due) is False
    assert world.study(uid).state == StudyState.STABLE and world.files(uid) == 2
    assert world.purger.due() == []


# PostgreSQL only: SQLite has one writer at a time, so no reopen is in flight beside a claim.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_reopen_in_flight_on_another_node_is_waited_for_by_the_claim(
    db: Database, world: World
) -> None:
    """The patient's reopen has moved the request but not committed (it saw the study
    still stable): the claim waits for the request's row, reads the commit, and keeps
    the study, so no live link points at a study being deleted."""
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC44"}]), "t")
    uid = world.receive("reopened-in-flight", 2, accession="ACC44")
    world.settle()
    for state in (RequestState.PACKAGING, RequestState.NOTIFIED, RequestState.EXPIRED):
        world.book.transition(req.reference, state, "delivery", "x")
    world.clock.now += timedelta(days=10)
    [due] = world.purger.due()
    other = db.sessions()  # another node: the reopen, as portal.more_time runs it
    other.begin()
    fresh = other.get(ReleaseRequest, req.id)
    assert fresh is not None
    expired, notified = RequestState.EXPIRED, RequestState.NOTIFIED
    world.book.move(other, fresh, expired, notified, "patient:grant-1", "x", world.clock.now)
    # Its check that no study of the request is being deleted passes.
    assert other.scalar(select(Study.state).where(Study.id == due.study_id)) == StudyState.STABLE
    xid = other.scalar(text("SELECT pg_current_xact_id()::text"))
    result: list[bool] = []
    purge = threading.Thread(target=lambda: result.append(world.purger.purge(due)))
    try:
        purge.start()
        # Until the claim waits on the reopen, or ends.
        wait_until_blocked_on(db.engine, xid, purge)
        other.commit()
    finally:
        other.close()
        purge.join(30)
    assert result == [False]
    assert world.study(uid).state == StudyState.STABLE and world.files(uid) == 2
    assert world.book.get(req.reference).state == RequestState.NOTIFIED
