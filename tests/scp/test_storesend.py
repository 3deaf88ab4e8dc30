"""The fast C-STORE send (scp.storesend): bytes on the wire, files byte-identical at a real
receiver, and the pynetdicom internals it relies on.

Real peers on loopback: dcmtk's storescp with its smallest maximum PDU (4 KB, so a slice
is many fragments) and with its default; the command set and PDU headers are checked by
decoding them with pydicom and pynetdicom.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from scp import storesend
from scp.storescu import AeFactory, PeerAborted, ScuSettings, acknowledged, send_instances
from store.filemeta import outgoing_head
from tests import synthetic
from tests.dcmtk import DcmtkStorescp, have_dcmtk
from tests.peers import require_peer
from tests.pynetdicom_peers import PynetdicomScp
from tests.send_items import Dest, items_of


def test_pynetdicom_internals_are_what_the_fast_send_expects() -> None:
    """Fails loudly when a pynetdicom upgrade changes what scp.storesend relies on."""
    assoc = Association(AE(), "requestor")
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert assoc._is_paused is False
    assert callable(assoc._handle_no_response)
    assert callable(assoc._check_received_status)
    assert "self.socket = " in inspect.getsource(AssociationSocket.__init__)
    assert "block" in inspect.signature(DIMSEServiceProvider.get_msg).parameters
    # The DUL thread is kept off the socket through its transport check, and its network
    # timer restarted after the run.
    dul_loop = inspect.getsource(type(assoc.dul).run_reactor)
    assert "elif self._is_transport_event():" in dul_loop
    assert "self._idle_timer.restart()" in dul_loop
    assert callable(assoc.dul._is_transport_event)
    assert callable(assoc.dul._idle_timer.restart)
    # What the DUL does with a P-DATA-TF, which a response we do not read is handed to.
    assert "dimse.receive_primitive(" in inspect.getsource(fsm.DT_2)
    assert "self.msg_queue.put(" in inspect.getsource(DIMSEServiceProvider.receive_primitive)
    # Its own send pauses the reactor the same way, and the reactor waits on the event.
    send = inspect.getsource(Association.send_c_store)
    assert "self._reactor_checkpoint.clear()" in send
    assert "while not self._is_paused" in send
    assert "self.dimse.get_msg(block=True)" in send
    reactor = inspect.getsource(Association._run_reactor)
    assert "self._reactor_checkpoint.wait()" in reactor
    assert "self._is_paused = True" in reactor


def test_command_set_decodes_as_a_c_store_request() -> None:
    raw = storesend.command_set(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45")
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.CommandField == 0x0001
    assert ds.MessageID == 7
    assert ds.Priority == 0x0002
    assert ds.CommandDataSetType != 0x0101
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"  # odd length: padded with a NUL


def test_pdu_header_decodes_as_one_pdv() -> None:
    data = b"\x01\x02\x03\x04"
    pdu = P_DATA_TF()
    pdu.decode(storesend.pdu_header(5, 0x02, len(data)) + data)
    (item,) = pdu.presentation_data_value_items
    assert item.presentation_context_id == 5
    assert item.presentation_data_value == b"\x02" + data


def test_dataset_offset_matches_pydicom(tmp_path: Path) -> None:
    (path,) = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=16, cols=16)
    assert storesend.dataset_offset(path) == split_dataset(path)[1]
    # Without a group length the reading is pydicom's.
    bare = tmp_path / "bare.dcm"
    raw = path.read_bytes()
    (length,) = struct.unpack("<I", raw[140:144])
    bare.write_bytes(raw[:132] + raw[144:])  # drop (0002,0000)
    assert storesend.dataset_offset(bare) == split_dataset(bare)[1] == 132 + length


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return synthetic.make_ct_series(tmp_path / "ct", n_slices=4, rows=128, cols=128)


@pytest.fixture
def small_pdu_storescp() -> Iterator[DcmtkStorescp]:
    require_peer("dcmtk", have_dcmtk())
    with DcmtkStorescp("HOSP2", extra=["--max-pdu", "4096"]) as peer:
        yield peer


def _received(peer: DcmtkStorescp) -> dict[str, bytes]:
    out = {}
    for path in peer.files():
        meta, _ = split_dataset(path)
        out[str(meta.MediaStorageSOPInstanceUID)] = synthetic.dataset_bytes(path)
    return out


def test_many_fragments_arrive_byte_identical(
    ct: list[Path], small_pdu_storescp: DcmtkStorescp
) -> None:
    items = items_of(ct)
    report = send_instances(Dest("HOSP2", "127.0.0.1", small_pdu_storescp.port), items)
    assert all(acknowledged(s) for s in report.statuses.values())
    assert len(report.statuses) == len(items)
    assert _received(small_pdu_storescp) == {
        i.sop_instance_uid: synthetic.dataset_bytes(i.path) for i in items
    }


def test_large_and_bare_files_arrive_byte_identical(
    tmp_path: Path, small_pdu_storescp: DcmtkStorescp
) -> None:
    """Slices larger than one read of the file (storesend.SEND_BUFFER), and a file
    without a meta group length (its dataset found by pydicom)."""
    large = synthetic.make_ct_series(tmp_path / "large", n_slices=2, rows=512, cols=512)
    assert all(p.stat().st_size > storesend.SEND_BUFFER for p in large)
    (small,) = synthetic.make_ct_series(tmp_path / "small", n_slices=1, rows=16, cols=16)
    raw = small.read_bytes()
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(raw[:132] + raw[144:])  # drop (0002,0000)
    items = items_of([*large, bare])
    report = send_instances(Dest("HOSP2", "127.0.0.1", small_pdu_storescp.port), items)
    assert report.statuses == {i.sop_instance_uid: 0 for i in items}
    expected = {i.sop_instance_uid: synthetic.dataset_bytes(i.path) for i in items[:2]}
    expected[items[2].sop_instance_uid] = synthetic.dataset_bytes(small)
    assert _received(small_pdu_storescp) == expected


@pytest.mark.parametrize("max_pdu", [4096, 16384, 300_000, 0])  # 0: unlimited (1 MB PDVs)
def test_the_pdus_decode_to_the_files_dataset_whatever_the_maximum(
    tmp_path: Path, max_pdu: int
) -> None:
    """What _send writes, read back with pynetdicom: the command set, then the dataset as
    stored, in PDVs no longer than the peer's maximum allows (a PDV larger than the send
    buffer goes out in parts)."""
    (path,) = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=512, cols=512)
    command, dataset = _wire(path, max_pdu)
    assert bytes(command) == storesend.command_set(9, CTImageStorage, "1.2.3.4")
    assert bytes(dataset) == synthetic.dataset_bytes(path)


def _wire(path: Path, max_pdu: int) -> tuple[bytes, bytes]:
    """The command set and the dataset FastStore._send writes for ``path`` (context 5,
    message 9), each joined from its PDVs; every PDU within ``max_pdu`` (0: unlimited)."""
    ours, theirs = socket.socketpair()
    fake = SimpleNamespace(
        dul=SimpleNamespace(socket=SimpleNamespace(socket=ours)),
        acceptor=SimpleNamespace(maximum_length=max_pdu),
    )
    sender = storesend.FastStore(fake)  # type: ignore[arg-type]
    got = bytearray()
    reader = threading.Thread(target=lambda: _read_all(theirs, got))
    reader.start()
    try:
        sender._send(path, CTImageStorage, "1.2.3.4", 5, 9)
    finally:
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        ours.close()
        theirs.close()
    command, dataset, pos = bytearray(), bytearray(), 0
    while pos < len(got):
        (length,) = struct.unpack_from(">I", got, pos + 2)
        assert max_pdu == 0 or length <= max_pdu  # the PDU's variable field
        pdu = P_DATA_TF()
        pdu.decode(bytes(got[pos : pos + 6 + length]))
        pos += 6 + length
        for item in pdu.presentation_data_value_items:
            assert item.presentation_context_id == 5
            pdv = item.presentation_data_value
            assert pdv is not None
            (command if pdv[0] & 0x01 else dataset).extend(pdv[1:])
    return bytes(command), bytes(dataset)


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(1 << 20):
        into.extend(chunk)


def test_a_peer_that_stops_answering_is_an_abort_with_the_acknowledged_kept(
    ct: list[Path],
) -> None:
    items = items_of(ct)
    hold = threading.Event()
    peer = PynetdicomScp("HOSP2", storage=True)
    # The second instance is answered after the sender's DIMSE timeout (bounded wait).

    def slow(uid: str) -> None:
        if uid == items[1].sop_instance_uid:
            hold.wait(10)

    peer.before_store = slow
    settings = ScuSettings("COURIER", 5.0, 1.0, 1.0)
    try:
        with peer, pytest.raises(PeerAborted) as caught:
            send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items, settings=settings)
    finally:
        hold.set()
    statuses = caught.value.report.statuses
    assert statuses == {items[0].sop_instance_uid: 0, items[1].sop_instance_uid: None}
    assert "did not answer a C-STORE" in str(caught.value)


def test_a_reactor_that_does_not_pause_falls_back_to_pynetdicom(
    ct: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = items_of(ct)
    monkeypatch.setattr(storesend.FastStore, "_wait_paused", staticmethod(lambda _assoc: False))
    sent: list[object] = []
    original = Association.send_c_store

    def counting(self: Association, *args: object, **kwargs: object) -> object:
        sent.append(args[0])
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Association, "send_c_store", counting)
    with PynetdicomScp("HOSP2", storage=True) as peer:
        report = send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items)
    assert len(sent) == len(items)  # each one through pynetdicom's send_c_store
    assert len(report.statuses) == len(items)
    assert all(acknowledged(s) for s in report.statuses.values())


def _pdus(message: DIMSEMessage, max_pdu: int = 16382) -> list[bytes]:
    """The P-DATA-TF PDUs pynetdicom sends ``message`` in, encoded."""
    out = []
    for primitive in message.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return out


def _store_rsp(message_id: int, status: int, comment: str | None = None) -> C_STORE_RSP:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5"
    rsp.Status = status
    setattr(rsp, "ErrorComment", comment)  # noqa: B010 (typed as None in pynetdicom)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return message


def _echo_rsp() -> C_ECHO_RSP:
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0x0000
    message = C_ECHO_RSP()
    message.primitive_to_message(rsp)
    return message


def _command(pdu: bytes) -> bytes:
    """The command set in a PDU holding one PDV."""
    return pdu[12:]


def _one_pdv(command: bytes) -> bytes:
    return storesend.pdu_header(1, 0x03, len(command)) + command


def _without(command: bytes, element: int) -> bytes:
    """``command`` without element (0000,``element``)."""
    out, pos = bytearray(), 0
    while pos < len(command):
        _group, elem, length = struct.unpack_from("<HHI", command, pos)
        if elem != element:
            out += command[pos : pos + 8 + length]
        pos += 8 + length
    return bytes(out)


_OK = _pdus(_store_rsp(7, 0x0000))[0]


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (_OK, (7, 0x0000)),
        (_pdus(_store_rsp(65535, 0xB000))[0], (65535, 0xB000)),
        (_pdus(_store_rsp(2, 0xA700, "out of space"))[0], (2, 0xA700)),  # with a comment
        (_pdus(_store_rsp(7, 0x0000), max_pdu=64)[0], None),  # the first of fragments
        (_pdus(_echo_rsp())[0], None),  # another command
        (_one_pdv(_without(_command(_OK), 0x0900)), None),  # no Status
        (_one_pdv(_command(_OK)[:-3]), None),  # the last element cut short
        (_OK + b"\0\0\0\0", None),  # bytes after the PDV
    ],
    ids=[
        "success",
        "warning",
        "failure-with-comment",
        "fragment",
        "echo",
        "no-status",
        "cut-short",
        "trailing",
    ],
)
def test_store_response_reads_only_a_whole_c_store_rsp(
    pdu: bytes, expected: tuple[int, int] | None
) -> None:
    assert storesend.store_response(pdu[6:]) == expected


def test_two_pdvs_in_one_pdu_are_left_to_pynetdicom() -> None:
    one = _pdus(_store_rsp(7, 0))[0]
    body = one[6:] + one[6:]
    assert storesend.store_response(body) is None


class _TinyPduAE(AE):
    """An AE that asks peers for PDUs of at most 64 bytes: their responses come in
    fragments of 58 bytes."""

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        kwargs["max_pdu"] = 64
        return super().associate(*args, **kwargs)


def test_a_response_in_fragments_is_read_through_pynetdicom(
    ct: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = items_of(ct)
    handed: list[int] = []
    original = storesend.FastStore._hand_over

    def counting(self: storesend.FastStore, pdu: bytes, message_id: int) -> int | None:
        handed.append(message_id)
        return original(self, pdu, message_id)

    monkeypatch.setattr(storesend.FastStore, "_hand_over", counting)
    factory: AeFactory = _TinyPduAE
    with PynetdicomScp("HOSP2", storage=True) as peer:
        report = send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items, ae_factory=factory)
        received = dict(peer.received)
    assert handed == [1]  # the first response; pynetdicom reads the rest of the run
    assert report.statuses == {i.sop_instance_uid: 0 for i in items}
    assert received == {i.sop_instance_uid: synthetic.dataset_bytes(i.path) for i in items}


def test_a_peer_that_stops_reading_is_an_abort_after_the_network_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dcmtk's storescp, stopped (SIGSTOP) once the association is up: the 8 MB slice
    fills the connection's buffers and sendall waits; the network timeout ends it."""
    require_peer("dcmtk", have_dcmtk())
    (path,) = synthetic.make_ct_series(tmp_path / "big", n_slices=1, rows=2048, cols=2048)
    items = items_of([path])
    settings = ScuSettings("COURIER", 5.0, 1.0, 1.0)  # network timeout: max of the two
    with DcmtkStorescp("HOSP2") as peer:
        assert peer.process is not None
        pid = peer.process.pid
        original = storesend.FastStore.store

        def stopping_the_peer(self: storesend.FastStore, *args: Any) -> int | None:
            os.kill(pid, signal.SIGSTOP)
            return original(self, *args)

        monkeypatch.setattr(storesend.FastStore, "store", stopping_the_peer)
        try:
            with pytest.raises(PeerAborted) as caught:
                send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items, settings=settings)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert caught.value.report.statuses == {items[0].sop_instance_uid: None}


def test_a_peer_that_aborts_mid_run_is_an_abort_with_the_acknowledged_kept(
    ct: list[Path],
) -> None:
    items = items_of(ct)
    seen: list[str] = []

    def store(event: Any) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        if len(seen) == 2:
            event.assoc.abort()  # an A-ABORT instead of the second response
        return 0x0000  # Success

    peer = PynetdicomScp("HOSP2", contexts=[CTImageStorage], handlers=[(evt.EVT_C_STORE, store)])
    settings = ScuSettings("COURIER", 5.0, 10.0, 10.0)
    with peer, pytest.raises(PeerAborted) as caught:
        send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items, settings=settings)
    statuses = caught.value.report.statuses
    assert statuses == {items[0].sop_instance_uid: 0, items[1].sop_instance_uid: None}
    assert seen == [items[0].sop_instance_uid, items[1].sop_instance_uid]


def test_the_network_timer_restarts_after_a_run_the_dul_did_not_see(ct: list[Path]) -> None:
    """Responses read here do not restart pynetdicom's idle timer: a run longer than the
    network timeout must not leave it expired (the reactor would abort on resuming)."""
    items = items_of(ct)
    with PynetdicomScp("HOSP2", storage=True) as peer:
        peer.before_store = lambda _uid: time.sleep(0.3)
        ae = AE(ae_title="COURIER")
        ae.add_requested_context(CTImageStorage, items[0].transfer_syntax_uid)
        ae.network_timeout = 0.5
        assoc = ae.associate("127.0.0.1", peer.port, ae_title="HOSP2")
        try:
            assert assoc.is_established
            (cx,) = assoc.accepted_contexts
            with storesend.FastStore(assoc) as sender:
                statuses = [
                    sender.store(
                        i.path, i.sop_class_uid, i.sop_instance_uid, int(cx.context_id or 0)
                    )
                    for i in items
                ]
            assert not assoc.dul.idle_timer_expired()
            assert statuses == [0] * len(items)
            assoc.release()
            assert assoc.is_released
        finally:
            if assoc.is_established:
                assoc.abort()


# Group 0002 elements a modality put at the start of its dataset (Explicit VR Little
# Endian, as pydicom and scp.header read them whatever the dataset's transfer syntax):
# (0002,0013) Implementation Version Name, (0002,0016) Source Application Entity Title.
_LEADING_0002 = (
    struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", 8)
    + b"MODV1.0 "
    + struct.pack("<HH2sH", 0x0002, 0x0016, b"AE", 12)
    + b"CT_SCANNER01"
)


def _with_leading_0002(path: Path, out: Path) -> Path:
    """A copy of ``path`` whose dataset starts with :data:`_LEADING_0002`."""
    raw = path.read_bytes()
    start = len(raw) - len(synthetic.dataset_bytes(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(raw[:start] + _LEADING_0002 + raw[start:])
    return out


def _file_in(tmp_path: Path, ts: str, leading: bool) -> Path:
    """One small synthetic CT in transfer syntax ``ts``, with or without group 0002 at
    the start of its dataset."""
    made = synthetic.make_transfer_syntax_studies(
        tmp_path / "made", n_instances=1, rows=16, cols=16, syntaxes=[ts]
    )
    (path,) = made[ts]
    return _with_leading_0002(path, tmp_path / "leading.dcm") if leading else path


def _wire_dataset(path: Path, max_pdu: int = 4096) -> bytes:
    """The dataset bytes FastStore._send writes for ``path`` (its PDVs, joined)."""
    return _wire(path, max_pdu)[1]


# (transfer syntax, dataset starts with group 0002, what goes out: the source's dataset
# bytes without the leading group 0002 (True) or all of them as stored (False)).
_GROUP_0002_CASES = [
    pytest.param(ImplicitVRLittleEndian, True, True, id="implicit-with-0002"),
    pytest.param(ExplicitVRLittleEndian, True, True, id="explicit-with-0002"),
    pytest.param(ImplicitVRLittleEndian, False, False, id="implicit-plain"),
    pytest.param(ExplicitVRLittleEndian, False, False, id="explicit-plain"),
    # A deflate stream is not walked for elements: its bytes go as stored.
    pytest.param(DeflatedExplicitVRLittleEndian, False, False, id="deflated-plain"),
]


@pytest.mark.parametrize(("ts", "leading", "dropped"), _GROUP_0002_CASES)
def test_the_wire_carries_no_group_0002_of_the_dataset(
    tmp_path: Path, ts: str, leading: bool, dropped: bool
) -> None:
    path = _file_in(tmp_path, ts, leading)
    stored = synthetic.dataset_bytes(path)
    expected = stored[len(_LEADING_0002) :] if dropped else stored
    assert _wire_dataset(path) == expected
    assert storesend.dataset_offset(path) == path.stat().st_size - len(expected)
    # The same place every other outgoing copy starts its dataset from.
    with path.open("rb") as f:
        _head, replaced = outgoing_head(f)
    if replaced:
        assert storesend.dataset_offset(path) == replaced


def test_a_large_file_with_group_0002_in_its_dataset_goes_without_it(tmp_path: Path) -> None:
    """Larger than the first read of a file (storesend.HEAD_READ): found in the file."""
    (big,) = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=256, cols=256)
    assert big.stat().st_size > storesend.HEAD_READ
    path = _with_leading_0002(big, tmp_path / "leading.dcm")
    assert _wire_dataset(path, 16384) == synthetic.dataset_bytes(big)


def test_a_deflated_dataset_goes_as_stored_whatever_its_first_bytes(tmp_path: Path) -> None:
    """A deflated file's dataset is never walked: bytes after its meta group that would
    read as group 0002 elements are part of the deflate stream, and go out."""
    path = _file_in(tmp_path, DeflatedExplicitVRLittleEndian, True)
    assert _wire_dataset(path) == synthetic.dataset_bytes(path)


def test_a_malformed_group_0002_run_is_an_oserror_before_any_dataset_byte(
    tmp_path: Path,
) -> None:
    (plain,) = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=16, cols=16)
    raw = plain.read_bytes()
    start = len(raw) - len(synthetic.dataset_bytes(plain))
    path = tmp_path / "cut.dcm"
    # A group 0002 element whose length runs past the end of the file.
    path.write_bytes(raw[:start] + struct.pack("<HH2sH", 0x0002, 0x0016, b"AE", 0xFFFE) + b"X")
    with pytest.raises(OSError, match="cannot be sent"):
        storesend.dataset_offset(path)
    with pytest.raises(OSError, match="cannot be sent"):
        _wire_dataset(path)


@pytest.mark.parametrize(
    ("ts", "leading", "dropped"),
    [case for case in _GROUP_0002_CASES if case.values[0] != DeflatedExplicitVRLittleEndian],
)
def test_what_dcmtk_receives_has_no_group_0002_in_its_dataset(
    tmp_path: Path, small_pdu_storescp: DcmtkStorescp, ts: str, leading: bool, dropped: bool
) -> None:
    path = _file_in(tmp_path, ts, leading)
    items = items_of([path])
    report = send_instances(Dest("HOSP2", "127.0.0.1", small_pdu_storescp.port), items)
    assert report.statuses == {items[0].sop_instance_uid: 0}
    stored = synthetic.dataset_bytes(path)
    expected = stored[len(_LEADING_0002) :] if dropped else stored
    (received,) = _received(small_pdu_storescp).values()
    assert received[:2] != b"\x02\x00"  # no group 0002 leads the dataset
    assert received == expected
