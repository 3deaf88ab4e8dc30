"""The C-STORE fast path (scp/fastpath.py): its byte encodings against pynetdicom's, the
pynetdicom internals it relies on, and the same results with it on and off."""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, dimse_messages, fsm
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import AssociationSocket, RequestHandler

from scp import fastpath
from tests import synthetic
from tests.conftest import Database, LocalScp, echo_ok, start_local_scp
from tests.scu import dataset_bytes, send

CT = "1.2.840.10008.5.1.4.1.1.2"

# The pynetdicom code the fast path copies, overrides or calls into, by SHA-256 of its
# source. When a pynetdicom upgrade changes any of it, read the new code against
# scp/fastpath.py (the reactors, the P-DATA handling, the C-STORE service) and record
# the new digests here.
RELIED_ON: dict[str, Any] = {
    "DULServiceProvider.__init__": DULServiceProvider.__init__,
    "DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
    "DULServiceProvider._read_pdu_data": DULServiceProvider._read_pdu_data,
    "DULServiceProvider._is_transport_event": DULServiceProvider._is_transport_event,
    "DULServiceProvider._process_recv_primitive": DULServiceProvider._process_recv_primitive,
    "DULServiceProvider._decode_pdu": DULServiceProvider._decode_pdu,
    "DULServiceProvider.send_pdu": DULServiceProvider.send_pdu,
    "DULServiceProvider.stop_dul": DULServiceProvider.stop_dul,
    "DULServiceProvider.kill_dul": DULServiceProvider.kill_dul,
    "DULServiceProvider.idle_timer_expired": DULServiceProvider.idle_timer_expired,
    "Association.__init__": Association.__init__,
    "Association.run_reactor": Association.run_reactor,
    "Association._run_reactor": Association._run_reactor,
    "Association._serve_request": Association._serve_request,
    "Association.kill": Association.kill,
    "ACSE._negotiate_as_acceptor": ACSE._negotiate_as_acceptor,
    "RequestHandler._create_association": RequestHandler._create_association,
    "AssociationSocket.ready": AssociationSocket.ready.fget,  # type: ignore[attr-defined]
    "AssociationSocket.send": AssociationSocket.send,
    "AssociationSocket.close": AssociationSocket.close,
    "fsm.DT_2": fsm.DT_2,
    "DIMSEMessage.decode_msg": dimse_messages.DIMSEMessage.decode_msg,
    "StorageServiceClass.SCP": StorageServiceClass.SCP,
}

DIGESTS = {  # pynetdicom 3.0.4
    "DULServiceProvider.__init__": "c82dafa9438ddf70",
    "DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "DULServiceProvider._process_recv_primitive": "4c0ebbb3e646e35e",
    "DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",
    "DULServiceProvider.send_pdu": "7cbce5da8594124e",
    "DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "DULServiceProvider.idle_timer_expired": "0150c19fda68f6e9",
    "Association.__init__": "eb07516b8009ad8f",
    "Association.run_reactor": "ed8bbbe3b3d6ddae",
    "Association._run_reactor": "f28838c5559e462a",
    "Association._serve_request": "2f24c1759cdf6c8c",
    "Association.kill": "8f9713666a7f4cff",
    "ACSE._negotiate_as_acceptor": "fffd360957c42a8e",
    "RequestHandler._create_association": "05c8d12b79863cdb",
    "AssociationSocket.ready": "3eb58e3d39dc076d",
    "AssociationSocket.send": "1ea8158c0b51faca",
    "AssociationSocket.close": "c726c8db53813d55",
    "fsm.DT_2": "9ec543394e0b49eb",
    "DIMSEMessage.decode_msg": "f51c777e841a76be",
    "StorageServiceClass.SCP": "63afca7fc6c6e7ee",
}


def _digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_pynetdicom_internals_are_what_the_fast_path_expects() -> None:
    assert pynetdicom.__version__.startswith(fastpath.PYNETDICOM_VERSIONS), (
        f"pynetdicom {pynetdicom.__version__}: scp/fastpath.py was written against "
        f"{fastpath.PYNETDICOM_VERSIONS}; review it and update PYNETDICOM_VERSIONS"
    )
    changed = {
        name: _digest(obj) for name, obj in RELIED_ON.items() if _digest(obj) != DIGESTS.get(name)
    }
    assert not changed, (
        "pynetdicom internals that scp/fastpath.py relies on changed; review them and "
        f"update DIGESTS: {changed}"
    )
    # The attributes it touches.
    dul = DULServiceProvider.__new__(DULServiceProvider)
    DULServiceProvider.__init__(dul, _FakeAssoc())  # type: ignore[arg-type]
    for name in (
        "event_queue",
        "to_provider_queue",
        "to_user_queue",
        "_recv_pdu",
        "_idle_timer",
        "artim_timer",
        "state_machine",
        "_kill_thread",
        "_run_loop_delay",
        "socket",
    ):
        assert hasattr(dul, name), name
    for name in ("_start_time", "_end_time"):
        assert hasattr(dul.artim_timer, name), name


class _FakeAssoc:
    network_timeout = 60


def _pynetdicom_rsp(message_id: int, sop_instance: str, status: int) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    msg = dimse_messages.C_STORE_RSP()
    msg.primitive_to_message(rsp)
    out = b""
    for p_data in msg.encode_msg(1, 16384):
        for _cx, data in p_data.presentation_data_value_list:
            assert data[0] & 1
            out += data[1:]
    return out


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.3.4"])  # odd and even length
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC002, 0x0110])
def test_the_response_is_encoded_as_pynetdicom_does(uid: str, status: int) -> None:
    assert fastpath.c_store_rsp(513, CT, uid, status) == _pynetdicom_rsp(513, uid, status)


def test_a_c_store_command_is_read_from_bytes() -> None:
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = "1.2.3.4.5"
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = "PACS"
    req.MoveOriginatorMessageID = 3
    req.DataSet = BytesIO(b"\x08\x00\x16\x00")
    msg = dimse_messages.C_STORE_RQ()
    msg.primitive_to_message(req)
    command = b"".join(
        data[1:]
        for p_data in msg.encode_msg(1, 16384)
        for _cx, data in p_data.presentation_data_value_list
        if data[0] & 1
    )
    fields = fastpath.parse_command(command)
    assert fields is not None
    assert fastpath._us(fields, 0x0100) == fastpath.C_STORE_RQ
    assert fastpath._us(fields, 0x0110) == 7
    assert fastpath._us(fields, 0x0800) != fastpath.NO_DATASET
    assert fastpath._uid(fields, 0x0002) == CT
    assert fastpath._uid(fields, 0x1000) == "1.2.3.4.5"
    assert fastpath.parse_command(command[:-1]) is None
    assert fastpath.parse_command(b"\x08\x00" + command[2:]) is None  # not group 0000


@pytest.fixture(params=[True, False], ids=["fast", "pynetdicom"])
def either_scp(request: pytest.FixtureRequest, db: Database, tmp_path: Path) -> Iterator[LocalScp]:
    scp = start_local_scp(db, tmp_path / "data", fast_store=request.param)
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


def test_both_paths_store_the_same_and_answer_the_same(
    either_scp: LocalScp, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "small", n=4)
    # A CT slice spans many PDUs.
    files += synthetic.make_ct_series(tmp_path / "ct", n_slices=1)
    statuses = send(either_scp.port, files)
    assert statuses == [0x0000] * 5
    assert send(either_scp.port, files[:1]) == [0x0000]  # an identical re-send
    assert either_scp.rows() == 5
    for f in files:
        import pydicom

        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        found = list(either_scp.content.instances.rglob(f"{uid}.dcm"))
        assert len(found) == 1 and dataset_bytes(found[0]) == dataset_bytes(f)
    assert either_scp.spool_files() == []


# --------------------------------------------------------------------------------------
# Hostile commands on the fast path: a status or an A-ABORT, never a silent drop


@pytest.fixture
def fast_scp(db: Database, tmp_path: Path) -> Iterator[LocalScp]:
    scp = start_local_scp(db, tmp_path / "data", fast_store=True)
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


def _raw_association(port: int) -> tuple[Any, socket.socket, int]:
    """An established association whose socket the test drives itself."""
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = 5
    ae.add_requested_context(CT, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="COURIER")
    assert assoc.is_established
    cx_id = assoc.accepted_contexts[0].context_id
    raw: socket.socket = assoc.dul.socket.socket
    assoc.dul.kill_dul()  # stop pynetdicom reading; we drive the socket ourselves
    deadline = time.monotonic() + 5
    while assoc.dul.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    raw.settimeout(10)
    return assoc, raw, cx_id


def _read_pdu(raw: socket.socket) -> tuple[int, bytes]:
    """The next PDU from the peer: (type, body); (0, b"") when the socket closed."""

    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = raw.recv(n - len(out))
            if not chunk:
                return b""
            out += chunk
        return out

    head = exactly(6)
    if len(head) != 6:
        return 0, b""
    return head[0], exactly(struct.unpack(">L", head[2:])[0])


def _command(sop_instance: bytes) -> bytes:
    body = b"".join(
        (
            fastpath._element(0x0002, fastpath._uid_value(CT)),
            fastpath._element(0x0100, struct.pack("<H", fastpath.C_STORE_RQ)),
            fastpath._element(0x0110, struct.pack("<H", 1)),
            fastpath._element(0x0700, struct.pack("<H", 0)),
            fastpath._element(0x0800, struct.pack("<H", 0x0000)),
            fastpath._element(0x1000, sop_instance),
        )
    )
    return fastpath._element(0x0000, struct.pack("<L", len(body))) + body


def _release(raw: socket.socket) -> int:
    raw.sendall(b"\x05\x00" + struct.pack(">L", 4) + b"\0" * 4)
    return _read_pdu(raw)[0]


def _status(body: bytes) -> int | None:
    """The Status of the C-STORE-RSP in one P-DATA-TF body."""
    fields = fastpath.parse_command(body[6:])
    assert fields is not None and fastpath._us(fields, 0x0100) == fastpath.C_STORE_RSP
    return fastpath._us(fields, 0x0900)


def test_a_non_ascii_sop_instance_uid_is_refused_and_the_association_goes_on(
    fast_scp: LocalScp,
) -> None:
    _assoc, raw, cx_id = _raw_association(fast_scp.port)
    try:
        raw.sendall(fastpath.p_data_tf(cx_id, 0x03, _command(b"1.2.3.\xe94")))
        raw.sendall(fastpath.p_data_tf(cx_id, 0x02, b"\x08\x00\x16\x00\x00\x00\x00\x00"))
        kind, body = _read_pdu(raw)
        assert kind == 0x04  # a response, not an A-ABORT or a closed socket
        status = _status(body)
        assert status is not None and status != 0x0000
        assert _release(raw) == 0x06  # A-RELEASE-RP: the association went on
    finally:
        raw.close()
    assert fast_scp.rows() == 0
    assert fast_scp.spool_files() == []


def test_a_spool_file_that_cannot_be_opened_answers_out_of_resources(
    fast_scp: LocalScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scp import spool

    def no_spool() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "open_spool", no_spool)
    files = synthetic.make_small_instances(tmp_path / "small", n=2)
    assert send(fast_scp.port, files) == [0xA700, 0xA700]  # both on one association
    monkeypatch.undo()
    assert send(fast_scp.port, files) == [0x0000, 0x0000]
    assert fast_scp.spool_files() == []


def test_a_command_that_never_ends_aborts_the_association(fast_scp: LocalScp) -> None:
    _assoc, raw, cx_id = _raw_association(fast_scp.port)
    fragment = fastpath.p_data_tf(cx_id, 0x01, b"\0" * 16_384)  # command, not last
    kinds = []
    try:
        for _ in range(8):  # 128 KiB, twice the cap
            try:
                raw.sendall(fragment)
            except OSError:
                break
        kinds.append(_read_pdu(raw)[0])
    finally:
        raw.close()
    assert kinds in ([0x07], [0])  # A-ABORT (or the socket closed after it)
    assert echo_ok(fast_scp.port)


def test_no_wake_up_is_written_once_the_eventfd_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynetdicom import _globals

    assoc = fastpath.CourierAssociation(AE(), _globals.MODE_ACCEPTOR)
    dul = assoc.dul
    os.close(dul._wake_fd)
    dul._wake_fd = -1
    writes: list[int] = []
    monkeypatch.setattr(os, "eventfd_write", lambda fd, _n: writes.append(fd))
    dul._wake()
    assert writes == []


# --------------------------------------------------------------------------------------
# Reading ahead: several PDUs in one read, a PDU split over many, the size limit kept


def _implicit_dataset(path: Path) -> bytes:
    """The dataset of ``path`` re-encoded Implicit VR Little Endian (the raw context's)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(path)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("chunk", [None, 5, 4099], ids=["one-write", "5-bytes", "4099-bytes"])
def test_c_stores_arriving_together_or_in_pieces_are_all_answered(
    fast_scp: LocalScp, tmp_path: Path, chunk: int | None
) -> None:
    import pydicom

    files = synthetic.make_small_instances(tmp_path / "small", n=3)
    stream = b"".join(
        fastpath.p_data_tf(1, 0x03, _command(fastpath._uid_value(uid)))
        + fastpath.p_data_tf(1, 0x02, _implicit_dataset(f))
        for f in files
        for uid in [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)]
    )
    _assoc, raw, cx_id = _raw_association(fast_scp.port)
    assert cx_id == 1
    try:
        step = chunk or len(stream)
        for start in range(0, len(stream), step):  # bounded: len(stream) / step writes
            raw.sendall(stream[start : start + step])
        answers = [_read_pdu(raw) for _ in files]
        assert [(kind, _status(body)) for kind, body in answers] == [(0x04, 0x0000)] * 3
        assert _release(raw) == 0x06
    finally:
        raw.close()
    assert fast_scp.rows() == 3
    assert fast_scp.spool_files() == []


def test_a_pdu_over_the_limit_is_refused_though_its_start_was_read_ahead(
    db: Database, tmp_path: Path
) -> None:
    import pydicom

    scp = start_local_scp(db, tmp_path / "data", fast_store=True, max_pdu_size=4096)
    small = synthetic.make_small_instances(tmp_path / "small", n=1)[0]
    uid = str(pydicom.dcmread(small, stop_before_pixels=True).SOPInstanceUID)
    try:
        _assoc, raw, cx_id = _raw_association(scp.port)
        limit = 4096 + 256 * 1024  # max_pdu_size + the room the socket allows
        try:
            # One C-STORE first: from then on the socket reads ahead.
            raw.sendall(fastpath.p_data_tf(cx_id, 0x03, _command(fastpath._uid_value(uid))))
            data = _implicit_dataset(small)
            for start in range(0, len(data), 4000):  # fragments within max_pdu_size
                last = 0x02 if start + 4000 >= len(data) else 0x00
                raw.sendall(fastpath.p_data_tf(cx_id, last, data[start : start + 4000]))
            kind, body = _read_pdu(raw)
            assert (kind, _status(body)) == (0x04, 0x0000)
            # Announces one byte over the limit; the first 32 KiB come with the header.
            raw.sendall(struct.pack(">BBL", 0x04, 0, limit + 1) + b"\0" * 32_768)
            assert _read_pdu(raw)[0] in (0x07, 0)  # A-ABORT, or the socket closed
        finally:
            raw.close()
        assert echo_ok(scp.port)
    finally:
        scp.server.shutdown()
        scp.server.server_close()
