"""Which bytes of a file a portal session has received, across ``Range`` answers.

A download is complete when every byte of the file has been sent to that session, in
one answer or many (a resumed download, a download manager's parallel ranges): a
``Range: bytes=-1`` touches the last byte and is not a download. The spans of each fully
sent answer (:class:`portal.partfile.PartResponse`) are merged into the session's
:class:`~store.models.DownloadCoverage` row for that file; when their union is the
whole file, :func:`add_sent` says so and deletes the row (a later full download counts
again). A file whose size changed since (a study ZIP built again) starts afresh, and so
does a row past :data:`MAX_SPANS` separate spans (a client asking for scattered bytes
one by one): never counted early, at worst later.

The caller holds the grant's row lock (:func:`portal.grantsession.lock_grant`), so two
answers finishing at once for one session cannot lose each other's spans.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from portal.partfile import Spans
from store.models import DownloadCoverage

#: Separate spans kept per session and file (a few hundred bytes of JSON at most).
MAX_SPANS = 64


def merge(spans: Spans, more: Spans) -> Spans:
    """The union of two lists of ``[start, end)`` spans, sorted, touching ones joined,
    empty ones dropped."""
    out: Spans = []
    for start, end in sorted(s for s in [*spans, *more] if s[1] > s[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def covers(spans: Spans, size: int) -> bool:
    """Whether merged ``spans`` hold every byte of a ``size``-byte file."""
    return size == 0 or spans == [(0, size)]


def _load(text: str) -> Spans:
    try:
        return [(int(a), int(b)) for a, b in json.loads(text)]
    except (ValueError, TypeError):
        return []  # unreadable: count from nothing rather than from a guess


def add_sent(s: Session, session_id: int, part: str, sent: Spans, size: int, now: datetime) -> bool:
    """Record that ``sent`` spans of ``part`` (``size`` bytes) reached session
    ``session_id``, in ``s``; True when the session now has the whole file."""
    row = s.scalars(
        select(DownloadCoverage).where(
            DownloadCoverage.session_id == session_id, DownloadCoverage.part == part
        )
    ).first()
    before = _load(row.spans) if row is not None and row.size == size else []
    spans = merge(before, [(max(0, a), min(size, b)) for a, b in sent])
    if covers(spans, size):
        if row is not None:
            s.execute(delete(DownloadCoverage).where(DownloadCoverage.id == row.id))
        return True
    if len(spans) > MAX_SPANS:
        spans = merge([], sent)
    text = json.dumps(spans, separators=(",", ":"))
    if row is None:
        s.add(
            DownloadCoverage(
                session_id=session_id, part=part, size=size, spans=text, updated_at=now
            )
        )
    else:
        row.size, row.spans, row.updated_at = size, text, now
    return False
