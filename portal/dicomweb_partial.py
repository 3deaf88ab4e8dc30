"""WADO-RS when some stored files cannot be read: say so in the status, tell the staff.

A study (or series) retrieve whose every part is streamed cannot change its status once
the first byte is out, so the files are checked before the answer starts
(:func:`split`): each is opened as it would leave (:class:`store.filemeta.OutgoingFile`:
its meta group parsed, nothing else read) and its size compared with the index's (a
cut-short or rewritten file is not sent as if it were the instance). Then, as PS3.18
says for the Retrieve transaction (10.4.3, 8.5):

- all readable: 200;
- some not readable (missing, unreadable, changed size, or already flagged
  ``file_missing`` by start-up recovery or a purge): **206 Partial Content** with
  ``Warning: 299 courier: <k> of <n> instances could not be read ...``; the readable
  ones as parts, byte for byte as when all are readable. The Warning carries counts
  only, never a UID;
- none readable: 404.

Each unreadable instance is logged at ERROR with its SOP Instance UID (the staff's handle
to find the file: no patient data) and the study's timeline on the staff pages gets one
event saying how many could not be read (:func:`tell_staff`; the same words are not
written twice within a day, however often a viewer asks). The index is not changed here:
a file that is back (restored from a backup, re-sent) is served again at once, and
flagging ``file_missing`` stays start-up recovery's (:mod:`scp.recovery`) and the purge's.

A file that goes between the check and its turn in the stream ends the answer without
its closing delimiter (the part is never half-written as if whole): a client sees a cut
body, not a complete-looking one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from portal.context import PortalContext
from portal.dicomweb_scope import CORS_HEADERS, Scope, Stored
from store.db import writing
from store.filemeta import MalformedMeta, OutgoingFile
from store.models import Instance, Series, Study, StudyEvent

log = logging.getLogger("courier.portal.dicomweb")

WARNING_CODE = 299  # PS3.18 8.4: "Miscellaneous persistent warning", a text follows
_TOLD_WITHIN = timedelta(days=1)  # the same words on a study's timeline at most daily


class Unreadable(OSError):
    """A stored file that cannot be sent as the instance the index describes."""


def path_of(ctx: PortalContext, x: Stored) -> Path:
    assert ctx.content is not None  # authorize refused otherwise
    return ctx.content.path(x.relpath)


def check(path: Path, size_bytes: int) -> None:
    """Return when the file at ``path`` opens as an outgoing file of ``size_bytes``
    stored bytes; raise :class:`OSError` (``FileNotFoundError`` when gone,
    :class:`Unreadable` when its size changed) or :class:`MalformedMeta` otherwise.
    Reads the meta group only."""
    fh = OutgoingFile(path)
    try:
        size = os.stat(path).st_size
    finally:
        fh.close()
    if size_bytes >= 0 and size != size_bytes:
        raise Unreadable("the file's size is not the indexed size")


def why(exc: BaseException) -> str:
    """A short cause for a log line (the exception type, never its text: paths hold UIDs
    that belong in the UID field only)."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, Unreadable):
        return "size changed"
    return type(exc).__name__


def split(ctx: PortalContext, found: Sequence[Stored]) -> tuple[list[Stored], list[Stored]]:
    """``found`` as (readable, unreadable), each in order; every unreadable one is logged
    with its SOP Instance UID. Blocking: call on a worker thread."""
    good: list[Stored] = []
    bad: list[Stored] = []
    for x in found:
        try:
            check(path_of(ctx, x), x.size_bytes)
        except (OSError, MalformedMeta) as exc:
            unreadable(x, exc)
            bad.append(x)
        else:
            good.append(x)
    return good, bad


def unreadable(x: Stored, exc: BaseException) -> None:
    """Log that ``x`` could not be read (its SOP Instance UID and the cause's type)."""
    log.error("DICOMweb: stored instance unreadable (%s) sop_uid=%s", why(exc), x.sop_uid)


def flagged_missing(
    ctx: PortalContext,
    scope: Scope,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> int:
    """How many of the scope's instances asked for are flagged ``file_missing`` (not
    withheld): requested content that cannot be returned. Blocking."""
    study_id = scope.studies.get(study_uid)
    if study_id is None:
        return 0
    q = (
        select(func.count())
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study_id, Instance.file_missing.is_(True))
    )
    if series_uid is not None:
        q = q.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        q = q.where(Instance.sop_instance_uid == sop_uid)
    if scope.withheld:
        q = q.where(Instance.id.not_in(list(scope.withheld)))
    with ctx.sessions() as s:
        return int(s.scalar(q) or 0)


def warning(missing: int, total: int) -> str:
    """The ``Warning`` header of a partial answer: counts only."""
    return (
        f"{WARNING_CODE} courier: {missing} of {total} instances could not be read "
        "and are not in this answer"
    )


def headers(missing: int, total: int) -> dict[str, str]:
    """The answer's headers: CORS, plus the Warning when ``missing``."""
    if not missing:
        return dict(CORS_HEADERS)
    return {**CORS_HEADERS, "Warning": warning(missing, total)}


def tell_staff(ctx: PortalContext, scope: Scope, study_uid: str, missing: int, total: int) -> None:
    """One event on the study's timeline (state unchanged): ``missing`` of ``total``
    instances asked for could not be read. Not written when the same words are there
    from the last day. Never raises (logged instead). Blocking."""
    study_id = scope.studies.get(study_uid)
    if study_id is None or not missing:
        return
    reason = (
        f"DICOMweb: {missing} of {total} instances asked for could not be read "
        "(missing or damaged on disk; their SOP Instance UIDs are in the log); "
        "the viewer was told so"
    )
    now = ctx.clock()
    told = (
        select(StudyEvent.id)
        .where(
            StudyEvent.study_id == study_id,
            StudyEvent.reason == reason,
            StudyEvent.at >= now - _TOLD_WITHIN,
        )
        .limit(1)
    )
    try:
        with ctx.sessions() as s:
            if s.scalar(told) is not None:
                return  # told already: a viewer's retries take no write lock
        with ctx.sessions() as s, writing(s):
            # The study's row held (PostgreSQL) or the write lock taken (SQLite): two
            # viewers asking at once write one event.
            study = s.scalar(select(Study).where(Study.id == study_id).with_for_update())
            if study is None:
                return
            if s.scalar(told) is None:
                s.add(
                    StudyEvent(
                        study_id=study_id,
                        at=now,
                        from_state=study.state,
                        to_state=study.state,
                        reason=reason,
                    )
                )
                s.commit()
    except Exception as exc:  # the answer is still right; only the note is lost
        log.warning("DICOMweb: unreadable instances not noted for staff (%s)", type(exc).__name__)
