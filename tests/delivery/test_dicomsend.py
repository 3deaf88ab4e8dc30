"""Hospital-to-hospital delivery against real receivers on loopback: dcmtk's storescp
(no storage commitment), Orthanc (storage commitment, its report on a new association
to Courier), and a pynetdicom SCP that answers what a test needs (a failure status for
one instance, a refused association, nobody listening at first).

Every received dataset is compared byte for byte with the stored one (the File Meta
Information is the receiver's own). SQLite and PostgreSQL; the clock is injected, so
"the next attempt is due" is a clock step, never a sleep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)
from sqlalchemy import select

from delivery.batch import DeliveryBatch
from delivery.dicomsend import DicomDelivery, Target
from delivery.grants import GrantKeys
from delivery.outbox import Outbox
from delivery.packaging.package import PackageItem
from delivery.relay import RetryPolicy
from release.requests import RequestBook
from scp.commitment import CommitmentReports
from scp.storescu import ScuSettings, StoreReport, attempt
from store.models import (
    DicomSend,
    Instance,
    Notification,
    ReleaseRequest,
    RequestState,
)
from tests.conftest import Database
from tests.dcmtk import DcmtkStorescp, have_dcmtk
from tests.orthanc import Orthanc, have_orthanc
from tests.peers import free_port, require_peer
from tests.pynetdicom_peers import PynetdicomScp
from tests.release.helpers import draft_data
from tests.release.test_purge import World

ACCESSION = "H2H0001"
N = 3
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (the SCP's answer for one instance)


def dicom_draft(**destination: Any) -> dict[str, Any]:
    data = draft_data(selection=[{"kind": "accession", "value": ACCESSION}])
    del data["recipient_email"], data["second_channel"]
    data["destination"] = destination
    return data


class Rig:
    """A World (store, rules, clock) plus the batch with a DICOM sender."""

    def __init__(self, db: Database, root: Path, *, max_attempts: int = 4) -> None:
        self.world = World(db, root)
        self.root = root
        self.reports = CommitmentReports()
        self.outbox = Outbox(clock=self.world.clock, staff_email="staff@hospital.example")
        self.settings = ScuSettings("COURIER", 5.0, 30.0, 15.0)
        self.sent: list[list[str]] = []  # SOP Instance UIDs offered per attempt
        self.dicom = DicomDelivery(
            db.sessions,
            self.world.content,
            self.world.book,
            self.outbox,
            self._send,
            policy=RetryPolicy(base_s=60, cap_s=600, max_attempts=max_attempts),
            clock=self.world.clock,
        )
        self.batch = DeliveryBatch(
            db.sessions,
            self.world.content,
            self.world.book,
            self.outbox,
            GrantKeys(b"k" * 32),
            root / "packages",
            clock=self.world.clock,
            dicom=self.dicom,
        )

    def _send(
        self, target: Target, items: Sequence[PackageItem], commit_also: Sequence[PackageItem]
    ) -> StoreReport:
        self.sent.append([i.sop_instance_uid for i in items])
        return attempt(
            target, items, settings=self.settings, commit_also=commit_also, reports=self.reports
        )

    def delivery(self, sender: Any, *, max_attempts: int = 4) -> DicomDelivery:
        """A DicomDelivery on this rig's store with ``sender`` in place of the real one."""
        return DicomDelivery(
            self.world.sessions,
            self.world.content,
            self.world.book,
            self.outbox,
            sender,
            policy=RetryPolicy(base_s=60, cap_s=600, max_attempts=max_attempts),
            clock=self.world.clock,
        )

    def batch_with(self, dicom: DicomDelivery | None) -> DeliveryBatch:
        """A delivery batch on this rig's store with ``dicom`` (None: no DICOM sender)."""
        return DeliveryBatch(
            self.world.sessions,
            self.world.content,
            self.world.book,
            self.outbox,
            GrantKeys(b"k" * 32),
            self.root / "packages",
            clock=self.world.clock,
            dicom=dicom,
        )

    def two_requests(self) -> tuple[str, str, int]:
        """Two ready requests of the same study to one destination port (not listening
        yet); their references and the port."""
        from release.validation import RequestDraft

        port = free_port()
        dest = {"ae_title": "HOSP2", "host": "127.0.0.1", "port": port, "commitment": "off"}
        first, second = (
            self.book.create(RequestDraft.model_validate(dicom_draft(**dest)), "test").reference
            for _ in range(2)
        )
        self.world.receive("h2h", N, accession=ACCESSION)  # the same study for both
        self.world.settle()
        assert {self.book.get(r).state for r in (first, second)} == {RequestState.READY}
        return first, second, port

    def request(self, **destination: Any) -> str:
        """A ready request to ``destination`` with N stored instances; its reference."""
        from release.validation import RequestDraft

        draft = RequestDraft.model_validate(dicom_draft(**destination))
        ref = self.world.book.create(draft, "test").reference
        self.world.receive("h2h", N, accession=ACCESSION)
        self.world.settle()
        assert self.book.get(ref).state == RequestState.READY
        return ref

    @property
    def book(self) -> RequestBook:
        return self.world.book

    def later(self, minutes: int = 30) -> None:
        self.world.clock.now += timedelta(minutes=minutes)

    def sends(self, ref: str) -> list[DicomSend]:
        with self.world.sessions() as s:
            rid = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
            return list(
                s.scalars(
                    select(DicomSend).where(DicomSend.request_id == rid).order_by(DicomSend.id)
                )
            )

    def reasons(self, ref: str) -> list[str]:
        return [e.reason for e in self.book.timeline(ref)]

    def alerts(self) -> list[Notification]:
        with self.world.sessions() as s:
            return list(s.scalars(select(Notification).where(Notification.kind == "alert_failed")))

    def stored(self) -> dict[str, bytes]:
        """SOP Instance UID → the dataset bytes (after the File Meta) of each stored file."""
        with self.world.sessions() as s:
            rows = s.execute(select(Instance.sop_instance_uid, Instance.path)).all()
        return {uid: dataset_bytes(self.world.content.path(p)) for uid, p in rows}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a DICOM file, without preamble and File Meta Information."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture
def rig(db: Database, tmp_path: Path) -> Rig:
    return Rig(db, tmp_path)


def recording_scp(
    port: int, ae_title: str = "HOSP2", *, require_called_ae: bool = False
) -> PynetdicomScp:
    """A Storage SCP on loopback that keeps what it receives, per association
    (``fail_once`` answers 0xA700 the first time that SOP Instance UID arrives)."""
    return PynetdicomScp(ae_title, port, storage=True, require_called_ae=require_called_ae)


def commitment_listener(reports: CommitmentReports, port: int) -> PynetdicomScp:
    """Courier's AE on ``port`` taking storage commitment reports (and C-ECHO) for
    ``reports``: the reporting peer is the SCP of the SOP class and may say so by role
    selection, which it accepts."""
    return PynetdicomScp(
        "COURIER",
        port,
        contexts=[(StorageCommitmentPushModel, True, True), Verification],
        handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)],
    )


# -- dcmtk storescp: no storage commitment ------------------------------------------------


@pytest.fixture
def storescp() -> Iterator[DcmtkStorescp]:
    require_peer("dcmtk", have_dcmtk())
    with DcmtkStorescp("HOSP2") as peer:
        yield peer


def test_storescp_receives_every_instance_byte_identical(rig: Rig, storescp: DcmtkStorescp) -> None:
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=storescp.port)
    assert rig.batch.run(urgent_only=False).delivered == [ref]
    assert rig.book.get(ref).state == RequestState.DELIVERED
    received = {}
    for path in storescp.files():
        meta, _ = split_dataset(path)
        received[str(meta.MediaStorageSOPInstanceUID)] = dataset_bytes(path)
    assert received == rig.stored()
    assert [(r.attempt, r.status, r.commitment) for r in rig.sends(ref)] == [(1, 0, "")] * N
    last = rig.reasons(ref)[-1]
    assert f"sent {N}, acknowledged {N}, failed 0, committed 0" in last
    assert "does not offer storage commitment" in last
    assert not rig.alerts()


def test_storescp_with_commitment_required_is_retried_then_failed(
    db: Database, tmp_path: Path, storescp: DcmtkStorescp
) -> None:
    rig = Rig(db, tmp_path, max_attempts=2)
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=storescp.port, commitment="required")
    assert rig.batch.deliver(ref) == "retrying"
    req = rig.book.get(ref)
    assert req.state == RequestState.READY and req.destination is not None
    assert "does not offer it" in req.destination.last_error
    assert rig.batch.ready() == []  # not due yet
    rig.later()
    assert rig.batch.run(urgent_only=True).failed == [ref]  # retried on the urgent path
    assert rig.book.get(ref).state == RequestState.FAILED
    assert rig.sent[1] == []  # nothing sent again: only the commitment asked again
    assert "gave up after 2 attempts" in rig.reasons(ref)[-1]
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]
    assert len(storescp.files()) == N


# -- Orthanc: storage commitment, reported on a new association ----------------------------


def test_orthanc_commits_and_every_instance_is_byte_identical(rig: Rig, tmp_path: Path) -> None:
    require_peer("orthanc", have_orthanc())
    port = free_port()
    modalities = {"courier": ("COURIER", "127.0.0.1", port)}
    with (
        commitment_listener(rig.reports, port),
        Orthanc(modalities, aet="HOSP3") as orthanc,
    ):
        ref = rig.request(
            ae_title="HOSP3", host="127.0.0.1", port=orthanc.dicom_port, commitment="required"
        )
        assert rig.batch.deliver(ref) == "delivered"
        received = {}
        for oid in orthanc.instances():
            path = tmp_path / f"{oid}.dcm"
            path.write_bytes(_raw(orthanc, f"/instances/{oid}/file"))
            meta, _ = split_dataset(path)
            received[str(meta.MediaStorageSOPInstanceUID)] = dataset_bytes(path)
    assert received == rig.stored()
    assert [(r.status, r.commitment) for r in rig.sends(ref)] == [(0, "committed")] * N
    assert f"sent {N}, acknowledged {N}, failed 0, committed {N}" in rig.reasons(ref)[-1]


def _raw(orthanc: Orthanc, path: str) -> bytes:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(orthanc.url + path, timeout=30) as resp:
        data: bytes = resp.read()
        return data


# -- pynetdicom SCPs: down at first, a failure status, a refused association ---------------


def test_a_peer_down_then_up_is_retried(rig: Rig) -> None:
    port = free_port()
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=port, commitment="off")
    assert rig.batch.deliver(ref) == "retrying"
    assert rig.sends(ref) == []
    assert "cannot be reached" in rig.reasons(ref)[-1]
    rig.later()
    with recording_scp(port) as peer:
        assert rig.batch.run(urgent_only=True).delivered == [ref]
    assert rig.sent == [rig.sent[0], rig.sent[0]] and len(rig.sent[0]) == N
    assert peer.received == rig.stored()
    assert [r.attempt for r in rig.sends(ref)] == [2] * N


def test_a_failure_status_for_one_instance_resends_only_that_one(rig: Rig) -> None:
    port = free_port()
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=port)
    stored = rig.stored()
    unlucky = sorted(stored)[1]
    with recording_scp(port) as peer:
        peer.fail_once.add(unlucky)
        assert rig.batch.deliver(ref) == "retrying"
        assert f"sent {N}, acknowledged {N - 1}, failed 1" in rig.reasons(ref)[-1]
        rig.later()
        assert rig.batch.deliver(ref) == "delivered"
    assert sorted(peer.uids(0)) == sorted(stored) and peer.uids(1) == [unlucky]
    assert peer.received == stored
    rows = [(r.attempt, r.sop_instance_uid, r.status) for r in rig.sends(ref)]
    assert (1, unlucky, OUT_OF_RESOURCES) in rows and (2, unlucky, 0) in rows
    assert len(rows) == N + 1


def test_a_refused_association_fails_the_request_and_alerts_staff(rig: Rig) -> None:
    port = free_port()
    ref = rig.request(ae_title="WRONGAE", host="127.0.0.1", port=port)
    with recording_scp(port, "HOSP2", require_called_ae=True) as peer:
        assert rig.batch.deliver(ref) == "failed"
    assert peer.per_association == []
    req = rig.book.get(ref)
    assert req.state == RequestState.FAILED
    assert "refused the association for good" in rig.reasons(ref)[-1]
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]
    # No patient data on the timeline.
    timeline = " ".join(rig.reasons(ref))
    assert "MRN-000123" not in timeline and "Test^Patient" not in timeline


def test_without_a_sender_the_request_stays_ready(db: Database, tmp_path: Path) -> None:
    rig = Rig(db, tmp_path)
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=free_port())
    bare = rig.batch_with(None)
    assert bare.deliver(ref) == "skipped"
    assert rig.book.get(ref).state == RequestState.READY


@pytest.mark.parametrize(("kind", "ends"), [("staff", None), ("embargo", 60)])
def test_a_held_request_is_not_claimed(rig: Rig, kind: str, ends: int | None) -> None:
    """Held between the batch's gate and the send's claim: the claim looks again."""
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=free_port())
    with rig.world.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        until = None if ends is None else rig.world.clock() + timedelta(minutes=ends)
        req.hold_kind, req.hold_until = kind, until
    assert rig.dicom.deliver(ref) == "skipped"
    assert rig.book.get(ref).state == RequestState.READY and rig.sent == []
