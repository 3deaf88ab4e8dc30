"""Sending studies to another hospital as a Storage SCU: C-STORE, then storage commitment.

One association per call: one presentation context per (SOP Class, Transfer Syntax)
pair exactly as the instances are stored (nothing is converted), plus the Storage
Commitment Push Model unless commitment is ``off``. Every instance is sent from its
file as stored, without decoding (:mod:`scp.storesend`: the bytes after the File Meta
Information go out unchanged, straight to the socket in PDUs of the peer's maximum
length, and a 2 GB instance never sits in memory); the presentation context of each
(SOP Class, Transfer Syntax) pair is looked up once per association. Each
C-STORE status is recorded in a :class:`StoreReport`; an instance whose context the
peer did not accept is reported unsent, and so is one whose stored file cannot be read
(missing, unreadable, cut short, not the size the index recorded, a File Meta
Information that does not parse): it is
named in ``unreadable`` and the run goes on with the next instance, unless part of its
message had gone out (the association is then aborted: :class:`StoreScuError`,
permanent, as a package with an unreadable file fails).

Storage commitment (``auto``: when the peer accepts the SOP class; ``required``: the
caller fails the attempt without it): the acknowledged instances (and ``commit_also``,
acknowledged in earlier attempts but not yet committed) are named in one N-ACTION,
and the N-EVENT-REPORT is awaited up to ``commitment_timeout_s`` through
:class:`scp.commitment.CommitmentReports`: on this association, or on one the peer
opens to Courier's main SCP, which records it in the database
(:class:`scp.commitment.ReportBook`; the caller's ``reports`` polls that book). The
N-ACTION's Transaction UID is in the report (``transaction_uid``), so the caller can
match a report that comes in after the wait ended.

Nothing here retries or records: the caller (``delivery.dicomsend``) owns that. The
AE is built by an injectable factory, as in :mod:`scp.pacs`; the real thing is tested
against dcmtk's storescp and Orthanc on loopback.

Errors, each saying what to do next (also usable as the builtin they subclass), each
carrying the partial :class:`StoreReport` (what the peer acknowledged before it
failed) as ``report``:

- :class:`StoreScuError`: base; ``permanent`` when retrying cannot help until someone
  changes a configuration.
- :class:`PeerUnreachable` (``ConnectionError``): no TCP connection, or no answer to
  the association request.
- :class:`AssociationRejected` (``ConnectionError``): the peer refused us; permanent
  when it said so (A-ASSOCIATE-RJ result "rejected-permanent": unknown called or
  calling AE title), transient otherwise (busy).
- :class:`PeerAborted` (``ConnectionError``): the association broke, or the peer went
  silent, mid-way (also when it is gone by the storage commitment request).

:func:`attempt` is :func:`send_instances` that returns these failures in the report
(``error``, ``permanent``) instead of raising: the shape ``delivery.dicomsend`` takes.

No patient data is logged: UIDs, AE titles, counts and status codes only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from scp import association
from scp.association import REJECTED_TRANSIENT
from scp.commitment import CommitmentReports
from scp.storesend import FastStore, hold_reactor, resume_reactor

log = logging.getLogger("courier.scp.storescu")

# Send the stored bytes as they are (no decode/re-encode) and in chunks.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# C-STORE statuses (PS3.4 B.2.3) the caller may meet.
SUCCESS = 0x0000  # Success
WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)  # Warning: stored, with coercion/discarding
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources
MAX_CONTEXTS = 128  # presentation contexts in one association (odd IDs 1-255)

AeFactory = Callable[[str], AE]


class Destination(Protocol):
    """Where to send (``delivery`` passes its own record of the destination)."""

    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def commitment(self) -> str: ...


class Sendable(Protocol):
    """One stored instance: its file and the UIDs its presentation context needs."""

    @property
    def path(self) -> Path: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...


@dataclass(frozen=True)
class ScuSettings:
    """Who we are to the peer and how long we wait (seconds)."""

    calling_ae_title: str = "COURIER"
    connect_timeout_s: float = 10.0
    dimse_timeout_s: float = 120.0  # each C-STORE / N-ACTION response
    commitment_timeout_s: float = 60.0  # the N-EVENT-REPORT after the N-ACTION


@dataclass
class StoreReport:
    """What one association achieved.

    ``statuses`` maps each SOP Instance UID tried to the peer's C-STORE status (None:
    no context accepted for it (also in ``unsendable``), its stored file could not be
    read, so it was not sent (also in ``unreadable``), or no answer). ``commitment`` is
    ``off`` (not wanted), ``not-offered`` (the peer refused the SOP class),
    ``none-to-ask`` (nothing acknowledged), ``refused`` (the N-ACTION failed:
    ``commitment_status``), ``no-report`` (no N-EVENT-REPORT in time) or ``reported``
    (``committed`` and ``commit_failed`` hold the answer). ``transaction_uid`` is the
    N-ACTION's ("" when none was sent). ``error``/``permanent`` are set by
    :func:`attempt` when the association failed.
    """

    statuses: dict[str, int | None] = field(default_factory=dict)
    unsendable: set[str] = field(default_factory=set)
    unreadable: set[str] = field(default_factory=set)
    commitment: str = "off"
    commitment_status: int | None = None
    committed: frozenset[str] = frozenset()
    commit_failed: dict[str, int] = field(default_factory=dict)
    transaction_uid: str = ""
    error: str = ""
    permanent: bool = False


def acknowledged(status: int | None) -> bool:
    """True when the peer stored the instance (success, or a warning)."""
    return status is not None and (status == SUCCESS or status in WARNINGS)


class StoreScuError(Exception):
    """Sending failed; ``permanent`` when retrying cannot help as configured."""

    def __init__(self, message: str, report: StoreReport, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.report = report
        self.permanent = permanent


class PeerUnreachable(StoreScuError, ConnectionError):
    """No association: nothing answered at the destination's address."""


class AssociationRejected(StoreScuError, ConnectionError):
    """The peer answered and refused the association."""


class PeerAborted(StoreScuError, ConnectionError):
    """The association broke, or the peer stopped answering, mid-way."""


def _default_ae(ae_title: str) -> AE:
    return AE(ae_title=ae_title)


def _where(dest: Destination) -> str:
    return f"{dest.ae_title} at {dest.host}:{dest.port}"


def _reachable(dest: Destination, settings: ScuSettings, report: StoreReport) -> None:
    """Raise :class:`PeerUnreachable` unless a TCP connection opens (see
    :func:`scp.association.unreachable`: pynetdicom leaks the socket of a refused
    connection)."""
    reason = association.unreachable(dest.host, dest.port, settings.connect_timeout_s)
    if reason is not None:
        raise PeerUnreachable(
            f"{_where(dest)} cannot be reached ({reason}); check the destination's host and "
            "port with the receiving hospital, and the firewall",
            report,
        )


def _rejected(assoc: Association, dest: Destination, calling: str, report: StoreReport) -> None:
    if association.rejection_result(assoc) == REJECTED_TRANSIENT:
        raise AssociationRejected(
            f"{_where(dest)} refused the association for now (busy); it is tried again",
            report,
        )
    raise AssociationRejected(
        f"{_where(dest)} refused the association for good: it must answer to the called AE "
        f"title {dest.ae_title} and know our AE title {calling} (with this host); ask the "
        "receiving hospital's PACS admin, or fix the destination",
        report,
        permanent=True,
    )


def send_instances(
    dest: Destination,
    items: Sequence[Sendable],
    *,
    settings: ScuSettings | None = None,
    commit_also: Sequence[Sendable] = (),
    reports: CommitmentReports | None = None,
    ae_factory: AeFactory = _default_ae,
) -> StoreReport:
    """C-STORE ``items`` to ``dest`` over one association, then ask for storage
    commitment as ``dest.commitment`` says; returns the :class:`StoreReport`.

    ``commit_also`` are instances acknowledged earlier whose commitment is still
    missing (they are named in the N-ACTION, not sent). ``reports`` is where a report
    on another association arrives (the node's, reading its
    :class:`~scp.commitment.ReportBook`); without it, only a report on this
    association is seen. Raises :class:`PeerUnreachable`, :class:`AssociationRejected`,
    :class:`PeerAborted` (each with the partial report), or :class:`StoreScuError`
    (permanent) when the instances need more presentation contexts than one
    association holds or when a stored file failed part-way through its C-STORE. A
    file that cannot be read before any of it is sent is reported in ``unreadable``,
    not raised.
    """
    settings = settings or ScuSettings()
    reports = reports or CommitmentReports()
    report = StoreReport()
    wanted = dest.commitment != "off"
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
    if len(pairs) + (1 if wanted else 0) > MAX_CONTEXTS:
        raise StoreScuError(
            f"these studies hold {len(pairs)} SOP class/transfer syntax pairs; one "
            f"association takes {MAX_CONTEXTS}: send them with another tool",
            report,
            permanent=True,
        )
    if not items and not (wanted and commit_also):
        report.commitment = "none-to-ask" if wanted else "off"
        return report  # nothing to send or ask: no association
    _reachable(dest, settings, report)
    ae = ae_factory(settings.calling_ae_title)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, syntax)
    if wanted:
        ae.add_requested_context(StorageCommitmentPushModel)
    with association.opened(
        ae,
        dest.host,
        dest.port,
        dest.ae_title,
        connect_timeout_s=settings.connect_timeout_s,
        dimse_timeout_s=settings.dimse_timeout_s,
        network_timeout_s=max(settings.dimse_timeout_s, settings.commitment_timeout_s),
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)],
    ) as assoc:
        if assoc.is_rejected:
            _rejected(assoc, dest, settings.calling_ae_title, report)
        if not assoc.is_established:
            raise PeerUnreachable(
                f"{_where(dest)} accepted the connection but no association (it answered "
                f"nothing within {settings.connect_timeout_s:g} s, or accepted none of the "
                "SOP classes offered); it is tried again",
                report,
            )
        _store_all(assoc, dest, items, report)
        if wanted:
            _commit(assoc, dest, items, commit_also, report, reports, settings)
        else:
            report.commitment = "off"
    log.info(
        "C-STORE to %s: %d sent, %d acknowledged, commitment %s (%d committed)",
        dest.ae_title,
        len(report.statuses),
        sum(1 for s in report.statuses.values() if acknowledged(s)),
        report.commitment,
        len(report.committed),
    )
    return report


def _contexts(assoc: Association) -> dict[tuple[str, str], int]:
    """(SOP Class UID, Transfer Syntax UID) → the accepted presentation context's ID."""
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id or 0)
        for cx in assoc.accepted_contexts
        if cx.transfer_syntax
    }


def _store_all(
    assoc: Association, dest: Destination, items: Sequence[Sendable], report: StoreReport
) -> None:
    contexts = _contexts(assoc)  # chosen once for the association, not per instance
    with FastStore(assoc) as sender:
        for item in items:
            uid = item.sop_instance_uid
            context_id = contexts.get((item.sop_class_uid, item.transfer_syntax_uid))
            if context_id is None:
                report.statuses[uid] = None
                report.unsendable.add(uid)
                continue
            try:
                # The size the index recorded, where the item carries it
                # (delivery's PackageItem.size_bytes): a file changed since is not sent.
                size = getattr(item, "size_bytes", None)
                status = sender.store(item.path, item.sop_class_uid, uid, context_id, size)
            except OSError as exc:
                # Not sent, not acknowledged: the caller fails the request (staff
                # resend it once the store is fixed; the rest is not sent twice).
                report.statuses[uid] = None
                report.unreadable.add(uid)
                log.error(
                    "instance %s not sent to %s: its stored file cannot be read (%s)",
                    uid,
                    dest.ae_title,
                    type(exc).__name__,  # the message may name the file: not logged
                )
                if not assoc.is_established:
                    raise StoreScuError(
                        f"a stored file could not be read part-way through its C-STORE to "
                        f"{_where(dest)}, so the association was aborted; check the "
                        "content store (the log names the instance); what the peer "
                        "acknowledged is kept; send the request again once the file is "
                        "restored",
                        report,
                        permanent=True,
                    ) from exc
                continue
            report.statuses[uid] = status
            if status is None:
                raise PeerAborted(
                    f"{_where(dest)} aborted the association or did not answer a C-STORE "
                    "within the DIMSE timeout; what it acknowledged is kept, the rest is "
                    "sent again",
                    report,
                )


def _commit(
    assoc: Association,
    dest: Destination,
    items: Sequence[Sendable],
    commit_also: Sequence[Sendable],
    report: StoreReport,
    reports: CommitmentReports,
    settings: ScuSettings,
) -> None:
    if not any(
        str(cx.abstract_syntax) == StorageCommitmentPushModel for cx in assoc.accepted_contexts
    ):
        report.commitment = "not-offered"
        return
    named = [i for i in items if acknowledged(report.statuses.get(i.sop_instance_uid))]
    named += list(commit_also)
    if not named:
        report.commitment = "none-to-ask"
        return
    transaction = str(generate_uid())
    request = Dataset()
    request.TransactionUID = transaction
    request.ReferencedSOPSequence = []
    for item in named:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.sop_class_uid
        ref.ReferencedSOPInstanceUID = item.sop_instance_uid
        request.ReferencedSOPSequence.append(ref)
    gone = PeerAborted(
        f"{_where(dest)} aborted the association or did not answer the storage "
        "commitment request; it is asked again",
        report,
    )
    if not assoc.is_established:
        raise gone  # e.g. an A-ABORT right after the last C-STORE-RSP: nothing was asked
    wait = reports.expect(transaction)
    report.transaction_uid = transaction
    hold_reactor(assoc)  # so that the reactor cannot take the N-ACTION's response
    try:
        status, _reply = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    except RuntimeError as exc:
        # pynetdicom: "The association with a peer SCP must be established...": the
        # peer aborted after the check above; nothing was sent.
        resume_reactor(assoc)  # held above: its thread must see the end
        reports.forget(transaction)
        report.transaction_uid = ""
        raise gone from exc
    if not status or "Status" not in status:
        reports.forget(transaction)
        raise gone
    code = int(status.Status)
    report.commitment_status = code
    if code != SUCCESS:
        reports.forget(transaction)
        report.commitment = "refused"
        return
    result = wait.wait(settings.commitment_timeout_s)
    if result is None:
        report.commitment = "no-report"
        return
    report.commitment = "reported"
    report.committed = result.committed
    report.commit_failed = dict(result.failed)


def attempt(
    dest: Destination,
    items: Sequence[Sendable],
    *,
    settings: ScuSettings | None = None,
    commit_also: Sequence[Sendable] = (),
    reports: CommitmentReports | None = None,
    ae_factory: AeFactory = _default_ae,
) -> StoreReport:
    """:func:`send_instances`, with a failure of the association returned in the
    report (``error``, ``permanent``) next to what was acknowledged before it."""
    try:
        return send_instances(
            dest,
            items,
            settings=settings,
            commit_also=commit_also,
            reports=reports,
            ae_factory=ae_factory,
        )
    except StoreScuError as exc:
        exc.report.error = str(exc)
        exc.report.permanent = exc.permanent
        log.warning("C-STORE to %s failed (%s)", dest.ae_title, type(exc).__name__)
        return exc.report
