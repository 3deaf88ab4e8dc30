"""Send failures that must come back in the report, never out of the sender: a peer gone
by the storage commitment request, and stored files that cannot be read (review of the
C-STORE sender). Also: after a response handed over to pynetdicom, a peer that stops
reading is still an abort after the network timeout.

Real peers on loopback (pynetdicom SCPs in this process); where the order of two events
decides the path taken, the test waits (bounded) for the first before the second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
)

from scp import storescu, storesend
from scp.storescu import AeFactory, ScuSettings, StoreReport, attempt
from tests import synthetic
from tests.pynetdicom_peers import PynetdicomScp
from tests.send_items import Dest, Item, items_of

JPEG_2000 = "1.2.840.10008.1.2.4.90"  # a transfer syntax the test peer accepts no context for
SETTINGS = ScuSettings("COURIER", 5.0, 10.0, 2.0)


def _until_gone(assoc: Association, timeout: float = 10.0) -> None:
    """Wait (bounded) until the association is no longer established."""
    deadline = time.monotonic() + timeout
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not assoc.is_established, "the peer's A-ABORT never arrived"


class _AbortingPeer(PynetdicomScp):
    """Stores CT with storage commitment offered, and aborts the association right after
    its ``n``-th C-STORE-RSP is on the wire (None: only when told, :meth:`abort`);
    records every N-ACTION it gets."""

    def __init__(self, n: int | None) -> None:
        self.n_actions: list[str] = []
        self._n = n
        self._sent = 0
        self._assoc: Any = None
        super().__init__(
            "HOSP2",
            contexts=[CTImageStorage, StorageCommitmentPushModel],
            handlers=[
                (evt.EVT_C_STORE, lambda _e: 0x0000),  # Success
                (evt.EVT_PDU_SENT, self._sent_pdu),
                (evt.EVT_N_ACTION, self._action),
            ],
        )

    def _sent_pdu(self, event: Any) -> None:
        self._assoc = event.assoc
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        if any(
            (item.presentation_data_value or b"\0")[0] & 0x03 == 0x03  # last command fragment
            for item in pdu.presentation_data_value_items
        ):
            self._sent += 1
            if self._sent == self._n:
                event.assoc.abort()

    def abort(self) -> None:
        """An A-ABORT now, on the association it last answered on."""
        self._assoc.abort()

    def _action(self, event: Any) -> tuple[int, None]:
        self.n_actions.append(str(event.request.MessageID))
        return 0x0000, None  # Success (never reached: the peer is gone)


def _wait_in(
    name: str, captured: list[Association], first: Callable[[], None] | None = None
) -> Callable[..., Any]:
    """``storescu.<name>``, called only once the association it is given has ended
    (after calling ``first``, when given)."""
    original = getattr(storescu, name)

    def waiting(assoc: Association, *args: Any) -> Any:
        captured.append(assoc)
        if first is not None:
            first()
        _until_gone(assoc)
        return original(assoc, *args)

    return waiting


@pytest.mark.parametrize(
    ("where", "unsendable_last"),
    [
        ("_commit", False),  # gone before the commitment request is built
        ("hold_reactor", False),  # gone between the check and the N-ACTION
        ("_commit", True),  # the last item had no context: no C-STORE after the abort
    ],
    ids=["before-commit", "before-n-action", "rest-without-context"],
)
def test_a_peer_gone_by_the_commitment_request_is_an_abort_in_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, unsendable_last: bool
) -> None:
    items: list[Item] = items_of(
        synthetic.make_ct_series(tmp_path / "ct", n_slices=3, rows=16, cols=16)
    )
    if unsendable_last:
        last = items[-1]
        items[-1] = Item(last.path, last.sop_class_uid, last.sop_instance_uid, JPEG_2000)
    stored = items[:-1] if unsendable_last else items
    captured: list[Association] = []
    # Past the check in _commit, the peer aborts when told (it would race the check).
    peer = _AbortingPeer(None if where == "hold_reactor" else len(stored))
    first = peer.abort if where == "hold_reactor" else None
    monkeypatch.setattr(storescu, where, _wait_in(where, captured, first))
    with peer:
        report = attempt(Dest("HOSP2", "127.0.0.1", peer.port, "auto"), items, settings=SETTINGS)
    assert isinstance(report, StoreReport)
    assert "did not answer the storage commitment request" in report.error
    assert not report.permanent
    assert {uid: s for uid, s in report.statuses.items() if s is not None} == {
        i.sop_instance_uid: 0 for i in stored
    }
    assert report.transaction_uid == ""  # no N-ACTION went out
    assert peer.n_actions == []
    (assoc,) = captured
    assoc.join(10)
    assert not assoc.is_alive()  # its reactor saw the end (not left held)


def _truncate(size: int) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        with path.open("r+b") as f:
            f.truncate(size)

    return cut


@pytest.mark.parametrize(
    "spoil",
    [
        Path.unlink,
        _truncate(0),
        _truncate(100),  # inside the preamble: not DICOM to pydicom either
        _truncate(150),  # inside the File Meta Information
    ],
    ids=["deleted", "empty", "in-preamble", "in-meta"],
)
def test_a_stored_file_that_cannot_be_read_is_reported_and_the_run_goes_on(
    tmp_path: Path, spoil: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    items = items_of(synthetic.make_ct_series(tmp_path / "ct", n_slices=3, rows=16, cols=16))
    spoil(items[1].path)
    with PynetdicomScp("HOSP2", storage=True) as peer:
        report = attempt(Dest("HOSP2", "127.0.0.1", peer.port), items, settings=SETTINGS)
        on_the_wire = peer.per_association
    assert report.error == ""
    assert report.statuses == {
        items[0].sop_instance_uid: 0,
        items[1].sop_instance_uid: None,
        items[2].sop_instance_uid: 0,
    }
    assert report.unreadable == {items[1].sop_instance_uid}
    assert report.unsendable == set()
    # Nothing of it went out, and the same association carried the next one.
    assert on_the_wire == [[items[0].sop_instance_uid, items[2].sop_instance_uid]]
    (line,) = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert items[1].sop_instance_uid in line and str(items[1].path.name) not in line


def test_a_file_cut_short_while_it_is_sent_aborts_the_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shorter than its size once part of its message is on the wire: the association
    cannot carry another message, so the run ends with a permanent error in the report."""
    small = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=16, cols=16)
    big = synthetic.make_ct_series(tmp_path / "big", n_slices=2, rows=512, cols=512)
    items = items_of([*small, *big])
    assert items[1].path.stat().st_size > 2 * storesend.SEND_BUFFER
    original = storesend.FastStore._flush
    cut: list[Path] = []

    def cutting(self: storesend.FastStore) -> None:
        original(self)
        if not cut and self._message_id == 2:  # the big file, once its first bytes went
            cut.append(items[1].path)
            _truncate(storesend.SEND_BUFFER + 1000)(items[1].path)

    monkeypatch.setattr(storesend.FastStore, "_flush", cutting)
    with PynetdicomScp("HOSP2", storage=True) as peer:
        report = attempt(Dest("HOSP2", "127.0.0.1", peer.port), items, settings=SETTINGS)
        stored = peer.per_association
    assert cut == [items[1].path]
    assert report.permanent and "could not be read part-way" in report.error
    assert report.statuses == {items[0].sop_instance_uid: 0, items[1].sop_instance_uid: None}
    assert report.unreadable == {items[1].sop_instance_uid}
    assert stored == [[items[0].sop_instance_uid]]


class _TinyPduAE(AE):
    """Asks the peer for PDUs of at most 64 bytes: its C-STORE-RSP comes in fragments,
    which FastStore hands over to pynetdicom."""

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        kwargs["max_pdu"] = 64
        return super().associate(*args, **kwargs)


def test_after_a_hand_over_a_peer_that_stops_reading_is_an_abort_after_the_network_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first response comes in fragments (handed over to pynetdicom); during the
    second, large instance the peer stops reading (its handler holds its thread, so
    nothing drains the socket). The sender must give up after the network timeout (2 s
    here), not wait in sendall for ever."""
    small = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=16, cols=16)
    big = synthetic.make_ct_series(tmp_path / "big", n_slices=1, rows=2048, cols=2048)
    items = items_of([*small, *big])
    handed: list[int] = []
    original = storesend.FastStore._hand_over

    def counting(self: storesend.FastStore, pdu: bytes, message_id: int) -> int | None:
        handed.append(message_id)
        return original(self, pdu, message_id)

    monkeypatch.setattr(storesend.FastStore, "_hand_over", counting)
    release = threading.Event()
    stalled = threading.Event()

    def stop_reading(event: Any) -> None:
        # The second association event with data: the peer's reading thread stops here
        # until the test ends (bounded), while the 8 MB slice fills the buffers.
        if handed and not stalled.is_set():
            stalled.set()
            release.wait(30)

    peer = PynetdicomScp(
        "HOSP2", storage=True, keep_datasets=False, handlers=[(evt.EVT_DATA_RECV, stop_reading)]
    )
    factory: AeFactory = _TinyPduAE
    result: list[StoreReport] = []
    with peer:
        sender = threading.Thread(
            target=lambda: result.append(
                attempt(
                    Dest("HOSP2", "127.0.0.1", peer.port),
                    items,
                    settings=ScuSettings("COURIER", 5.0, 2.0, 2.0),
                    ae_factory=factory,
                )
            ),
            daemon=True,
        )
        sender.start()
        sender.join(30)
        finished = not sender.is_alive()
        release.set()
    assert finished, "the sender hung in sendall after the hand-over"
    assert handed == [1] and stalled.is_set()
    (report,) = result
    assert report.statuses == {items[0].sop_instance_uid: 0, items[1].sop_instance_uid: None}
    assert "aborted the association or did not answer a C-STORE" in report.error
