"""The staff request page lists the radiology reports of the request's studies: status,
where they came from, whether each was sent; never their text."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from store.models import Package, ReleaseRequest, Report, ReportDelivery, RequestStudy, Study
from tests.portal.test_staff import (  # noqa: F401
    Site,
    cheap_hashes,
    main_text,
    notified,
    signed_in,
    site,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
UID = "1.2.826.0.1.3680043.8.498.9191"


def _report(status: str, supersedes: int | None = None) -> Report:
    return Report(
        study_instance_uid=UID,
        accession_number="ACC1",
        status=status,
        source="hl7",
        kind="text",
        title="CT <Chest>",
        received_at=T0,
        body_path="reports/x.txt",
        body_sha256="0" * 64,
        body_size=1,
        supersedes_id=supersedes,
    )


def test_staff_see_the_reports_and_what_was_sent(signed_in: Site) -> None:  # noqa: F811
    ref, _grant = notified(signed_in)
    with signed_in.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        study = Study(study_uid=UID, first_received_at=T0, last_received_at=T0)
        s.add(study)
        s.flush()
        s.add(RequestStudy(request_id=req.id, study_id=study.id, matched_at=T0))
        prelim = _report("preliminary")
        s.add(prelim)
        s.flush()
        final = _report("final", prelim.id)
        s.add(final)
        s.flush()
        package = s.scalars(select(Package).where(Package.request_id == req.id)).one()
        s.add(
            ReportDelivery(
                report_id=final.id, request_id=req.id, package_id=package.id, delivered_at=T0
            )
        )
    page = main_text(signed_in.client.get(f"/staff/requests/{ref}").text)
    assert "Radiology reports" in page
    assert "replaced or preliminary: never sent" in page and "sent" in page
    assert "CT &lt;Chest&gt;" in page and "RIS (HL7)" in page


def test_no_reports_no_section(signed_in: Site) -> None:  # noqa: F811
    ref, _grant = notified(signed_in)
    page = signed_in.client.get(f"/staff/requests/{ref}").text
    assert "Radiology reports" not in page
