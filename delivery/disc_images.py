"""The disc image of a job in the CD burn queue (:mod:`delivery.discs`).

Public surface: :func:`write_job_image` → :class:`~delivery.disc.DiscResult`,
:func:`image_of` (the open job's image file, to hand to staff), :func:`sweep_leftovers`
(at start-up and periodically), :data:`FOLDER`.

The image is ``<data_dir>/discs/<REF>.iso``, written by :func:`delivery.disc.write_disc_image`
(atomic: a final-named image is always whole). One writer at a time per job: the writer
first claims the job with a conditional UPDATE of ``writing_since`` (a lease of
:data:`LEASE`, so a writer that died frees the job), and records the path, SHA-256, size
and ``written_at`` only if its claim still stands and the job is still open; a job
cancelled meanwhile gets its new image deleted. The record is one transaction with a
``disc image written`` note on the request's timeline and an ``export`` audit event, as
``courier export-iso`` writes them.

This runs for as long as the image takes (seconds to minutes): call it from a worker
thread, never on an event loop.

A writer killed mid-way leaves its hidden ``.<REF>.iso.<random>.partial`` image and its
offline viewer's ``.<REF>.iso.viewer.<random>.partial`` spool (rendered images, up to a
DVD's worth) in the folder; :func:`sweep_leftovers` removes them at the next start, and
the delivery worker's periodic sweep once no live claim covers them (on a shared
database a killed writer's claim outlives the next start by up to :data:`LEASE`).

Errors: :class:`~delivery.discs.DiscRefused` with a message for staff (no open job,
someone else is writing, no stored instance, a missing file, a full disk); nothing is
left at the image's path then. Database failures surface as
:class:`~store.errors.DatabaseUnavailable`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from delivery.disc import DiscResult, write_disc_image
from delivery.discs import DiscRefused, open_job
from delivery.packaging.errors import PackageError
from delivery.packaging.items import package_items
from delivery.packaging.package import PackageInfo
from delivery.packaging.viewer import ViewerOptions
from delivery.packaging.zipwriter import PARTIAL_SUFFIX, fsync_dir
from delivery.report_render import render_report
from release.reports import current_reports
from release.requests import RequestBook, study_uids
from store.audit import record
from store.catalog import guarded
from store.claims import is_postgres
from store.content import DIR_MODE, ContentStore
from store.models import (
    DiscJob,
    ReleaseRequest,
    Report,
    ReportDelivery,
    RequestState,
    utcnow,
)

log = logging.getLogger("courier.delivery.discs")

FOLDER = "discs"
"""Where images go, under ``node.data_dir``."""
LEASE = timedelta(hours=2)
"""How long a claim to write an image holds (a DVD's worth of instances takes minutes)."""


def _set(s: Session, job_id: int, *where: Any, **values: Any) -> bool:
    """A conditional UPDATE of an open job; True when it took."""
    result = cast(
        CursorResult[Any],
        s.execute(
            update(DiscJob)
            .where(
                DiscJob.id == job_id,
                DiscJob.burned_at.is_(None),
                DiscJob.cancelled_at.is_(None),
                *where,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ),
    )
    return result.rowcount == 1


def image_of(s: Session, content: ContentStore, request_id: int) -> Path | None:
    """The open job's written image file, or None (no open job, none written, or the
    file is gone)."""
    job = open_job(s, request_id)
    if job is None or not job.image_path or job.written_at is None:
        return None
    path = content.root / job.image_path
    return path if path.is_file() else None


def write_job_image(
    sessions: sessionmaker[Session],
    content: ContentStore,
    request_id: int,
    *,
    actor: str,
    audit_actor: str,
    contact: str = "",
    clock: Callable[[], datetime] = utcnow,
    viewer: ViewerOptions | None = None,
) -> DiscResult:
    """Write the disc image of request ``request_id``'s open job and record it (see the
    module docstring); returns what was written. An image already recorded whose file
    still exists is not written again. ``viewer``: the offline viewer on the disc
    (``delivery.offline_viewer``). Raises :class:`DiscRefused`."""
    claimed = clock()
    with guarded(sessions) as s, s.begin():
        req = s.get(ReleaseRequest, request_id)
        assert req is not None  # requests are never deleted
        reference, language = req.reference, req.language
        job = open_job(s, request_id)
        if job is None:
            raise DiscRefused("Queue the request for CD first (Mark for CD).")
        if job.written_at is not None and image_of(s, content, request_id) is not None:
            raise DiscRefused("The disc image is already written; download it below.")
        job_id = job.id
        if not _set(
            s,
            job_id,
            or_(DiscJob.writing_since.is_(None), DiscJob.writing_since < claimed - LEASE),
            writing_since=claimed,
        ):
            raise DiscRefused(
                "Someone is writing this disc image now; wait a few minutes and reload."
            )
    folder = content.root / FOLDER
    out = folder / f"{reference}.iso"
    try:
        items = package_items(sessions, content, request_id, report_studies=delivered_studies)
        folder.mkdir(exist_ok=True, mode=DIR_MODE)
        info = PackageInfo(
            reference=reference,
            language=language,
            contact=contact,
            created=claimed,
            reports=delivered_report_files(sessions, content, request_id, language),
        )
        # force: the path is ours alone (claimed above); a file there is a stale image
        # of an earlier job of this request, or one a crash left unrecorded.
        result = write_disc_image(items, out, info=info, force=True, viewer=viewer)
    except (PackageError, OSError) as exc:
        _release(sessions, job_id, claimed)
        raise DiscRefused(f"No disc image was written: {exc}") from exc
    except BaseException:
        _release(sessions, job_id, claimed)
        raise
    try:
        _record(sessions, job_id, claimed, result, actor, audit_actor, clock())
    except BaseException:
        out.unlink(missing_ok=True)  # an image nobody recorded would never be cleaned up
        _release(sessions, job_id, claimed)
        raise
    return result


def sweep_leftovers(
    sessions: sessionmaker[Session],
    content: ContentStore,
    started: float,
    *,
    clock: Callable[[], datetime] = utcnow,
    periodic: bool = False,
) -> int:
    """Remove what interrupted image writes left in ``<data_dir>/discs`` (see the module
    docstring); return how many entries went. Call it at start-up (``started``: this
    run's start) and from a periodic sweep (``periodic``, ``started``: now).

    Only hidden ``.*.partial`` entries last changed before ``started`` (seconds since the
    epoch) go: a write begun since is never touched, nor is a finished ``<REF>.iso``.
    The entries of a request whose open job holds a live writing claim (younger than
    :data:`LEASE`) are kept too, and go at a later sweep once it lapses: with a shared
    database (another node may be writing now), and on every database when
    ``periodic`` (this process may be writing now; a writer claims its job before it
    creates a file, so what a claim taken after the look-up writes is newer than
    ``started``). At start-up on SQLite the node is the only writer, so a claim left
    by the run that died does not keep its leftovers. A missing folder is clean.
    """
    folder = content.root / FOLDER
    if not folder.is_dir():
        return 0
    with guarded(sessions) as s:
        writing: set[str] = set()
        if periodic or is_postgres(s.connection()):
            writing = set(
                s.scalars(
                    select(ReleaseRequest.reference)
                    .join(DiscJob, DiscJob.request_id == ReleaseRequest.id)
                    .where(
                        DiscJob.writing_since >= clock() - LEASE,
                        DiscJob.burned_at.is_(None),
                        DiscJob.cancelled_at.is_(None),
                    )
                )
            )
    removed = 0
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
            continue
        if name[1:].partition(".iso.")[0] in writing:
            continue
        try:
            if entry.lstat().st_mtime >= started:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # gone meanwhile
        except OSError as exc:
            log.warning("disc images: a leftover could not be removed (%s)", type(exc).__name__)
            continue
        removed += 1
    if removed:
        fsync_dir(folder)
        log.info("disc images: %d leftover(s) of interrupted writes removed", removed)
    return removed


def delivered_studies(s: Session, request_id: int) -> list[str]:
    """The studies whose reports went out with the request (its ``report_studies`` as
    the package saw them): a disc carries their current reports' instances, no other
    report instance (:func:`release.reports.withheld_instances`)."""
    sent = select(ReportDelivery.report_id).where(ReportDelivery.request_id == request_id)
    return list(s.scalars(select(Report.study_instance_uid).where(Report.id.in_(sent)).distinct()))


def delivered_report_files(
    sessions: sessionmaker[Session], content: ContentStore, request_id: int, language: str
) -> tuple[tuple[str, bytes], ...]:
    """The disc carries the reports the request's package went out with (and the
    updates sent since): the current ones among those delivered to it."""
    with guarded(sessions) as s:
        sent = select(ReportDelivery.report_id).where(ReportDelivery.request_id == request_id)
        uids = s.scalars(
            select(Report.study_instance_uid).where(Report.id.in_(sent)).distinct()
        ).all()
        current = [r for r in current_reports(s, uids) if r.id in set(s.scalars(sent))]
        files = []
        for n, report in enumerate(current, start=1):
            ext, data = render_report(content, report, language)
            files.append((f"REPORT/RPT{n:03d}.{ext}", data))
    return tuple(files)


def _release(sessions: sessionmaker[Session], job_id: int, claimed: datetime) -> None:
    with guarded(sessions) as s, s.begin():
        _set(s, job_id, DiscJob.writing_since == claimed, writing_since=None)


def _record(
    sessions: sessionmaker[Session],
    job_id: int,
    claimed: datetime,
    result: DiscResult,
    actor: str,
    audit_actor: str,
    now: datetime,
) -> None:
    with guarded(sessions) as s, s.begin():
        if not _set(
            s,
            job_id,
            DiscJob.writing_since == claimed,
            writing_since=None,
            image_path=f"{FOLDER}/{result.path.name}",
            image_sha256=result.sha256,
            image_size=result.size,
            written_at=now,
        ):
            raise DiscRefused(
                "The CD was cancelled (or burned) while its image was written; the image "
                "was deleted."
            )
        job = s.get(DiscJob, job_id)
        assert job is not None
        req = s.get(ReleaseRequest, job.request_id)
        assert req is not None
        state = RequestState(req.state)
        reason = f"disc image written ({result.instances} instances)"
        RequestBook(sessions).move(s, req, state, state, actor, reason, now)
        record(
            s,
            "export",
            actor=audit_actor,
            studies=study_uids(s, req.id),
            request=req.reference,
            detail=f"{reason} for a CD/DVD",
            at=now,
        )
