"""The C-STORE fast path (scp/fastpath.py): its byte encodings against pynetdicom's, the
pynetdicom internals it relies on, and the same results with it on and off."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom import dimse_messages, fsm
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import AssociationSocket, RequestHandler

from scp import fastpath
from tests import synthetic
from tests.conftest import Database, LocalScp, start_local_scp
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
