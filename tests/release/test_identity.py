"""Right patient, always: a study joins a request only when its patient identity agrees
with the request's, whatever the rule joined on (release.identity, release.matching).

Table-driven: the comparison alone, then the matcher on SQLite and PostgreSQL (a study
whose identity disagrees is held, the request stays where it was, the timeline, the
study's events and the audit trail name the fields, staff are alerted once), then the
staff's resolution (attach anyway with a reason, or keep it held)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import Dataset
from sqlalchemy import select

from release.errors import InvalidRequest, InvalidTransition
from release.identity import Identity, IdentitySettings, compare, of_header
from release.matching import Matcher
from release.mismatch import attach_anyway, dismiss
from rules import load_rules_text
from store.models import (
    AuditEvent,
    IdentityMismatch,
    MismatchState,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    Study,
    StudyDecision,
    StudyEvent,
)
from tests.conftest import Database
from tests.release.helpers import draft
from tests.release.test_purge import World

REQUEST = Identity(patient_id="MRN-A", birth_date="19700131", name="Doe^Jane", issuer="")
BY_ACCESSION = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
"""


@pytest.mark.parametrize(
    ("study", "request_issuer", "blocking", "flagged"),
    [
        (Identity("MRN-A", "19700131", "DOE^JANE"), "", (), ()),
        (Identity(" MRN-A ", "19700131", "Doe^Jane"), "", (), ()),  # trimmed
        (Identity("MRN-B", "19700131", "Roe^Richard"), "", ("patient_id",), ("name",)),
        (Identity("mrn-a", "19700131", "Doe^Jane"), "", ("patient_id",), ()),  # case kept
        (Identity("", "19700131", "Doe^Jane"), "", ("patient_id",), ()),
        (Identity("MRN-A", "19700201", "Doe^Jane"), "", ("birth_date",), ()),
        (Identity("MRN-A", "", "Doe^Jane"), "", (), ()),  # missing on one side
        (Identity("MRN-A", "19700131", "Jane Doe"), "", (), ()),  # component order
        (Identity("MRN-A", "19700131", "DÖE^JÁNE^^DR="), "", (), ()),  # accents, groups
        (Identity("MRN-A", "19700131", "Doe^Janet"), "", (), ("name",)),  # flagged only
        (Identity("MRN-A", "19700131", "Doe^Jane", issuer="HOSP-B"), "HOSP-A", ("issuer",), ()),
        (Identity("MRN-A", "19700131", "Doe^Jane", issuer="HOSP-B"), "", (), ()),
        (Identity("MRN-A", "19700131", "Doe^Jane", issuer=""), "HOSP-A", (), ()),
        (Identity("MRN-A", "19700131", "Doe^Jane", issuer="HOSP-A"), "HOSP-A", (), ()),
    ],
)
def test_compare(
    study: Identity, request_issuer: str, blocking: tuple[str, ...], flagged: tuple[str, ...]
) -> None:
    request = Identity(REQUEST.patient_id, REQUEST.birth_date, REQUEST.name, request_issuer)
    verdict = compare(request, study, IdentitySettings())
    assert (verdict.blocking, verdict.flagged) == (blocking, flagged)
    assert verdict.agrees == (not blocking)


def test_check_off_and_names_ignored() -> None:
    other = Identity("MRN-B", "19990101", "Roe^Richard")
    assert compare(REQUEST, other, IdentitySettings(check=False)).agrees
    verdict = compare(REQUEST, Identity("MRN-A", "", "X^Y"), IdentitySettings(name="ignore"))
    assert verdict.agrees and not verdict.flagged


def _other_ids(*items: tuple[str, str]) -> Dataset:
    ds = Dataset()
    ds.PatientID = "PACS-9"
    ds.OtherPatientIDsSequence = []
    for pid, issuer in items:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = pid, issuer
        ds.OtherPatientIDsSequence.append(item)
    return ds


@pytest.mark.parametrize(
    ("settings", "ds", "patient_id", "issuer"),
    [
        ({}, _other_ids(("MRN-A", "HOSP-A")), "PACS-9", ""),
        (
            {"patient_id_from": "OtherPatientIDsSequence", "issuer": "HOSP-A"},
            _other_ids(("X1", "HOSP-X"), ("MRN-A", "HOSP-A")),
            "MRN-A",
            "HOSP-A",
        ),
        (
            {"patient_id_from": "OtherPatientIDsSequence", "issuer": "HOSP-A"},
            _other_ids(("X1", "HOSP-X")),
            "",
            "",
        ),
        ({"patient_id_from": "OtherPatientIDs"}, _other_ids(), "", ""),
        ({"patient_id_from": "(0010,0020)"}, _other_ids(), "PACS-9", ""),
    ],
)
def test_header_identity_mapping(
    settings: dict[str, Any], ds: Dataset, patient_id: str, issuer: str
) -> None:
    who = of_header(ds, IdentitySettings(**settings))
    assert (who.patient_id, who.issuer) == (patient_id, issuer)


@pytest.mark.parametrize(
    "bad",
    [
        {"patient_id_from": "NoSuchKeyword"},
        {"patient_id_from": "OtherPatientIDsSequence"},  # which issuer?
        {"check": "maybe"},
        {"name": "block"},
        {"unknown": 1},
    ],
)
def test_settings_refuse_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IdentitySettings(**bad)


# -- the matcher, on SQLite and PostgreSQL ------------------------------------------------


def _set(**values: Any) -> Any:
    def edit(ds: Dataset) -> None:
        for key, value in values.items():
            if value is None:
                delattr(ds, key)
            elif key == "OtherPatientIDsSequence":
                item = Dataset()
                item.PatientID, item.IssuerOfPatientID = value
                ds.OtherPatientIDsSequence = [item]
            else:
                setattr(ds, key, value)

    return edit


def _world(db: Database, root: Path, settings: IdentitySettings) -> tuple[World, list[str]]:
    world = World(db, root)
    rules = load_rules_text(BY_ACCESSION)
    alerts: list[str] = []
    world.matcher = Matcher(
        db.sessions,
        world.content,
        lambda: rules,
        world.book,
        clock=world.clock,
        identity=settings,
        on_mismatch=lambda s, req: alerts.append(req.reference),
    )
    return world, alerts


MAPPED = {"patient_id_from": "OtherPatientIDsSequence", "issuer": "HOSP-A"}


@pytest.mark.parametrize(
    ("case", "patient_id", "edit", "settings", "issuer", "fields"),
    [
        ("equal", "MRN-000123", {}, {}, "", ""),
        ("different id", "MRN-B", {"PatientName": "ROE^RICHARD"}, {}, "", "patient_id"),
        ("other birth date", "MRN-000123", {"PatientBirthDate": "19650505"}, {}, "", "birth_date"),
        ("no birth date in header", "MRN-000123", {"PatientBirthDate": None}, {}, "", ""),
        ("name spelled differently", "MRN-000123", {"PatientName": "TEST^PATIENTE"}, {}, "", ""),
        ("issuer differs", "MRN-000123", {"IssuerOfPatientID": "HOSP-B"}, {}, "HOSP-A", "issuer"),
        ("issuer agrees", "MRN-000123", {"IssuerOfPatientID": "HOSP-A"}, {}, "HOSP-A", ""),
        (
            "mapped via OtherPatientIDsSequence",
            "PACS-9",
            {"OtherPatientIDsSequence": ("MRN-000123", "HOSP-A")},
            MAPPED,
            "",
            "",
        ),
        (
            "mapping finds another patient",
            "PACS-9",
            {"OtherPatientIDsSequence": ("MRN-B", "HOSP-A")},
            MAPPED,
            "",
            "patient_id",
        ),
        ("check off (flagged elsewhere)", "MRN-B", {}, {"check": False}, "", ""),
    ],
)
def test_matching_holds_another_patients_study(
    db: Database,
    tmp_path: Path,
    case: str,
    patient_id: str,
    edit: dict[str, Any],
    settings: dict[str, Any],
    issuer: str,
    fields: str,
) -> None:
    world, alerts = _world(db, tmp_path, IdentitySettings(**settings))
    ref = world.book.create(
        draft(selection=[{"kind": "accession", "value": "MISMATCH1"}]), "test"
    ).reference
    if issuer:
        with db.sessions() as s, s.begin():
            req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
            req.patient_issuer = issuer
    uid = world.receive(
        "pushed", 2, accession="MISMATCH1", patient_id=patient_id, edit=_set(**edit)
    )
    world.settle()
    world.settle()  # decided again (e.g. after a rules reload): alerted once all the same
    with db.sessions() as s:
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        rows = list(s.scalars(select(IdentityMismatch)))
        decision = s.scalars(select(StudyDecision).order_by(StudyDecision.id.desc())).first()
        timeline = [e.reason for e in s.scalars(select(RequestEvent).order_by(RequestEvent.id))]
        study_events = [e.reason for e in s.scalars(select(StudyEvent))]
        audit = list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "identity-mismatch")))
    assert decision is not None
    if not fields:
        assert req.state == RequestState.READY, case
        assert rows == [] and alerts == [] and audit == []
        assert decision.action == "release"
        if "name" in case:
            assert any("name spelled differently (flagged)" in r for r in timeline)
        return
    assert req.state == RequestState.PENDING, case  # stays where it was
    assert decision.action == "hold" and ref in decision.reason
    assert [(m.fields, m.state) for m in rows] == [(fields, MismatchState.OPEN)]
    assert alerts == [ref]  # once, however often decided
    assert len([r for r in timeline if f"({fields})" in r and uid in r]) == 1
    assert any(ref in r and fields in r for r in study_events)
    assert len(audit) == 1 and audit[0].request_ref == ref and uid in audit[0].study_uids
    # No value of either side in what was written for logs and the audit trail.
    for text in [*timeline, *study_events, audit[0].detail, decision.reason]:
        assert "MRN-" not in text and "1965" not in text and "HOSP-" not in text


def test_staff_attach_anyway_or_keep_held(db: Database, tmp_path: Path) -> None:
    world, alerts = _world(db, tmp_path, IdentitySettings())
    refs = [
        world.book.create(draft(selection=[{"kind": "accession", "value": acc}]), "t").reference
        for acc in ("ACCX1", "ACCX2")
    ]
    for acc in ("ACCX1", "ACCX2"):
        world.receive(acc.lower(), 2, accession=acc, edit=_set(PatientBirthDate="19650505"))
    world.settle()
    assert alerts == refs
    with db.sessions() as s:
        ids = {m.request_id: m.id for m in s.scalars(select(IdentityMismatch)).all()}
        reqs = {r.reference: r.id for r in s.scalars(select(ReleaseRequest)).all()}
    first, second = reqs[refs[0]], reqs[refs[1]]
    with db.sessions() as s, s.begin(), pytest.raises(InvalidRequest):
        attach_anyway(
            s,
            world.book,
            first,
            ids[first],
            actor="staff:alice",
            audit_actor="staff:alice",
            reason="  ",
            now=world.clock(),
        )
    with db.sessions() as s, s.begin():
        state = attach_anyway(
            s,
            world.book,
            first,
            ids[first],
            actor="staff:alice",
            audit_actor="staff:alice",
            reason="birth date typo in the RIS, checked with the patient",
            now=world.clock(),
        )
    assert state == RequestState.READY
    with db.sessions() as s, s.begin():
        dismiss(
            s,
            second,
            ids[second],
            actor="staff:bob",
            audit_actor="staff:bob",
            reason="another patient",
            now=world.clock(),
        )
    with db.sessions() as s, s.begin(), pytest.raises(InvalidTransition):
        dismiss(
            s,
            second,
            ids[second],
            actor="staff:bob",
            audit_actor="staff:bob",
            reason="again",
            now=world.clock(),
        )
    # Decided again (new instances, a reload): the override stands, the dismissal too.
    with db.sessions() as s, s.begin():
        for st in s.scalars(select(Study)):
            st.stable_at = world.clock()
    world.clock.now += timedelta(seconds=1)
    world.matcher.on_stable(world.matcher.undecided())
    assert world.book.get(refs[0]).state == RequestState.READY
    assert world.book.get(refs[1]).state == RequestState.PENDING
    assert alerts == refs  # nobody alerted twice
    assert [e.actor for e in world.audited("identity-override")] == ["staff:alice"]
    kept = world.audited("identity-mismatch")
    assert [e.actor for e in kept][-1] == "staff:bob"
    story = [e.reason for e in world.book.timeline(refs[0])]
    assert any("attached despite identity mismatch (birth_date)" in r for r in story)


@pytest.mark.parametrize(
    ("issuer", "ok"), [("", True), ("HOSP-A", True), ("A\\B", False), ("<x>", False)]
)
def test_a_request_names_its_issuer(db: Database, tmp_path: Path, issuer: str, ok: bool) -> None:
    world = World(db, tmp_path)
    if not ok:
        with pytest.raises(ValidationError) as caught:
            draft(patient_issuer=issuer)
        assert caught.value.errors()[0]["loc"] == ("patient_issuer",)
        return
    ref = world.book.create(draft(patient_issuer=issuer), "test").reference
    with db.sessions() as s:
        stored = s.scalar(
            select(ReleaseRequest.patient_issuer).where(ReleaseRequest.reference == ref)
        )
    assert stored == issuer


def test_a_study_awaiting_staff_is_not_purged(db: Database, tmp_path: Path) -> None:
    world, _ = _world(db, tmp_path, IdentitySettings())
    ref = world.book.create(draft(selection=[{"kind": "accession", "value": "ACCP1"}]), "t")
    uid = world.receive("p1", 2, accession="ACCP1", patient_id="MRN-B")
    world.settle()
    world.clock.now += timedelta(days=31)  # past store.unmatched_retention_days (30)
    assert world.purger.sweep() == []
    with db.sessions() as s:
        mid = s.scalars(select(IdentityMismatch.id)).one()
    with db.sessions() as s, s.begin():
        dismiss(
            s, ref.id, mid, actor="staff:bob", audit_actor="staff:bob",
            reason="another patient", now=world.clock(),
        )  # fmt: skip
    assert world.purger.sweep() == [uid]
