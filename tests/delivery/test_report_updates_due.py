"""Which requests a report-update sweep takes (:meth:`ReportUpdates.due`), on SQLite and
PostgreSQL: requests whose policy sends no reports stay candidates for good, and however
many of them there are (more than a page), every request whose policy sends reports is
reached within a bounded number of sweeps; none of the others is ever taken.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from delivery.report_updates import ReportUpdates
from store.models import Report
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig

rig = patient_rig.rig
built_package = patient_rig.built_package


@pytest.mark.parametrize(
    ("page", "per_sweep", "never", "with_images"),
    [
        (3, 2, 7, 2),  # more "never" requests than a page, before the wanted ones
        (2, 1, 4, 3),
        (4, 4, 0, 5),
        (10, 2, 3, 4),  # one page holds everything, more wanted than a sweep takes
    ],
)
def test_requests_whose_policy_sends_no_reports_never_hide_the_others(
    rig: Rig,
    monkeypatch: pytest.MonkeyPatch,
    page: int,
    per_sweep: int,
    never: int,
    with_images: int,
) -> None:
    monkeypatch.setattr("delivery.report_updates.PAGE", page)
    monkeypatch.setattr("delivery.report_updates.PER_SWEEP", per_sweep)
    quiet = [rig.patient().request_id for _ in range(never)]  # older: lower ids
    wanted = {rig.patient().request_id for _ in range(with_images)}
    with rig.db.sessions() as s, s.begin():  # a final report after every package
        s.add(
            Report(
                study_instance_uid=rig.package.study_uid,
                accession_number="ACC1",
                status="final",
                source="hl7",
                kind="text",
                received_at=rig.clock() + timedelta(hours=1),
                body_path="reports/x.txt",
                body_sha256="0" * 64,
                body_size=1,
            )
        )
    study = rig.package.study_uid

    def policy(s: Session, request_id: int) -> list[str]:
        return [study] if request_id in wanted else []

    outbox: Any = None
    updates = ReportUpdates(
        rig.db.sessions, rig.ctx.content, outbox, rig.ctx.package_dir, policy, rig.clock
    )
    seen: set[int] = set()
    sweeps = 0
    while seen != wanted:  # bounded: a full round of pages reaches every candidate
        sweeps += 1
        assert sweeps <= (never + with_images) // page + with_images // per_sweep + 2
        with rig.db.sessions() as s:
            taken = updates.due(s)
        assert len(taken) <= per_sweep
        assert not set(taken) & set(quiet)
        seen |= set(taken)
