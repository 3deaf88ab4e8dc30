"""Storage commitment reports that come back on a new association to Courier's main SCP.

The peers Courier sends to may answer its N-ACTION on an association of their own, to
the address they know for Courier's AE title: the main SCP, whose receiving processes
are not the sender's. The report goes through the database (``commitment_reports``):

- a real ``courier serve`` with two receiving processes sends a study to Orthanc with
  ``--commitment required``; Orthanc's report comes back to the node's main port and
  the request is ``delivered`` with every instance committed;
- a pynetdicom peer reporting on a new association (to an in-process main SCP built
  as the node builds it): one instance failed → only that one is sent again; a report
  held back until the sender stopped waiting → applied when the next attempt starts,
  which then sends and asks nothing; a report for a Transaction UID nobody asked for →
  recorded and answered, nothing else changes.

SQLite and PostgreSQL; the clock is injected (the next attempt is a clock step), every
wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from sqlalchemy import select

from scp.commitment import CommitmentReports, ReportBook
from scp.commitment_scp import StorageCommitmentScp
from scp.ingest import Ingest
from scp.server import start_server
from scp.settings import AllowedPeer, ScpSettings
from scp.storescu import ScuSettings
from store.catalog import Catalog
from store.models import CommitmentReport, DicomSend, ReleaseRequest, RequestState
from tests import synthetic
from tests.conftest import Database
from tests.delivery.test_dicomsend import N, Rig
from tests.orthanc import Orthanc, have_orthanc
from tests.peers import free_port, require_peer
from tests.pynetdicom_peers import PynetdicomScp
from tests.release.helpers import courier, wait_state
from tests.scu import close_socket, send

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_INSTANCE = 0x0112  # Failure Reason: no such object instance (PS3.3 C.14.1.1)
PEER_AE = "HOSP4"
WAIT_S = 30.0


# -- a pynetdicom peer: stores, accepts N-ACTION, reports on a new association ------------


@dataclass
class Asked:
    """One N-ACTION the peer received."""

    transaction_uid: str
    refs: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID)


class ReportingPeer:
    """A Storage SCP and Storage Commitment SCP on loopback that sends every report on
    a new association to ``courier_port`` (taking the SCP role by role selection).

    ``fail_commit`` lists SOP Instance UIDs it reports failed once (0x0112). With
    ``hold``, reports wait in ``held`` until :meth:`send_held`.
    """

    def __init__(self, port: int, courier_port: int) -> None:
        self.port = port
        self.courier_port = courier_port
        self.fail_commit: set[str] = set()
        self.hold = False
        self.held: list[Asked] = []
        self.asked: list[Asked] = []
        self.per_association: list[list[str]] = []
        self.report_statuses: list[int | None] = []
        self._threads: list[threading.Thread] = []
        # Beside Courier's SCP in this process: it answers C-STOREs without keeping them.
        self._scp = PynetdicomScp(
            PEER_AE,
            port,
            storage=True,
            keep_datasets=False,
            contexts=[STORAGE_COMMITMENT],
            handlers=[(evt.EVT_N_ACTION, self._n_action)],
        )
        self.per_association = self._scp.per_association

    def _n_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        asked = Asked(
            str(info.TransactionUID),
            [
                (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in info.ReferencedSOPSequence
            ],
        )
        self.asked.append(asked)
        if self.hold:
            self.held.append(asked)
        else:
            thread = threading.Thread(target=self.report, args=(asked,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return 0x0000, None  # Success: the report follows

    def report(self, asked: Asked) -> int | None:
        """Send the verdict on ``asked`` on a new association; returns Courier's status."""
        failed = [r for r in asked.refs if r[1] in self.fail_commit]
        self.fail_commit -= {r[1] for r in failed}
        committed = [r for r in asked.refs if r not in failed]
        info = Dataset()
        info.TransactionUID = asked.transaction_uid
        info.ReferencedSOPSequence = [_ref(*r) for r in committed]
        if failed:
            items = [_ref(*r) for r in failed]
            for item in items:
                item.FailureReason = NO_SUCH_INSTANCE
            info.FailedSOPSequence = items
        status = send_report(self.courier_port, info, 2 if failed else 1)
        self.report_statuses.append(status)
        return status

    def send_held(self) -> list[int | None]:
        held, self.held = self.held, []
        return [self.report(a) for a in held]

    def __enter__(self) -> Self:
        self._scp.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for thread in self._threads:
            thread.join(WAIT_S)
        self._scp.__exit__(exc_type, exc, tb)


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def send_report(port: int, info: Dataset, event_type: int, calling: str = PEER_AE) -> int | None:
    """An N-EVENT-REPORT to Courier's SCP on a new association, as the SCP of the SOP
    class (role selection); Courier's status, or None without an association."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT_S
    ae.add_requested_context(STORAGE_COMMITMENT)
    role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", port, ae_title="COURIER", ext_neg=[role])
    try:
        if not assoc.is_established:
            return None
        status, _reply = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
        )
        assoc.release()
        return int(status.Status) if "Status" in status else None
    finally:
        close_socket(assoc)


# -- Courier's side: the main SCP as the node builds it, the sender polling the book ------


@dataclass
class World:
    rig: Rig
    scp_port: int
    peer: ReportingPeer


@pytest.fixture
def world(db: Database, tmp_path: Path) -> Iterator[World]:
    rig = Rig(db, tmp_path)
    # The node's wiring: the sender reads what the main SCP records.
    rig.reports = CommitmentReports(ReportBook(db.sessions), poll_s=0.1)
    settings = ScpSettings(
        ae_title="COURIER",
        allowed_calling_aes=[AllowedPeer(ae_title=PEER_AE)],
    )
    content = rig.world.content
    # As node.app builds it: the commitment SCP, whose sessions the report book shares.
    server = start_server(
        settings,
        Ingest(content, Catalog(db.sessions)),
        port=0,
        commitment=StorageCommitmentScp(settings, db.sessions, content),
    )
    scp_port = int(server.server_address[1])
    try:
        with ReportingPeer(free_port(), scp_port) as peer:
            yield World(rig, scp_port, peer)
    finally:
        server.shutdown()
        server.server_close()


def _reports(db: Database) -> list[CommitmentReport]:
    with db.sessions() as s:
        return list(s.scalars(select(CommitmentReport).order_by(CommitmentReport.id)))


def _latest(rig: Rig, ref: str) -> dict[str, DicomSend]:
    """Each instance's latest row."""
    return {r.sop_instance_uid: r for r in rig.sends(ref)}


def test_one_failed_instance_on_a_new_association_is_sent_again(world: World, db: Database) -> None:
    rig, peer = world.rig, world.peer
    ref = rig.request(ae_title=PEER_AE, host="127.0.0.1", port=peer.port, commitment="required")
    unlucky = sorted(rig.stored())[0]
    peer.fail_commit.add(unlucky)
    assert rig.batch.deliver(ref) == "retrying"
    assert peer.report_statuses == [0x0000]
    rows = _latest(rig, ref)
    assert rows[unlucky].commitment == "failed"
    assert sorted(r.commitment for u, r in rows.items() if u != unlucky) == ["committed"] * (N - 1)
    assert {r.transaction_uid for r in rows.values()} == {peer.asked[0].transaction_uid}
    assert f"committed {N - 1}, commitment failed 1" in rig.reasons(ref)[-1]
    rig.later()
    assert rig.batch.deliver(ref) == "delivered"
    assert peer.per_association[1] == [unlucky]  # only that one sent again
    assert [u for _c, u in peer.asked[1].refs] == [unlucky]
    assert peer.report_statuses == [0x0000, 0x0000]
    assert {r.commitment for r in _latest(rig, ref).values()} == {"committed"}
    assert [r.applied_at is not None for r in _reports(db)] == [True, True]
    assert rig.book.get(ref).state == RequestState.DELIVERED


def test_a_report_after_the_sender_gave_up_counts_at_the_next_attempt(
    world: World, db: Database
) -> None:
    rig, peer = world.rig, world.peer
    rig.settings = ScuSettings("COURIER", 5.0, 30.0, 0.3)  # stop waiting at once
    ref = rig.request(ae_title=PEER_AE, host="127.0.0.1", port=peer.port, commitment="required")
    peer.hold = True
    assert rig.batch.deliver(ref) == "retrying"
    assert "storage commitment not confirmed (no-report)" in rig.reasons(ref)[-1]
    assert {r.commitment for r in rig.sends(ref)} == {"no-report"}
    assert peer.send_held() == [0x0000]  # now it comes, to the main SCP
    [late] = _reports(db)
    assert late.transaction_uid == peer.asked[0].transaction_uid and late.applied_at is None
    rig.later()
    assert rig.batch.deliver(ref) == "delivered"
    assert rig.sent[1] == [] and len(peer.asked) == 1  # nothing sent, nothing asked again
    assert {r.commitment for r in rig.sends(ref)} == {"committed"}
    assert [r.applied_at is not None for r in _reports(db)] == [True]
    reasons = rig.reasons(ref)
    assert any(
        f"report {late.transaction_uid} came after the wait: committed {N}" in r for r in reasons
    )
    assert f"delivered: {N} instance(s) acknowledged ({N} committed)" in reasons[-1]


def test_a_report_nobody_asked_for_is_recorded_and_answered(world: World, db: Database) -> None:
    rig, peer = world.rig, world.peer
    ref = rig.request(ae_title=PEER_AE, host="127.0.0.1", port=peer.port)
    before = rig.reasons(ref)
    stranger = str(generate_uid())
    info = Dataset()
    info.TransactionUID = stranger
    info.ReferencedSOPSequence = [_ref("1.2.840.10008.5.1.4.1.1.7", sorted(rig.stored())[0])]
    assert send_report(world.scp_port, info, 1) == 0x0000  # Success: received
    [row] = _reports(db)
    assert (row.transaction_uid, row.calling_ae, row.applied_at) == (stranger, PEER_AE, None)
    assert rig.sends(ref) == [] and rig.reasons(ref) == before
    assert rig.book.get(ref).state == RequestState.READY
    # An AE outside scp.allowed_calling_aes gets no association, and no row.
    assert send_report(world.scp_port, info, 1, calling="STRANGER") is None
    bad = Dataset()
    bad.TransactionUID = str(generate_uid())
    assert send_report(world.scp_port, bad, 3) == 0x0113  # Failure: no such event type
    assert len(_reports(db)) == 1
    # The request's own delivery is untouched by it.
    assert rig.batch.deliver(ref) == "delivered"
    first = _reports(db)[0]
    assert (first.transaction_uid, first.applied_at) == (stranger, None)


# -- a running node and Orthanc ------------------------------------------------------------

RULES = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
"""


def test_orthanc_reports_to_the_running_node(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    """`courier serve` with two receiving processes sends to Orthanc with commitment
    required; Orthanc reports on a new association to the node's main port."""
    require_peer("orthanc", have_orthanc())
    (tmp_path / "rules.yaml").write_text(RULES)
    node = node_factory(
        db,
        extra_scp="workers: 2\nstable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            "delivery:\n  urgent_check_s: 0.5\n  window: '01:00-01:01'\n"
            "  timezone: Pacific/Kiritimati\n"
        ),
    )
    with Orthanc({"courier": ("COURIER", "127.0.0.1", node.port)}, aet="HOSP3") as orthanc:
        req = courier(
            node, "request", "create",
            "--patient-id", "SYN0001", "--patient-name", "Synthetic^Patient",
            "--birth-date", "19700131", "--accession", "ACC0010", "--urgency", "now",
            "--to-dicom", f"HOSP3@127.0.0.1:{orthanc.dicom_port}", "--commitment", "required",
        )  # fmt: skip
        ref = str(req["reference"])
        files = synthetic.make_ct_series(
            tmp_path / "ct", n_slices=3, rows=16, cols=16, accession="ACC0010"
        )
        assert send(node.port, files) == [0x0000] * 3
        assert wait_state(node, ref, "delivered", "failed") == "delivered"
        assert len(orthanc.instances()) == 3
    with db.sessions() as s:
        rid = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
        rows = list(s.scalars(select(DicomSend).where(DicomSend.request_id == rid)))
    assert [(r.attempt, r.status, r.commitment) for r in rows] == [(1, 0, "committed")] * 3
    [report] = _reports(db)
    assert report.calling_ae == "HOSP3" and report.applied_at is not None
    assert {r.transaction_uid for r in rows} == {report.transaction_uid}
    timeline = [e["reason"] for e in courier(node, "request", "show", ref)["timeline"]]
    assert any("acknowledged 3, failed 0, committed 3" in r for r in timeline), timeline
    log = node.log.read_text()
    assert "Synthetic" not in log and "SYN0001" not in log
