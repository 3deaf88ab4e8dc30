"""Start-up recovery: make the disk and the index agree after any stop, even kill -9.

1. Spool leftovers (datasets that were still arriving) are deleted: their senders
   never received 0x0000.
2. Stored files without a row (the node died between rename and commit, or a power
   loss took a row committed without the database's flush, see :mod:`scp.ingest`) are
   re-indexed from their headers: the file is the durable truth, and its File Meta
   Information names the sender (calling AE, called AE, host; empty in files written
   before Courier recorded them there), so rules see the same peer as on receipt.
3. Rows whose file is gone are flagged ``file_missing`` (never silently dropped) so
   staff see it; an identical re-send restores them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from scp.filemeta import content_sha256
from scp.header import BadDataset, read_header
from scp.ingest import Peer, _record
from store.catalog import Catalog, DuplicateRace, guarded
from store.content import ContentStore
from store.models import Instance

log = logging.getLogger("courier.scp.recovery")


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up recovery found and did (counts only)."""

    spool_removed: int
    reindexed: int
    unreadable: int
    missing_files: int


def recover(
    content: ContentStore, sessions: sessionmaker[Session], catalog: Catalog
) -> RecoveryReport:
    """Run the three steps; safe to run at every start."""
    content.prepare()
    removed = content.sweep_spool()
    with guarded(sessions) as s:
        known = {p for (p,) in s.execute(select(Instance.path))}
    reindexed = unreadable = 0
    on_disk: set[str] = set()
    for rel in content.iter_instances():
        on_disk.add(rel)
        if rel in known:
            continue
        path = content.path(rel)
        try:
            header = read_header(path)
            sha, size = content_sha256(path)
            peer = Peer(header.calling_ae, header.called_ae, header.peer_host)
            rec = _record(header, peer, sha, size, rel)
            if rel != content.instance_relpath(rec.study_uid, rec.series_uid, rec.sop_instance_uid):
                raise BadDataset("file name does not match its UIDs")
            mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
            # Relaxed like ingest: a row lost again is re-created at the next start.
            catalog.add(rec, received_at=mtime, relaxed=True)
            reindexed += 1
        except (BadDataset, ValueError, DuplicateRace) as exc:
            unreadable += 1
            log.warning("cannot re-index %s: %s", Path(rel).name, exc)
    missing = sorted(known - on_disk)
    if missing:
        with guarded(sessions) as s, s.begin():
            for i in range(0, len(missing), 500):
                s.execute(
                    update(Instance)
                    .where(Instance.path.in_(missing[i : i + 500]))
                    .values(file_missing=True)
                )
    report = RecoveryReport(removed, reindexed, unreadable, len(missing))
    log.info(
        "recovery: spool_removed=%d reindexed=%d unreadable=%d missing_files=%d",
        report.spool_removed,
        report.reindexed,
        report.unreadable,
        report.missing_files,
    )
    return report
