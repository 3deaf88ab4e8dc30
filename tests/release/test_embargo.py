"""The release policy on SQLite and PostgreSQL, on an injected clock (release.embargo).

A request is made ready with its studies attached by a named rule (rows written as
matching writes them); the keeper applies the policy and the batch's claim is asked
whether it would take the request, at the instant before and at the instant the hold
ends. The site's zone is Europe/London, whose clocks went forward on 2026-03-29 at
01:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from delivery.batch import DeliveryBatch
from delivery.grants import GrantKeys
from delivery.outbox import Outbox
from release.embargo import (
    EMBARGO,
    MAX_WAIT,
    NONE,
    REPORT,
    RULE_MISSING,
    STAFF,
    ReleaseKeeper,
    describe,
    final_report,
    policy_reasons,
    rule_missing_why,
)
from release.errors import InvalidRequest
from release.holds import held_at, held_now
from release.progress import move_in
from release.requests import RequestBook
from rules import load_rules_text
from rules.policy import ReleasePolicy, parse_duration
from store.claims import lock_connection
from store.content import ContentStore
from store.models import (
    AuditEvent,
    ReleaseRequest,
    Report,
    RequestEvent,
    RequestState,
    RequestStudy,
    Study,
    StudyState,
)
from tests.conftest import Database
from tests.release.helpers import draft

ZONE = "Europe/London"
ARRIVAL = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)  # Friday noon GMT, before the change
TICK = timedelta(microseconds=1)
UID = "1.2.826.0.1.3680043.8.498.91"

RULES = """
rules:
  - name: ct-72h
    when: {Modality: CT}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 72h}
  - name: ct-3d
    when: {Modality: CR}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 3d}
  - name: mr-date-48h
    when: {Modality: MR}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 48h, from: study_date}
  - name: mr-date-2d
    when: {Modality: MG}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 2d, from: study_date}
  - name: report-staff
    when: {Modality: US}
    action: release
    join: {accession: AccessionNumber}
    release: {until: report_final, max_wait: 7d}
  - name: report-images
    when: {Modality: XA}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 24h, until: report_final, max_wait: 2d, then: release_images}
  - name: plain
    when: {Modality: NM}
    action: release
    join: {accession: AccessionNumber}
  - name: rest
    action: hold
"""


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class World:
    """A book, a keeper and a batch over one database, on one clock."""

    def __init__(self, db: Database, root: Path, default: ReleasePolicy | None = None) -> None:
        self.db = db
        self.clock = Clock(ARRIVAL)
        self.book = RequestBook(db.sessions, clock=self.clock)
        self.rules = load_rules_text(RULES)
        self.staff_holds: list[str] = []
        self.keeper = ReleaseKeeper(
            db.sessions,
            self.book,
            rules=lambda: self.rules,
            default=default,
            zone=ZONE,
            clock=self.clock,
            on_staff_hold=lambda s, req: self.staff_holds.append(req.reference),
        )
        content = ContentStore(root / "data")
        content.prepare()
        self.batch = DeliveryBatch(
            db.sessions,
            content,
            self.book,
            Outbox(clock=self.clock),
            GrantKeys(b"k" * 32),
            root / "packages",
            clock=self.clock,
            gate=self.keeper.gate,
        )

    def ready(self, rule: str, *, study_date: str = "", urgency: str = "overnight") -> str:
        """A ready request whose one study (arrived at ARRIVAL) ``rule`` attached."""
        req = self.book.create(draft(urgency=urgency), actor="cli:alice")
        with self.db.sessions() as s, s.begin():
            study = Study(
                study_uid=UID,
                study_date=study_date,
                state=StudyState.STABLE,
                first_received_at=ARRIVAL,
                last_received_at=ARRIVAL,
                stable_at=ARRIVAL,
            )
            s.add(study)
            s.flush()
            s.add(RequestStudy(request_id=req.id, study_id=study.id, rule=rule, matched_at=ARRIVAL))
        self.book.transition(req.reference, RequestState.READY, "rules", "all here")
        return req.reference

    def claimable(self, *, urgent_only: bool = False) -> str | None:
        """What the batch's claim takes now (it then moves it to packaging)."""
        with lock_connection(self.batch._engine()) as conn:
            got = self.batch.claim_next(conn, urgent_only=urgent_only)
        return None if got is None else got[1]

    def row(self, ref: str) -> ReleaseRequest:
        return self.book.get(ref)

    def timeline(self, ref: str) -> list[str]:
        return [e.reason for e in self.book.timeline(ref)]

    def report(self, status: str) -> None:
        with self.db.sessions() as s, s.begin():
            s.add(
                Report(
                    study_instance_uid=UID,
                    status=status,
                    source="hl7",
                    kind="text",
                    received_at=self.clock(),
                    body_path="reports/r.txt",
                    body_sha256="0" * 64,
                    body_size=1,
                )
            )


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def test_durations_and_policies_are_checked() -> None:
    assert parse_duration("72h").text == "72h" and parse_duration("7d").unit == "d"
    for bad in ("72", "3w", "-1h", "400d", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert ReleasePolicy.model_validate({"after": "0h"}).holds is False
    policy = ReleasePolicy.model_validate({"until": "report_final"})
    assert (policy.wait.text, policy.outcome) == ("7d", "hold_for_staff")
    with pytest.raises(ValueError):
        ReleasePolicy.model_validate({"after": "1h", "then": "release_images"})


@pytest.mark.parametrize(
    ("rule", "study_date", "ends"),
    [
        # 72 elapsed hours: 12:00 GMT Friday -> 13:00 BST Monday (12:00 UTC).
        ("ct-72h", "", datetime(2026, 3, 30, 12, 0, tzinfo=UTC)),
        # 3 calendar days: the same wall-clock time, 12:00 BST Monday (11:00 UTC).
        ("ct-3d", "", datetime(2026, 3, 30, 11, 0, tzinfo=UTC)),
        # From local midnight of the StudyDate (00:00 GMT Saturday), 48 h later.
        ("mr-date-48h", "20260328", datetime(2026, 3, 30, 0, 0, tzinfo=UTC)),
        # ... or two calendar days later: 00:00 BST Monday (23:00 UTC Sunday).
        ("mr-date-2d", "20260328", datetime(2026, 3, 29, 23, 0, tzinfo=UTC)),
    ],
)
def test_the_embargo_ends_at_the_right_instant_across_a_dst_change(
    world: World, rule: str, study_date: str, ends: datetime
) -> None:
    ref = world.ready(rule, study_date=study_date)
    assert world.keeper.sweep() == [ref]
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ends)
    shown = describe(row, world.keeper.zone, world.clock())
    assert shown is not None and shown.startswith("embargoed until 2026-03-")
    assert any(r.startswith(f"embargoed until {shown[16:]}") for r in world.timeline(ref))

    world.clock.now = ends - TICK
    assert world.keeper.sweep() == [] and world.claimable() is None
    world.clock.now = ends
    assert world.claimable() == ref  # the batch takes it at that very instant
    assert world.row(ref).state == RequestState.PACKAGING


def test_the_batch_applies_the_policy_itself_when_the_sweep_has_not(world: World) -> None:
    ref = world.ready("ct-72h")
    assert world.claimable() is None  # the claim applied the policy: held
    row = world.row(ref)
    assert row.hold_kind == EMBARGO and row.hold_checked_at == ARRIVAL
    assert world.batch.ready() == []


def test_a_rule_without_a_policy_and_no_site_default_releases_at_once(world: World) -> None:
    ref = world.ready("plain")
    assert world.claimable() == ref


def test_the_site_default_applies_to_a_rule_without_its_own(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path, default=ReleasePolicy.model_validate({"after": "48h"}))
    ref = world.ready("plain")
    world.keeper.sweep()
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ARRIVAL + timedelta(hours=48))
    assert any("node.yaml delivery.release: after 48h" in r for r in world.timeline(ref))


def test_the_final_report_arriving_early_ends_the_wait(world: World) -> None:
    ref = world.ready("report-staff")
    world.keeper.sweep()
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (REPORT, datetime(2026, 4, 3, 11, 0, tzinfo=UTC))
    assert describe(row, world.keeper.zone, world.clock()) == (
        "waiting for the report (at most until 2026-04-03 12:00 BST)"
    )
    world.clock.now += timedelta(hours=5)
    world.report("preliminary")  # not enough
    assert world.keeper.sweep() == [] and world.claimable() is None
    world.clock.now += timedelta(hours=1)
    world.report("final")
    with world.db.sessions() as s:
        assert final_report(s, [UID]) and not final_report(s, [])
    assert world.keeper.sweep() == [ref]
    assert world.row(ref).hold_kind == NONE
    assert "final report received" in world.timeline(ref)
    assert world.claimable() == ref


@pytest.mark.parametrize("outcome", ["hold_for_staff", "release_images"])
def test_max_wait_reached(world: World, outcome: str) -> None:
    rule = "report-staff" if outcome == "hold_for_staff" else "report-images"
    ref = world.ready(rule)
    world.keeper.sweep()
    deadline = world.row(ref).hold_until
    assert world.row(ref).hold_kind == REPORT and deadline is not None
    world.clock.now = deadline - TICK
    assert world.keeper.sweep() == [] and world.claimable() is None
    world.clock.now = deadline
    assert world.keeper.sweep() == [ref]
    row = world.row(ref)
    if outcome == "hold_for_staff":
        # Its own kind: not "staff" (a staff member's hold), so the lists tell them apart.
        assert (row.hold_kind, row.hold_until) == (MAX_WAIT, None)
        assert world.staff_holds == [ref]  # the node alerts staff from this hook
        assert any("held for staff to decide" in r for r in world.timeline(ref))
        with world.db.sessions() as s:
            why = policy_reasons(s, [row.id])[row.id]
            assert held_at(row, world.clock.now)
            for kind, n in ((MAX_WAIT, 1), (STAFF, 0), ("held", 1)):
                found = select(func.count()).select_from(ReleaseRequest)
                assert s.scalar(found.where(held_now(world.clock.now, kind))) == n
        assert why.startswith("the final report did not come by ") and "max_wait" in why
        assert describe(row, UTC, world.clock.now, why) == why
        world.clock.now += timedelta(days=30)
        assert world.keeper.sweep() == [] and world.claimable() is None
        # Staff decide: released with a reason, it goes.
        world.keeper.release_now(ref, "staff:alice", "no report expected for this study")
        assert world.claimable() == ref
    else:
        assert row.hold_kind == NONE and world.staff_holds == []
        assert any("images go without it" in r for r in world.timeline(ref))
        assert world.claimable() == ref


def test_a_late_report_leaves_max_wait_passed_to_staff_until_ready_again(world: World) -> None:
    """The report after max_wait does not release it by itself (staff decide); once the
    request is ready again (a new study) the policy decides afresh, like any hold but a
    staff member's own."""
    ref = world.ready("report-staff")
    world.keeper.sweep()
    deadline = world.row(ref).hold_until
    assert deadline is not None
    world.clock.now = deadline
    world.keeper.sweep()
    assert world.row(ref).hold_kind == MAX_WAIT
    world.clock.now += timedelta(hours=1)
    world.report("final")
    assert world.keeper.sweep() == [] and world.claimable() is None
    with world.db.sessions() as s, s.begin():
        s.get(ReleaseRequest, world.row(ref).id).hold_checked_at = None  # as move_in does
    assert world.keeper.sweep() == [ref]  # decided afresh: the report is in, no hold
    assert world.row(ref).hold_kind == NONE and world.claimable() == ref
    assert world.staff_holds == [ref]  # alerted once, when it was first held
    assert "final report received" in world.timeline(ref)


def test_the_report_wait_then_the_embargo(world: World) -> None:
    """after: 24h and until: report_final: a report within the day leaves the embargo."""
    ref = world.ready("report-images")
    world.keeper.sweep()
    world.clock.now += timedelta(hours=2)
    world.report("final")
    world.keeper.sweep()
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ARRIVAL + timedelta(hours=24))
    world.clock.now = ARRIVAL + timedelta(hours=24)
    assert world.claimable() == ref


def test_staff_release_early_with_a_reason_audited(world: World) -> None:
    ref = world.ready("ct-72h", urgency="now")
    world.keeper.sweep()
    with pytest.raises(InvalidRequest):
        world.keeper.release_now(ref, "staff:alice", "  ")
    world.clock.now += timedelta(hours=1)
    world.keeper.release_now(ref, "staff:alice", "patient flies abroad tomorrow")
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (NONE, None)
    line = world.timeline(ref)[-1]
    assert line.startswith("released early by staff (embargoed until 2026-03-30 13:00 BST)")
    assert line.endswith("patient flies abroad tomorrow")
    with world.db.sessions() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.kind == "release-hold"))
        assert (event.actor, event.request_ref) == ("staff:alice", ref)
        who = s.scalars(select(RequestEvent.actor).order_by(RequestEvent.id.desc())).first()
        assert who == "staff:alice"
    assert world.keeper.sweep() == []  # the policy does not come back
    assert world.claimable(urgent_only=True) == ref


def test_urgent_respects_the_embargo(world: World) -> None:
    ref = world.ready("ct-72h", urgency="now")
    world.keeper.sweep()
    assert world.claimable(urgent_only=True) is None
    assert world.claimable() is None
    world.clock.now = ARRIVAL + timedelta(hours=72)
    assert world.claimable(urgent_only=True) == ref


def test_staff_extend_the_hold(world: World) -> None:
    ref = world.ready("ct-72h")
    world.keeper.sweep()
    later = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    with pytest.raises(InvalidRequest):
        world.keeper.extend(ref, "staff:bob", "too early", ARRIVAL - TICK)
    world.keeper.extend(ref, "staff:bob", "the clinic asked to explain the results first", later)
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (STAFF, later)
    assert describe(row, world.keeper.zone, world.clock()) == (
        "held by staff until 2026-04-02 10:00 BST"
    )
    world.clock.now = ARRIVAL + timedelta(hours=72)  # the embargo's end no longer counts
    assert world.keeper.sweep() == [] and world.claimable() is None
    world.clock.now = later
    assert world.keeper.sweep() == [ref]
    assert "staff hold ended: the release policy decides again" in world.timeline(ref)
    assert world.claimable() == ref
    with world.db.sessions() as s:
        kinds = list(s.scalars(select(AuditEvent.kind).where(AuditEvent.kind == "release-hold")))
        assert kinds == ["release-hold"]


def test_staff_hold_until_released(world: World) -> None:
    ref = world.ready("plain")
    world.keeper.extend(ref, "staff:bob", "waiting for the consultant", None)
    world.clock.now += timedelta(days=400)
    assert world.keeper.sweep() == [] and world.claimable() is None
    assert describe(world.row(ref), world.keeper.zone, world.clock()) == (
        "held for staff: release it when ready"
    )
    world.keeper.release_now(ref, "staff:bob", "consultant agreed")
    assert world.claimable() == ref


def test_an_ended_staff_hold_gives_way_to_the_policy(world: World) -> None:
    """Held by staff before it was ready: when that hold ends, the policy decides (the
    rule's embargo still runs), not "released"; the batch's claim re-decides too."""
    req = world.book.create(draft(), actor="cli:alice")
    soon = ARRIVAL + timedelta(hours=1)
    world.keeper.extend(req.reference, "staff:bob", "call the patient first", soon)
    assert world.row(req.reference).hold_checked_at is None  # pending: not applied yet
    world.book.transition(req.reference, RequestState.RECEIVING, "rules", "a study came")
    with world.db.sessions() as s, s.begin():
        study = Study(
            study_uid=UID,
            state=StudyState.STABLE,
            first_received_at=ARRIVAL,
            last_received_at=ARRIVAL,
            stable_at=ARRIVAL,
        )
        s.add(study)
        s.flush()
        s.add(RequestStudy(request_id=req.id, study_id=study.id, rule="ct-72h", matched_at=ARRIVAL))
        row = s.get(ReleaseRequest, req.id)
        assert row is not None
        assert move_in(
            s, world.book, row, RequestState.RECEIVING, RequestState.READY, "ok", ARRIVAL
        )
    world.keeper.sweep()
    assert world.row(req.reference).hold_kind == STAFF  # staff's hold stays
    world.clock.now = soon
    assert world.claimable() is None  # the claim applied the policy: embargoed
    row = world.row(req.reference)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ARRIVAL + timedelta(hours=72))
    # The sweep path: staff hold again, it ends, the sweep re-decides.
    world.keeper.extend(req.reference, "staff:bob", "longer", ARRIVAL + timedelta(hours=80))
    world.clock.now = ARRIVAL + timedelta(hours=80)
    world.rules = load_rules_text(RULES.replace("{after: 72h}", "{after: 96h}"))
    assert world.keeper.sweep() == [req.reference]
    row = world.row(req.reference)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ARRIVAL + timedelta(hours=96))
    assert world.claimable() is None


def test_hold_longer_cannot_end_before_the_policy_hold(world: World) -> None:
    ref = world.ready("ct-72h")
    world.keeper.sweep()
    ends = ARRIVAL + timedelta(hours=72)
    with pytest.raises(InvalidRequest, match="release policy holds it until 2026-03-30"):
        world.keeper.extend(ref, "staff:bob", "shorter", ends - timedelta(hours=1))
    row = world.row(ref)
    assert (row.hold_kind, row.hold_until) == (EMBARGO, ends)
    world.keeper.extend(ref, "staff:bob", "until released", None)
    assert world.row(ref).hold_kind == STAFF


def test_ready_again_with_a_new_study_applies_its_rule(world: World) -> None:
    ref = world.ready("plain")
    world.keeper.sweep()
    assert world.row(ref).hold_kind == NONE and world.row(ref).hold_checked_at is not None
    world.book.transition(ref, RequestState.RECEIVING, "rules", "a new study came")
    with world.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        study = Study(
            study_uid=UID + ".2",
            state=StudyState.STABLE,
            first_received_at=ARRIVAL,
            last_received_at=ARRIVAL,
            stable_at=ARRIVAL,
        )
        s.add(study)
        s.flush()
        s.add(RequestStudy(request_id=req.id, study_id=study.id, rule="ct-72h", matched_at=ARRIVAL))
        assert move_in(
            s, world.book, req, RequestState.RECEIVING, RequestState.READY, "ok", ARRIVAL
        )
    assert world.row(ref).hold_checked_at is None
    assert world.claimable() is None
    assert world.row(ref).hold_kind == EMBARGO


def test_a_rule_that_no_longer_exists_holds_for_staff(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path, default=None)  # no site default: it would go at once
    ref = world.ready("renamed-since")
    assert world.claimable() is None
    row = world.row(ref)
    # Its own kind (not staff, which a staff member sets), with the rule named and what
    # staff do next on the timeline; staff are alerted once, and the sweep leaves it.
    assert (row.hold_kind, row.hold_until) == (RULE_MISSING, None)
    why = rule_missing_why("renamed-since")
    assert why in world.timeline(ref)
    assert "rule renamed-since no longer exists" in why and "Release it now" in why
    assert world.staff_holds == [ref]
    world.clock.now += timedelta(days=30)
    assert world.keeper.sweep() == [] and world.claimable() is None
    assert world.row(ref).hold_kind == RULE_MISSING and world.staff_holds == [ref]
