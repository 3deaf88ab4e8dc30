"""A report that arrives after the package went out: a new part and an email, never a
silent change.

When a request's package was built with reports (``delivery.reports: with_images``, or
its rule's ``reports:``) and a final or corrected report of one of its studies arrives
later (a correction of the delivered one, or the first final one), the worker's sweep
(:meth:`ReportUpdates.sweep`) adds a small ZIP part to the request's package,
``<reference>-report-<k>.zip``, holding ``REPORT/UPDkkNnn.PDF|HTM`` and its
``MANIFEST.json``; the parts already built are never rewritten. In one transaction the
package row lists the new part, the report is recorded as delivered to the request, the
request's timeline says so and the patient's link email's grant gets a
``report_update_email`` in the outbox (:func:`delivery.messages.report_update_email`).
Only requests whose link is live (``notified`` or ``downloaded``, package not deleted)
are updated; a preliminary report never goes out.

A link locked by wrong codes gets the part but not the email; when staff re-issue it,
the email goes to the new link (:mod:`delivery.report_reissue`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, sessionmaker

from delivery import report_reissue
from delivery.outbox import Outbox
from delivery.packaging.zipwriter import PartWriter
from delivery.report_reissue import KIND as KIND
from delivery.report_render import ReportFile, render_report
from release.progress import note
from release.reports import DELIVERABLE, current_reports
from store.audit import record
from store.catalog import guarded
from store.content import DIR_MODE, ContentStore
from store.models import (
    Grant,
    Package,
    ReleaseRequest,
    Report,
    ReportDelivery,
    RequestState,
    RequestStudy,
    Study,
    utcnow,
)

log = logging.getLogger("courier.delivery.report_updates")
ACTOR = "delivery"
LIVE = (RequestState.NOTIFIED.value, RequestState.DOWNLOADED.value)
#: Candidates read per sweep (:meth:`ReportUpdates.due`).
PAGE = 1000
#: Requests updated per sweep at most.
PER_SWEEP = 50


class ReportUpdates:
    """Finds reports newer than a delivered package and sends them as a new part."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        outbox: Outbox,
        package_dir: Path,
        report_studies: Callable[[Session, int], list[str]],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._content = content
        self._outbox = outbox
        self._dir = package_dir
        self._report_studies = report_studies
        self._clock = clock
        self._after = 0  # the last candidate id the previous sweep read (see due)

    def candidates(self, s: Session, limit: int = PAGE, after: int = 0) -> list[int]:
        """Requests with a live package and a deliverable report of one of their
        studies, received after the package was built, not yet delivered to them: at
        most ``limit``, by id from ``after`` on. Whether the request's policy sends
        reports at all is not known here (see :meth:`due`)."""
        delivered = exists().where(
            ReportDelivery.report_id == Report.id,
            ReportDelivery.request_id == ReleaseRequest.id,
        )
        rows = s.scalars(
            select(ReleaseRequest.id)
            .join(RequestStudy, RequestStudy.request_id == ReleaseRequest.id)
            .join(Study, Study.id == RequestStudy.study_id)
            .join(Report, Report.study_instance_uid == Study.study_uid)
            .join(
                Package,
                and_(Package.request_id == ReleaseRequest.id, Package.deleted_at.is_(None)),
            )
            .where(
                ReleaseRequest.id > after,
                ReleaseRequest.state.in_(LIVE),
                Report.status.in_(DELIVERABLE),
                Report.received_at > Package.built_at,
                ~delivered,
            )
            .distinct()
            .order_by(ReleaseRequest.id)
            .limit(limit)
        )
        return list(rows)

    def due(self, s: Session) -> list[int]:
        """At most :data:`PER_SWEEP` candidates whose policy sends reports. A request
        whose policy sends none stays a candidate for good, so each sweep reads one page
        of :data:`PAGE` candidates on from where the previous one stopped (from the
        start again after the last page): however many such requests there are, every
        other one is reached within a few sweeps."""
        ids = self.candidates(s, PAGE, after=self._after)
        out: list[int] = []
        for request_id in ids:
            if self._report_studies(s, request_id):
                out.append(request_id)
                if len(out) == PER_SWEEP:
                    self._after = request_id
                    return out
        self._after = ids[-1] if len(ids) == PAGE else 0
        return out

    def sweep(self) -> list[str]:
        """Send what is new (:meth:`due`); returns the references updated. Never raises
        for one request (logged, tried again at a later sweep). First queues again the
        emails a re-issue did not reach (:meth:`follow_reissues`)."""
        self.follow_reissues()
        with guarded(self._sessions) as s:
            ids = self.due(s)
        done = []
        for request_id in ids:
            try:
                ref = self.update(request_id)
            except Exception as exc:  # one request's trouble never stops the others
                log.error("report update of request %d failed (%s)", request_id, type(exc).__name__)
                continue
            if ref is not None:
                done.append(ref)
        return done

    def follow_reissues(self) -> list[int]:
        """Queue for the new link the report-update emails the relay dropped because
        their link was locked and then re-issued (:func:`delivery.report_reissue.follow`)."""
        return report_reissue.follow(self._sessions, self._clock())

    def update(self, request_id: int) -> str | None:
        """Add the request's undelivered current reports as a new part; returns its
        reference, or None when there was nothing to send."""
        now = self._clock()
        with guarded(self._sessions) as s:
            req = s.get(ReleaseRequest, request_id)
            package = s.scalars(
                select(Package)
                .where(Package.request_id == request_id, Package.deleted_at.is_(None))
                .order_by(Package.id.desc())
                .limit(1)
            ).first()
            if req is None or package is None or req.state not in LIVE:
                return None
            uids = self._report_studies(s, request_id)
            sent = set(
                s.scalars(
                    select(ReportDelivery.report_id).where(ReportDelivery.request_id == request_id)
                )
            )
            new = [r for r in current_reports(s, uids) if r.id not in sent]
            if not new:
                return None
            reference, language, folder = req.reference, req.language, package.folder
            parts = json.loads(package.parts or "[]")
            k = 1 + sum(1 for p in parts if "-report-" in str(p.get("name", "")))
            files = [
                ReportFile(
                    f"REPORT/UPD{k:02d}N{n:02d}.{ext}", data, report.id
                )  # 8.3 names: a disc carries them as they are
                for n, report in enumerate(new, start=1)
                for ext, data in [render_report(self._content, report, language)]
            ]
        name = f"{reference}-report-{k}.zip"
        dest = self._dir / folder
        dest.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        writer = PartWriter(dest / name, now)
        try:
            for f in files:
                writer.add_bytes(f.name, f.data, compress=not f.name.endswith(".PDF"))
            writer.add_bytes("MANIFEST.json", _manifest(reference, now, writer))
            writer.finish()
            writer.publish()
        except BaseException:
            writer.abort()
            raise
        try:
            self._record(request_id, name, writer, files, now)
        except BaseException:
            (dest / name).unlink(missing_ok=True)
            raise
        log.info("request %s: updated report(s) added as a new part", reference)
        return reference

    def _record(
        self, request_id: int, name: str, writer: PartWriter, files: list[ReportFile], now: datetime
    ) -> None:
        with guarded(self._sessions) as s, s.begin():
            req = s.get(ReleaseRequest, request_id, with_for_update=True)
            package = s.scalars(
                select(Package)
                .where(Package.request_id == request_id, Package.deleted_at.is_(None))
                .order_by(Package.id.desc())
                .limit(1)
                .with_for_update()
            ).first()
            if req is None or package is None or req.state not in LIVE:
                raise RuntimeError("the request moved on while its report part was built")
            parts = json.loads(package.parts or "[]")
            if any(p.get("name") == name for p in parts):
                raise RuntimeError("another node added this report part")
            parts.append({"name": name, "size": writer.size, "sha256": writer.sha256})
            package.parts = json.dumps(parts)
            package.size_bytes += writer.size
            for f in files:
                s.add(
                    ReportDelivery(
                        report_id=f.report_id,
                        request_id=request_id,
                        package_id=package.id,
                        delivered_at=now,
                    )
                )
            note(
                s,
                req,
                ACTOR,
                f"updated report available: {len(files)} report(s) added as a new package "
                f"part ({name}); patient emailed",
                now,
            )
            grant = s.scalars(
                select(Grant)
                .where(
                    Grant.request_id == request_id,
                    Grant.package_id == package.id,
                    Grant.purpose != "forward",
                    Grant.revoked_at.is_(None),
                )
                .order_by(Grant.id.desc())
                .limit(1)
            ).first()
            if grant is not None:
                self._outbox.enqueue(
                    s,
                    kind=KIND,
                    channel="email",
                    recipient=req.recipient_email,
                    language=req.language,
                    request_id=req.id,
                    grant_id=grant.id,
                )
            record(
                s,
                "export",
                actor=ACTOR,
                request=req.reference,
                detail=f"updated report(s) added to the package: {len(files)} file(s), "
                f"{writer.size} bytes",
                at=now,
            )


def _manifest(reference: str, created: datetime, writer: PartWriter) -> bytes:
    doc = {
        "reference": reference,
        "created": created.isoformat(),
        "kind": "report_update",
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in writer.entries],
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")
