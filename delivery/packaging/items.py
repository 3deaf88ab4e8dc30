"""What goes into a package: the stored instances of a request's studies, in order.

Used by the delivery batch (the whole request) and by anything that packages a subset of
it (one study, for the portal's per-study download; a disc image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from delivery.packaging.errors import PackageError
from delivery.packaging.package import PackageItem
from release.reports import withheld_for_request
from store.catalog import guarded
from store.content import ContentStore
from store.models import Instance, RequestStudy, Series, Study

log = logging.getLogger(__name__)


def package_items(
    sessions: sessionmaker[Session],
    content: ContentStore,
    request_id: int,
    study_uids: Collection[str] | None = None,
    report_studies: Callable[[Session, int], list[str]] | None = None,
) -> list[PackageItem]:
    """The instances of the studies attached to request ``request_id`` (only those whose
    Study Instance UID is in ``study_uids``, when given), in arrival order.

    Report instances (Text SR, Encapsulated PDF) go only where the report policy lets
    them: ``report_studies(session, request_id)`` names the studies whose policy is
    ``with_images`` (:func:`release.reports.studies_with_reports`), and of those only
    the current final or corrected reports' instances go; None: none goes
    (:func:`release.reports.withheld_for_request`). Withheld instances are left out
    before anything is counted, so they are never "missing".

    Raises :class:`PackageError` when there is none, or when any instance's file is
    flagged missing (never a partial release).
    """
    query = (
        select(
            Instance,
            Study.study_uid,
            Series.series_uid,
            Series.series_number,
            Series.modality,
        )
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .join(RequestStudy, RequestStudy.study_id == Study.id)
        .where(RequestStudy.request_id == request_id)
        .order_by(Instance.id)
    )
    if study_uids is not None:
        query = query.where(Study.study_uid.in_(list(study_uids)))
    with guarded(sessions) as s:
        rows = s.execute(query).all()
        uids = report_studies(s, request_id) if report_studies is not None else None
        withheld = withheld_for_request(s, request_id, uids)
    if withheld:
        kept = [row for row in rows if row[0].id not in withheld]
        if len(kept) < len(rows):  # counts only: nothing about the patient
            log.info(
                "request %d: %d report instance(s) withheld by policy",
                request_id,
                len(rows) - len(kept),
            )
        rows = kept
    if not rows:
        raise PackageError("no stored instance for this request")
    missing = sum(1 for row in rows if row[0].file_missing)
    if missing:
        raise PackageError(f"{missing} instance file(s) are missing from the store")
    return [
        PackageItem(
            path=content.path(inst.path),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=inst.sop_instance_uid,
            sop_class_uid=inst.sop_class_uid,
            transfer_syntax_uid=inst.transfer_syntax_uid,
            modality=modality or None,
            series_number=_int(series_number),
            instance_number=_int(inst.instance_number),
            size_bytes=inst.size_bytes,
        )
        for inst, study_uid, series_uid, series_number, modality in rows
    ]


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None
