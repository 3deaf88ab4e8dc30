"""A storage commitment report on the sending association: Courier answers it, then releases.

Some peers send their N-EVENT-REPORT on the association that carried the N-ACTION. The
sender's wait (``scp.commitment.CommitmentWait``) must end only once Courier's
N-EVENT-REPORT-RSP is on the socket: pynetdicom runs the report's handler with the
reactor marked paused, so a release started as soon as the handler has the report can
queue its A-RELEASE-RQ ahead of the response. The DUL is then in Sta7 when the response
comes, which pynetdicom refuses (InvalidEventError 'Evt9' in 'Sta7', in its DUL thread):
the peer never gets its answer and the release hangs until a timeout.

The peer is pynetdicom on loopback (a Storage SCP that reports on the same association,
once its N-ACTION-RSP went out). Courier's handler is held back until the sender queued
its release (bounded by ``HOLD_S``): with the old wait that makes the race certain, with
the new one the release cannot start, and the handler returns after ``HOLD_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.pdu_primitives import A_RELEASE

from scp.commitment import CommitmentReports
from scp.storescu import ScuSettings, send_instances
from tests import synthetic
from tests.pynetdicom_peers import PynetdicomScp, park_reactor
from tests.send_items import Dest, items_of

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
ALL_COMMITTED = 1  # Event Type ID: Storage Commitment Request Successful
WAIT_S = 30.0
HOLD_S = 0.5  # how long Courier's handler waits for a release to be queued


@dataclass
class SameAssociationPeer:
    """Stores, accepts the N-ACTION, and reports every instance committed on the same
    association once its N-ACTION-RSP was sent (a thread of its own: the handler cannot
    send while its response waits). ``statuses``: Courier's answers to the reports
    (None: no answer); ``released``: set when Courier released the association."""

    statuses: list[int | None] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    reported: threading.Event = field(default_factory=threading.Event)
    _rsp_sent: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def scp(self) -> PynetdicomScp:
        return PynetdicomScp(
            "HOSP5",
            storage=True,
            keep_datasets=False,
            contexts=[STORAGE_COMMITMENT],
            handlers=[
                (evt.EVT_N_ACTION, self._n_action),
                (evt.EVT_DIMSE_SENT, self._dimse_sent),
                (evt.EVT_RELEASED, self._released),
            ],
        )

    def _n_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        report = Dataset()
        report.TransactionUID = str(info.TransactionUID)
        report.ReferencedSOPSequence = list(info.ReferencedSOPSequence)
        thread = threading.Thread(target=self._report, args=(event.assoc, report), daemon=True)
        self._threads.append(thread)
        thread.start()
        return 0x0000, None  # Success: the report follows

    def _dimse_sent(self, event: evt.Event) -> None:
        if isinstance(event.message, N_ACTION_RSP):
            self._rsp_sent.set()

    def _released(self, _event: evt.Event) -> None:
        self.released.set()

    def _report(self, assoc: Any, report: Dataset) -> None:
        try:
            if not self._rsp_sent.wait(WAIT_S):
                return
            park_reactor(assoc)  # Courier's response must reach send_n_event_report
            status, _reply = assoc.send_n_event_report(
                report, ALL_COMMITTED, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
            )
            self.statuses.append(int(status.Status) if "Status" in status else None)
        finally:
            self.reported.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(WAIT_S)


class HeldBackReports(CommitmentReports):
    """Courier's reports, whose handler returns only once the sender queued its
    A-RELEASE-RQ on that association, or after ``HOLD_S``: the window between the
    handler and its response, widened."""

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        releasing = threading.Event()

        def acse_sent(sent: evt.Event) -> None:
            primitive = getattr(sent, "primitive", None)  # set by pynetdicom for ACSE events
            if isinstance(primitive, A_RELEASE) and primitive.result is None:
                releasing.set()

        event.assoc.bind(evt.EVT_ACSE_SENT, acse_sent)
        try:
            answer = super().handle(event)
            releasing.wait(HOLD_S)
        finally:
            event.assoc.unbind(evt.EVT_ACSE_SENT, acse_sent)
        return answer


@pytest.fixture
def peer() -> Iterator[tuple[SameAssociationPeer, int]]:
    reporting = SameAssociationPeer()
    with reporting.scp() as scp:
        yield reporting, scp.port
        reporting.join()


def test_a_report_on_the_same_association_is_answered_before_the_release(
    peer: tuple[SameAssociationPeer, int], tmp_path: Path
) -> None:
    reporting, port = peer
    items = items_of(synthetic.make_ct_series(tmp_path / "ct", n_slices=2, rows=16, cols=16))
    settings = ScuSettings("COURIER", 5.0, 10.0, 10.0)
    report = send_instances(
        Dest("HOSP5", "127.0.0.1", port, commitment="required"),
        items,
        settings=settings,
        reports=HeldBackReports(),
    )
    assert report.commitment == "reported"
    assert report.committed == {i.sop_instance_uid for i in items}
    assert reporting.reported.wait(WAIT_S)
    assert reporting.statuses == [0x0000]  # Success: Courier received the report
    assert reporting.released.wait(WAIT_S), "the association was not released"
