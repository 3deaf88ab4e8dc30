"""The fast C-STORE send (scp.storesend): bytes on the wire, files byte-identical at a real
receiver, and the pynetdicom internals it relies on.

Real peers on loopback: dcmtk's storescp with its smallest maximum PDU (4 KB, so a slice
is many fragments) and with its default; the command set and PDU headers are checked by
decoding them with pydicom and pynetdicom.
"""

from __future__ import annotations

import inspect
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket

from scp import storesend
from scp.storescu import PeerAborted, ScuSettings, acknowledged, send_instances
from tests import synthetic
from tests.peers import DcmtkStorescp, PynetdicomScp, have_dcmtk, require_peer


@dataclass(frozen=True)
class Item:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Dest:
    ae_title: str
    host: str
    port: int
    commitment: str = "off"


def items_of(files: list[Path]) -> list[Item]:
    out = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            Item(
                path,
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
            )
        )
    return out


def test_pynetdicom_internals_are_what_the_fast_send_expects() -> None:
    """Fails loudly when a pynetdicom upgrade changes what scp.storesend relies on."""
    assoc = Association(AE(), "requestor")
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert assoc._is_paused is False
    assert callable(assoc._handle_no_response)
    assert callable(assoc._check_received_status)
    assert "self.socket = " in inspect.getsource(AssociationSocket.__init__)
    assert "block" in inspect.signature(DIMSEServiceProvider.get_msg).parameters
    assert isinstance(assoc.dul._run_loop_delay, float)
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(type(assoc.dul).run_reactor)
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


def test_a_missing_file_is_the_callers_error_and_ends_the_association(
    ct: list[Path],
) -> None:
    items = items_of(ct)
    items[1].path.unlink()
    with PynetdicomScp("HOSP2", storage=True) as peer:
        with pytest.raises(FileNotFoundError):
            send_instances(Dest("HOSP2", "127.0.0.1", peer.port), items)
        assert peer.uids(0) == [items[0].sop_instance_uid]
        # The next association works.
        report = send_instances(Dest("HOSP2", "127.0.0.1", peer.port), [items[0], items[2]])
    assert all(acknowledged(s) for s in report.statuses.values())


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
