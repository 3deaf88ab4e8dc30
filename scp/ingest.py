"""Ingest: turn one spooled C-STORE dataset into a durable, indexed instance.

The order is the promise behind 0x0000: parse and check the header, hash, fsync the
file, rename it into place, fsync the folder, commit the index row, and only then
succeed. So 0x0000 means:

- the file is on disk for good (file and folder fsynced), and it names its sender: the
  File Meta Information carries the calling AE, called AE and the sender's address
  (:mod:`scp.filemeta`, written while it arrived);
- the row is committed, so every reader (rules, the portal, a query) sees it before
  the sender reads the response. With ``Catalog.add(relaxed=True)``: on SQLite the
  commit does not wait for the database's own flush, so a power loss or an operating
  system crash may take the row again, and only those (a crash of Courier never does,
  the database has the commit): whatever takes the row restarts Courier, and start-up
  recovery (:mod:`scp.recovery`) re-creates a row for every stored file that has none,
  from the file alone, with the same peer (AE titles and host: what rules match on).
  On PostgreSQL the commit waits for the flush: the server can crash or restart while
  Courier runs on, and recovery would come only at Courier's next start.

Anything else answers a failure status and leaves nothing half-done: no row without a
file, no file at a final path that the sender was not told about (a file renamed into
place whose row fails is removed again).

Two receiving processes storing the same SOP Instance UID at once: the second finds the
first's file in place and waits (about a second) for its row, then compares bytes. A
file with no row is taken over only once it was placed more than ``orphan_after_s`` ago
(a receiving process uses :func:`orphan_after_s` of ``store.busy_timeout_s``, beyond the
longest a writer waits for its row): its writer died between placing it and indexing
it, and never answered 0x0000. A younger one is a writer still waiting on the index (a
busy SQLite, say): replacing it would lose bytes already acknowledged, so the second
answers 0xA701 (Out of Resources, which a sender retries later, as for a locked index)
and keeps nothing. Should a writer still be alive after its file was taken over, it
never removes or moves aside the file now at that path (not the inode it placed: the
other's, acknowledged) and answers 0xA701 if its row cannot be written.

The statuses are in :class:`Status` (PS3.4 Annex B.2.3: the ranges are the standard's,
the sub-codes ours). Nothing here logs patient data: UIDs, sizes and AE titles only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from scp.filemeta import content_sha256
from scp.header import BadDataset, Header, read_header
from scp.spool import SpoolFile
from store.catalog import Catalog, DuplicateRace, InstanceRecord, KnownInstance
from store.content import ContentStore, check_uid
from store.errors import DatabaseUnavailable, DiskFull, InvalidUID

log = logging.getLogger("courier.scp.ingest")


@dataclass
class _UidLock:
    """A UID's lock and how many threads hold or wait for it."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    users: int = 0


class Status(IntEnum):
    """C-STORE response statuses Courier answers with."""

    SUCCESS = 0x0000  # Success: stored durably and indexed (or an identical copy was)
    OUT_OF_RESOURCES_DISK = 0xA700  # Refused: Out of Resources - no space for the file
    OUT_OF_RESOURCES_DB = 0xA701  # Refused: Out of Resources - index down, or the UID being indexed
    DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class (UIDs differ)
    CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - not a whole, parseable dataset
    MISSING_UID = 0xC001  # Error: Cannot understand - Study/Series/SOP Instance UID missing
    INVALID_UID = 0xC002  # Error: Cannot understand - a UID is malformed
    TOO_MANY_PIXELS = 0xC003  # Error: Cannot understand - declares more than scp.max_pixels
    PROCESSING_FAILURE = 0x0110  # Failure: Processing failure - unexpected error, see log
    REFUSED_BY_RULE = 0x0124  # Refused: Not authorized (PS3.7 C.4) - a reject rule matched


@dataclass(frozen=True)
class Peer:
    """Who sent the instance (association facts; AE titles are not patient data)."""

    calling_ae: str
    called_ae: str
    host: str


# Refuses an instance at the header stage (``scp.screen.RuleScreen``): a status, or None.
Screen = Callable[[Path, Header, Peer], int | None]


# A placed file with no row is its dead writer's once it is this old (seconds since it
# was placed, its ctime): the least :func:`orphan_after_s` gives, whatever the settings.
ORPHAN_AFTER_S = 120.0
# How many times a writer tries its row (``Ingest._durable``), and how many
# store.busy_timeout_s one try may take at most (PostgreSQL's statement_timeout).
_ADD_TRIES = 5
_TRY_TIMEOUTS = 4


def orphan_after_s(busy_timeout_s: float) -> float:
    """How old a placed file with no row must be before another receiver takes it over.

    Longer than a live writer can wait for its row: ``_ADD_TRIES`` tries of up to
    ``_TRY_TIMEOUTS`` x ``store.busy_timeout_s`` each (on PostgreSQL the statement
    timeout is 4x it; on SQLite the write gate and the busy wait are 1x each), plus a
    minute for the rest; never less than :data:`ORPHAN_AFTER_S`. A younger file's writer
    may still answer 0x0000 for it, so taking it over could lose acknowledged bytes.
    """
    return max(ORPHAN_AFTER_S, _ADD_TRIES * _TRY_TIMEOUTS * busy_timeout_s + 60.0)


# While a file with no row is younger: how often, and how long, to look for its row.
_PLACE_TRIES = 20
_PLACE_WAIT_S = 0.05


class Ingest:
    """Stores one instance at a time per SOP Instance UID; safe across associations
    and receiving processes.

    ``orphan_after_s`` and ``wall`` (the wall clock, seconds as ``time.time``): see the
    module docstring.
    """

    def __init__(
        self,
        content: ContentStore,
        catalog: Catalog,
        screen: Screen | None = None,
        *,
        max_pixels: int = 1_000_000_000,
        orphan_after_s: float = ORPHAN_AFTER_S,
        wall: Callable[[], float] = time.time,
    ):
        self._content = content
        self._catalog = catalog
        self._screen = screen
        self._orphan_after_s = orphan_after_s
        self._wall = wall
        # Rows x Columns x frames x samples a header may declare (scp.max_pixels): an RLE
        # frame of zeros is tiny on the wire and gigabytes once anything decodes it.
        self._max_pixels = max_pixels
        # One lock per SOP Instance UID being stored now, with how many hold or wait
        # for it: the entry goes when the last one leaves (a long push keeps no
        # lock per instance it ever received).
        self._locks: dict[str, _UidLock] = {}
        self._locks_guard = threading.Lock()

    @contextlib.contextmanager
    def _lock_for(self, uid: str) -> Iterator[None]:
        """Hold the UID's lock: one store of an instance at a time in this process."""
        with self._locks_guard:
            entry = self._locks.get(uid)
            if entry is None:
                entry = self._locks[uid] = _UidLock()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._locks_guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._locks[uid]

    def store(
        self, spooled: SpoolFile | None, path: Path, sop_class: str, sop_instance: str, peer: Peer
    ) -> Status:
        """Make the spooled dataset durable and indexed; return the status to answer."""
        if spooled is not None and spooled.error is not None:
            log.warning("spool write failed (%s); answering A700", spooled.error.strerror)
            return Status.OUT_OF_RESOURCES_DISK
        # One descriptor for the whole store: the header is read through it, its fstat
        # gives the size and the identity (device, inode) the file keeps once placed,
        # and the file is flushed through it (no second open, no stat by name).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self._store(fd, os.fstat(fd), spooled, path, sop_class, sop_instance, peer)
        finally:
            os.close(fd)

    def _store(
        self,
        fd: int,
        st: os.stat_result,
        spooled: SpoolFile | None,
        path: Path,
        sop_class: str,
        sop_instance: str,
        peer: Peer,
    ) -> Status:
        try:
            header = read_header(path, (fd, st.st_size))
        except BadDataset as exc:
            log.warning("refused instance: %s", exc)
            return Status.CANNOT_UNDERSTAND
        missing = [
            k
            for k, v in (
                ("SOPInstanceUID", header.sop_instance_uid),
                ("SOPClassUID", header.sop_class_uid),
                ("StudyInstanceUID", header.study_uid),
                ("SeriesInstanceUID", header.series_uid),
            )
            if not v
        ]
        if missing:
            log.warning("refused instance: missing %s", ", ".join(missing))
            return Status.MISSING_UID
        if header.sop_instance_uid != sop_instance or header.sop_class_uid != sop_class:
            log.warning("refused instance: dataset UIDs differ from the C-STORE command")
            return Status.DATASET_MISMATCH
        try:
            rel = self._content.instance_relpath(
                str(header.study_uid), str(header.series_uid), sop_instance
            )
            check_uid(sop_class, "SOPClassUID")
        except InvalidUID as exc:
            log.warning("refused instance: %s", exc)
            return Status.INVALID_UID
        if header.pixels.total_values > self._max_pixels:
            log.warning(
                "refused instance uid=%s: declares %d pixel values, over scp.max_pixels %d; "
                "answering 0x%04X",
                sop_instance,
                header.pixels.total_values,
                self._max_pixels,
                Status.TOO_MANY_PIXELS,
            )
            return Status.TOO_MANY_PIXELS
        if self._screen is not None:
            refused = self._screen(path, header, peer)
            if refused is not None:
                return Status(refused)
        with self._lock_for(sop_instance):
            try:
                return self._durable(path, rel, header, peer, spooled, fd, st)
            except DiskFull:
                log.warning("content store full; answering A700 uid=%s", sop_instance)
                return Status.OUT_OF_RESOURCES_DISK
            except DatabaseUnavailable as exc:
                log.warning("%s; answering A701 uid=%s", exc, sop_instance)
                return Status.OUT_OF_RESOURCES_DB

    def _durable(
        self,
        path: Path,
        rel: str,
        header: Header,
        peer: Peer,
        spooled: SpoolFile | None,
        fd: int,
        st: os.stat_result,
    ) -> Status:
        if spooled is not None and spooled.size == st.st_size:
            sha, size = spooled.digest.hexdigest(), spooled.size  # hashed as it arrived
        else:
            sha, size = content_sha256(path)
        rec = _record(header, peer, sha, size, rel)
        # The file placing makes (a link or rename keeps the inode): what is ours at rel.
        ours = st.st_dev, st.st_ino
        # Placing never overwrites, so the common path (a new instance) needs no
        # look-up first: the link either creates the file (ours) or finds one there.
        take_over = False
        for _attempt in range(_PLACE_TRIES):
            try:
                self._content.place(path, rel, replace=take_over, fd=fd)
                if spooled is not None:
                    spooled.placed = True  # the spool name is gone
                break
            except FileExistsError:
                known = self._catalog.lookup(rec.sop_instance_uid)
                if known is not None:
                    return self._again(path, rec, known)
                if self._orphaned(rel):
                    take_over = True  # its writer died before indexing it
                    continue
                # Another receiving process is storing the same UID right now.
                time.sleep(_PLACE_WAIT_S)
        else:
            log.warning(
                "uid=%s: another receiving process placed this instance and has not "
                "indexed it yet; answering A701 (the sender retries later)",
                rec.sop_instance_uid,
            )
            return Status.OUT_OF_RESOURCES_DB
        try:
            for _retry in range(_ADD_TRIES):
                try:
                    # On SQLite, committed without waiting for the database's flush:
                    # the file is durable and names its sender, so a row a power loss
                    # takes is re-created, peer and all, by start-up recovery.
                    self._catalog.add(rec, relaxed=True)
                    break
                except DuplicateRace:
                    known = self._catalog.lookup(rec.sop_instance_uid)
                    if known is not None:
                        # Indexed already, its file missing (or under other study UIDs).
                        return self._placed_but_known(rel, rec, known, ours)
                    # Another process created this study or series row first; it
                    # exists now, so the next attempt updates it.
            else:
                raise DatabaseUnavailable("the index kept refusing the row")
        except BaseException:
            if self._still_ours(rel, ours, rec.sop_instance_uid):
                self._content.remove(rel)
            raise
        log.info(
            "stored uid=%s study=%s bytes=%d from=%s",
            rec.sop_instance_uid,
            rec.study_uid,
            size,
            peer.calling_ae,
        )
        return Status.SUCCESS

    def _orphaned(self, rel: str) -> bool:
        """Whether the file at ``rel`` (no row) was placed more than ``orphan_after_s``
        ago: by its ctime, which placing it (a link or rename) set."""
        try:
            placed = self._content.path(rel).stat().st_ctime
        except FileNotFoundError:
            return False  # removed by its writer meanwhile: the next attempt places ours
        return self._wall() - placed > self._orphan_after_s

    def _again(self, path: Path, rec: InstanceRecord, known: KnownInstance) -> Status:
        """A file is already at the instance's path and indexed: same bytes or not."""
        if known.sha256 == rec.sha256:
            if known.file_missing:
                # Put back by another receiving process: the row takes that file's size.
                size = self._content.path(known.path).stat().st_size
                self._catalog.mark_restored(known.id, size)
            log.info("identical re-send uid=%s kept one copy", rec.sop_instance_uid)
            return Status.SUCCESS
        return self._keep_aside(path, rec)

    def _still_ours(self, rel: str, ours: tuple[int, int], uid: str) -> bool:
        """Whether the file at ``rel`` is still the one we placed. A writer slower than
        ``orphan_after_s`` may find its file taken over by another receiving process,
        which answered 0x0000 for the file there now: that one is never ours to undo."""
        try:
            if _identity(self._content.path(rel)) == ours:
                return True
        except FileNotFoundError:
            return False  # moved aside or removed already: nothing there to undo
        log.warning(
            "uid=%s: the file placed here was taken over by another receiving process "
            "(this index write outlasted orphan_after_s); left alone",
            uid,
        )
        return False

    def _placed_but_known(
        self, rel: str, rec: InstanceRecord, known: KnownInstance, ours: tuple[int, int]
    ) -> Status:
        """We placed a file, but the UID was indexed: restore it, or move ours aside."""
        if not self._still_ours(rel, ours, rec.sop_instance_uid):
            # Our bytes were replaced before we indexed them, and never acknowledged:
            # a re-send is kept aside as any same-UID conflict is.
            return Status.OUT_OF_RESOURCES_DB
        if known.sha256 == rec.sha256 and known.path == rel:
            # Same content, but the sender elements in its meta may differ in length
            # from the first copy's: the row takes this file's size.
            self._catalog.mark_restored(known.id, rec.size_bytes)
            log.info("restored missing file uid=%s", rec.sop_instance_uid)
            return Status.SUCCESS
        return self._keep_aside(self._content.path(rel), rec)

    def _keep_aside(self, path: Path, rec: InstanceRecord) -> Status:
        conflict_rel = self._content.conflict_relpath(rec.sop_instance_uid, rec.sha256)
        self._content.place(path, conflict_rel, replace=True)
        conflict = replace_path(rec, conflict_rel)
        try:
            self._catalog.add_conflict(conflict)
        except BaseException:
            self._content.remove(conflict_rel)
            raise
        log.warning("same UID, different bytes: kept aside uid=%s", rec.sop_instance_uid)
        return Status.SUCCESS


def _identity(path: Path) -> tuple[int, int]:
    """A file's device and inode: which file a name holds."""
    st = path.stat()
    return st.st_dev, st.st_ino


def replace_path(rec: InstanceRecord, rel: str) -> InstanceRecord:
    """``rec`` stored at another path."""
    return dataclasses.replace(rec, path=rel)


def _record(header: Header, peer: Peer, sha: str, size: int, rel: str) -> InstanceRecord:
    return InstanceRecord(
        study_uid=str(header.study_uid),
        series_uid=str(header.series_uid),
        sop_instance_uid=str(header.sop_instance_uid),
        sop_class_uid=str(header.sop_class_uid),
        transfer_syntax_uid=header.transfer_syntax_uid,
        sha256=sha,
        size_bytes=size,
        path=rel,
        patient_id=header.patient_id,
        patient_name=header.patient_name,
        patient_birth_date=header.patient_birth_date,
        declared_pixels=header.pixels.total_values or None,
        accession_number=header.accession_number,
        study_date=header.study_date,
        study_description=header.study_description,
        modality=header.modality,
        series_number=header.series_number,
        series_description=header.series_description,
        instance_number=header.instance_number,
        calling_ae=peer.calling_ae,
        called_ae=peer.called_ae,
        peer_host=peer.host,
    )
