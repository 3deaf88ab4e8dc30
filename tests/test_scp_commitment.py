"""Storage commitment on the SCP: a pynetdicom SCU stores instances, asks commitment for
them plus one never sent, and gets the N-EVENT-REPORT on the same association (it took
the SCP role) or on a new association to its own SCP (listed with its port)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import select, update

from scp import spool
from scp.commitment_reports import STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
from scp.commitment_scp import (
    REASON_CLASS_CONFLICT,
    REASON_NO_SUCH_INSTANCE,
    REASON_PROCESSING,
    StorageCommitmentScp,
)
from scp.ingest import Ingest
from scp.server import start_server
from scp.settings import ScpSettings
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Instance, Series, Study, StudyEvent
from tests import synthetic
from tests.conftest import Database, free_port
from tests.pynetdicom_peers import PynetdicomScp, park_reactor
from tests.scu import close_socket, send

SCU_AE = "CMTSCU"
WAIT_S = 30.0


@dataclass
class CommitScp:
    port: int
    content: ContentStore
    db: Database
    server: Any


@contextmanager
def running_commit_scp(db: Database, root: Path, **overrides: Any) -> Iterator[CommitScp]:
    """Courier's SCP with storage commitment, in this process, on a free loopback port;
    ``overrides`` are :class:`ScpSettings` fields. Shut down on exit."""
    settings = ScpSettings(
        **{"commitment_retry_s": 0.1, "commitment_report_attempts": 3, **overrides}
    )
    content = ContentStore(root)
    content.prepare()
    spool.install(content.spool)
    ingest = Ingest(content, Catalog(db.sessions))
    commitment = StorageCommitmentScp(settings, db.sessions, content)
    server = start_server(settings, ingest, port=0, commitment=commitment)
    try:
        yield CommitScp(int(server.server_address[1]), content, db, server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def commit_scp(db: Database, tmp_path: Path) -> Iterator[CommitScp]:
    with running_commit_scp(db, tmp_path / "data") as scp:
        yield scp


@dataclass
class Reports:
    """N-EVENT-REPORTs received by the test SCU (or its listener).

    ``arrived`` is set inside the handler, before pynetdicom sends its response;
    ``answered`` once a P-DATA-TF went out after a report arrived: the response, the only
    data the SCU sends after its N-ACTION (whose PDU the SCU's own DUL thread sent before
    it could read the report). The SCU releases only after ``answered`` (see
    :func:`ask_commitment`).
    """

    got: list[tuple[int, Dataset]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def handle(self, event: evt.Event) -> tuple[int, None]:
        self.got.append((int(event.request.EventTypeID), event.event_information))
        self.arrived.set()
        return 0x0000, None

    def sent(self, event: evt.Event) -> None:
        """``EVT_PDU_SENT`` handler (the DUL thread, once the PDU is on the socket)."""
        if self.got and isinstance(event.pdu, P_DATA_TF):
            self.answered.set()

    def one(self) -> tuple[int, dict[str, int | None]]:
        """The single report: event type, and each instance's Failure Reason (None: ok)."""
        assert self.arrived.wait(WAIT_S), "no N-EVENT-REPORT arrived"
        assert len(self.got) == 1
        event_type, info = self.got[0]
        outcome: dict[str, int | None] = {
            str(i.ReferencedSOPInstanceUID): None for i in info.get("ReferencedSOPSequence", [])
        }
        for item in info.get("FailedSOPSequence", []):
            outcome[str(item.ReferencedSOPInstanceUID)] = int(item.FailureReason)
        return event_type, outcome


def _refs(files: list[Path]) -> list[tuple[str, str]]:
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def ask_commitment(
    port: int,
    refs: Sequence[tuple[str, str]],
    reports: Reports,
    *,
    take_scp_role: bool,
    action_type: int = 1,
    transaction_uid: str | None = None,
) -> int:
    """N-ACTION from a pynetdicom SCU; with ``take_scp_role`` it also proposes the SCP role
    and waits (bounded) for the report on this association. Returns the N-ACTION status."""
    ae = AE(ae_title=SCU_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT_S
    ae.add_requested_context(STORAGE_COMMITMENT)
    ext_neg = (
        [build_role(STORAGE_COMMITMENT, scu_role=True, scp_role=True)] if take_scp_role else []
    )
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="COURIER",
        ext_neg=ext_neg,  # type: ignore[arg-type]
        evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, reports.handle),
            (evt.EVT_PDU_SENT, reports.sent),
        ],
    )
    try:
        assert assoc.is_established
        info = Dataset()
        info.TransactionUID = transaction_uid or generate_uid()
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        park_reactor(assoc)  # Courier answers within a millisecond
        status, _reply = assoc.send_n_action(
            info, action_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
        )
        if take_scp_role and int(status.Status) == 0:
            # Not ``arrived``: the handler sets it before its N-EVENT-REPORT-RSP is queued,
            # and a release queued first puts the DUL in Sta7, where that P-DATA request
            # is an InvalidEventError ('Evt9' in 'Sta7') in pynetdicom's DUL thread and
            # Courier never gets its answer.
            reports.answered.wait(WAIT_S)
        assoc.release()
        return int(status.Status)
    finally:
        close_socket(assoc)


def _events(db: Database) -> list[str]:
    with db.sessions() as s:
        return [
            e.reason
            for e in s.scalars(select(StudyEvent).order_by(StudyEvent.id))
            if "storage commitment" in e.reason
        ]


def store_and_ask(port: int, files: list[Path], reports: Reports, *, take_scp_role: bool) -> str:
    """C-STORE ``files`` to the SCP on ``port``, then ask commitment for them plus one
    instance never sent (whose SOP Instance UID is returned); both must succeed."""
    assert send(port, files, calling=SCU_AE) == [0x0000] * len(files)
    never_sent = (_refs(files)[0][0], generate_uid())
    refs = [*_refs(files), never_sent]
    assert ask_commitment(port, refs, reports, take_scp_role=take_scp_role) == 0x0000
    return never_sent[1]


def _events_once(db: Database, done: Callable[[list[str]], bool]) -> list[str]:
    """The commitment events once ``done`` holds for them, or after :data:`WAIT_S`. The SCP
    records them on its association thread after its response, with no signal to wait on,
    so this polls."""
    deadline = time.monotonic() + WAIT_S
    events = _events(db)
    while not done(events) and time.monotonic() < deadline:
        time.sleep(0.05)
        events = _events(db)
    return events


def test_same_association_reports_committed_and_unknown(
    commit_scp: CommitScp, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "s", n=4)
    reports = Reports()
    never_sent = store_and_ask(commit_scp.port, files, reports, take_scp_role=True)
    event_type, outcome = reports.one()
    assert event_type == 2  # failures exist
    assert outcome == {
        **{uid: None for _c, uid in _refs(files)},
        never_sent: REASON_NO_SUCH_INSTANCE,
    }
    events = _events(commit_scp.db)
    assert len(events) == 1 and "4 committed, 1 not" in events[0] and SCU_AE in events[0]


def test_all_committed_is_event_type_1(commit_scp: CommitScp, tmp_path: Path) -> None:
    files = synthetic.make_small_instances(tmp_path / "a", n=3)
    assert send(commit_scp.port, files, calling=SCU_AE) == [0x0000] * 3
    reports = Reports()
    assert ask_commitment(commit_scp.port, _refs(files), reports, take_scp_role=True) == 0
    event_type, outcome = reports.one()
    assert event_type == 1 and set(outcome.values()) == {None} and len(outcome) == 3


def test_missing_changed_and_misclassed_files_are_not_committed(
    commit_scp: CommitScp, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "m", n=4)
    assert send(commit_scp.port, files, calling=SCU_AE) == [0x0000] * 4
    refs = _refs(files)
    with commit_scp.db.sessions() as s:
        rows = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
    # 0: deleted and flagged missing (what start-up recovery does); 1: bytes changed on
    # disk (same size, other digest); 2: asked under another SOP class.
    commit_scp.content.path(rows[refs[0][1]]).unlink()
    with commit_scp.db.sessions() as s, s.begin():
        s.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == refs[0][1])
            .values(file_missing=True)
        )
    changed = commit_scp.content.path(rows[refs[1][1]])
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    asked = [refs[0], refs[1], ("1.2.840.10008.5.1.4.1.1.4", refs[2][1]), refs[3]]
    reports = Reports()
    assert ask_commitment(commit_scp.port, asked, reports, take_scp_role=True) == 0
    event_type, outcome = reports.one()
    assert event_type == 2
    assert outcome == {
        refs[0][1]: REASON_PROCESSING,
        refs[1][1]: REASON_PROCESSING,
        refs[2][1]: REASON_CLASS_CONFLICT,
        refs[3][1]: None,
    }


def test_new_association_to_the_listed_port(db: Database, tmp_path: Path) -> None:
    files = synthetic.make_small_instances(tmp_path / "n", n=3)
    reports = Reports()
    listener = PynetdicomScp(
        SCU_AE,
        contexts=[(STORAGE_COMMITMENT, True, True)],
        handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)],
    )
    listed = [{"ae_title": SCU_AE, "host": "127.0.0.1", "port": listener.port}]
    with running_commit_scp(db, tmp_path / "data", allowed_calling_aes=listed) as scp, listener:
        # No SCP role on the requesting association: the report must come separately.
        never_sent = store_and_ask(scp.port, files, reports, take_scp_role=False)
        event_type, outcome = reports.one()
    assert event_type == 2
    assert sum(v is None for v in outcome.values()) == 3
    assert outcome[never_sent] == REASON_NO_SUCH_INSTANCE


def test_no_port_listed_records_an_undelivered_report(
    commit_scp: CommitScp, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "u", n=2)
    assert send(commit_scp.port, files, calling=SCU_AE) == [0x0000] * 2
    reports = Reports()
    assert ask_commitment(commit_scp.port, _refs(files), reports, take_scp_role=False) == 0
    events = _events_once(commit_scp.db, lambda events: len(events) == 2)
    assert "2 committed, 0 not" in events[0]
    assert "not delivered" in events[1] and "allowed_calling_aes" in events[1]
    assert reports.got == []


def test_unreachable_peer_is_retried_then_recorded(db: Database, tmp_path: Path) -> None:
    closed_port = free_port()  # nobody listens there
    listed = [{"ae_title": SCU_AE, "port": closed_port}]
    with running_commit_scp(
        db, tmp_path / "data", allowed_calling_aes=listed, acse_timeout_s=2
    ) as scp:
        files = synthetic.make_small_instances(tmp_path / "r", n=1)
        assert send(scp.port, files, calling=SCU_AE) == [0x0000]
        reports = Reports()
        assert ask_commitment(scp.port, _refs(files), reports, take_scp_role=False) == 0
        # 3 attempts, 0.1 s then 0.2 s apart, each refused at once
        events = _events_once(db, lambda events: any("not delivered" in e for e in events))
        assert any("not delivered" in e and SCU_AE in e for e in events)


@pytest.mark.parametrize(
    ("action_type", "transaction_uid", "status"),
    [(2, None, 0x0123), (1, "not a uid!", 0x0115)],
)
def test_bad_requests_are_refused(
    commit_scp: CommitScp, action_type: int, transaction_uid: str | None, status: int
) -> None:
    reports = Reports()
    refs = [("1.2.840.10008.5.1.4.1.1.7", generate_uid())]
    got = ask_commitment(
        commit_scp.port,
        refs,
        reports,
        take_scp_role=True,
        action_type=action_type,
        transaction_uid=transaction_uid,
    )
    assert got == status and reports.got == []


def test_courier_serve_answers_commitment(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    files = synthetic.make_small_instances(tmp_path / "node", n=3)
    reports = Reports()
    never_sent = store_and_ask(node.port, files, reports, take_scp_role=True)
    event_type, outcome = reports.one()
    assert event_type == 2 and outcome[never_sent] == REASON_NO_SUCH_INSTANCE
    assert sum(v is None for v in outcome.values()) == 3


@pytest.mark.parametrize("flagged", [True, False], ids=["flagged-missing", "not-yet-flagged"])
def test_a_file_restored_by_another_sender_is_committed(
    commit_scp: CommitScp, tmp_path: Path, flagged: bool
) -> None:
    """The digest leaves the sender out, so a re-send from an AE with a longer title is
    the same content in a longer file: the restored row takes the file's size."""
    files = synthetic.make_small_instances(tmp_path / "r", n=2)
    assert send(commit_scp.port, files, calling="A") == [0x0000] * 2
    refs = _refs(files)
    gone = refs[0][1]
    with commit_scp.db.sessions() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == gone)).one()
        old_size, rel = row.size_bytes, row.path
    commit_scp.content.path(rel).unlink()
    if flagged:  # what start-up recovery does with a row whose file is gone
        with commit_scp.db.sessions() as s, s.begin():
            s.execute(
                update(Instance).where(Instance.sop_instance_uid == gone).values(file_missing=True)
            )
    assert send(commit_scp.port, files[:1], calling="MUCH_LONGER_AE") == [0x0000]
    new_size = commit_scp.content.path(rel).stat().st_size
    assert new_size > old_size  # the sender elements in the meta grew
    with commit_scp.db.sessions() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == gone)).one()
        # The row's sender is what rules matched at first receipt: kept.
        assert (row.size_bytes, row.file_missing, row.calling_ae) == (new_size, False, "A")
        # The totals follow (a study and each of its series: their instances' sizes).
        instances = s.scalars(select(Instance)).all()
        study = s.scalars(select(Study)).one()
        assert study.size_bytes == sum(x.size_bytes for x in instances)
        for series in s.scalars(select(Series)):
            held = [x.size_bytes for x in instances if x.series_id == series.id]
            assert series.size_bytes == sum(held)
    reports = Reports()
    assert ask_commitment(commit_scp.port, refs, reports, take_scp_role=True) == 0x0000
    event_type, outcome = reports.one()
    assert (event_type, outcome) == (1, {uid: None for _c, uid in refs})
