"""scp.header: the sender read back from the File Meta Information, strictly."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from scp import fastpath
from scp.header import ae_title, check_structure, presentation_host, read_header
from store.models import Instance
from tests import synthetic
from tests.conftest import Database, start_local_scp
from tests.scp.test_fastpath import _command, _read_pdu, _release, _status


@pytest.mark.parametrize(
    ("address", "host"),
    [
        # the form PS3.10 7.1.1.1 gives
        (b"dicom:10.1.2.3:104", "10.1.2.3"),
        (b"dicom:10.1.2.3:104 ", "10.1.2.3"),  # UR padding
        (b"dicom:[::1]:51234", "::1"),
        (b"dicom:[fe80::1%25eth0]:104", "fe80::1%eth0"),
        (b"dicom:pacs.example.org:104", "pacs.example.org"),
        (b"dicom:10.1.2.3", ""),  # no port
        (b"dicom:10.1.2.3:", ""),
        (b"dicom:::1:104", ""),  # IPv6 without brackets
        (b"dicom:10.1.2.3:104/", ""),
        (b"dicom:/10.1.2.3:104", ""),
        (b"dicom:user@10.1.2.3:104", ""),
        (b"dicom:10.1.2.3:70000", ""),
        # the URI form
        (b"dicom://10.1.2.3:104", "10.1.2.3"),
        (b"dicom://10.1.2.3:104 ", "10.1.2.3"),
        (b"DICOM://10.1.2.3:104", "10.1.2.3"),  # the scheme is case-insensitive
        (b"dicom://10.1.2.3", "10.1.2.3"),
        (b"dicom://10.1.2.3:104/", "10.1.2.3"),
        (b"dicom://[::1]:11112", "::1"),
        (b"dicom://[2001:db8::7]:104", "2001:db8::7"),
        (b"dicom://[::ffff:10.1.2.3]:104", "::ffff:10.1.2.3"),
        (b"dicom://[fe80::1%25eth0]:104", "fe80::1%eth0"),
        (b"dicom://pacs.example.org:104", "pacs.example.org"),
        (b"dicom://PACS-1:104", "PACS-1"),
        # malformed: nothing
        (b"", ""),
        (b"10.1.2.3:104", ""),  # no scheme
        (b"http://10.1.2.3:104", ""),  # another scheme
        (b"dicom://", ""),
        (b"dicom://:104", ""),
        (b"dicom://10.1.2.3:", ""),
        (b"dicom://10.1.2.3:0", ""),
        (b"dicom://10.1.2.3:65536", ""),
        (b"dicom://10.1.2.3:104x", ""),
        (b"dicom://10.1.2.300:104", ""),
        (b"dicom://10.1.2:104", ""),
        (b"dicom://010.1.2.3:104", ""),
        (b"dicom://::1:104", ""),  # IPv6 without brackets
        (b"dicom://[::1:104", ""),
        (b"dicom://[10.1.2.3]:104", ""),
        (b"dicom://[::g]:104", ""),
        (b"dicom://user@10.1.2.3:104", ""),
        (b"dicom://10.1.2.3:104/path", ""),
        (b"dicom://10.1.2.3:104?q", ""),
        (b"dicom://10.1.2.3:104#f", ""),
        (b" dicom://10.1.2.3:104", ""),  # UR: leading spaces are not allowed
        (b"dicom://10.1.2.3\n:104", ""),
        (b"dicom://ho st:104", ""),
        (b"dicom://-host:104", ""),
        (b"dicom://h\xc3\xb6st:104", ""),  # not ASCII
        (b"dicom://" + b"a" * 64 + b":104", ""),  # a label over 63
        (b"dicom://10.1.2.3:104\x00", ""),
    ],
)
def test_presentation_host_is_parsed_strictly(address: bytes, host: str) -> None:
    assert presentation_host(address) == host


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        (b"MODALITY1 ", "MODALITY1"),
        (b" PACS", "PACS"),
        (b"A" * 16, "A" * 16),
        (b"A" * 17, ""),
        (b"BAD\\AE", ""),
        (b"BAD\x01", ""),
        (b"M\xc3\xbc", ""),
        (b"", ""),
        (None, ""),
    ],
)
def test_ae_titles_are_read_strictly(raw: bytes | None, title: str) -> None:
    assert ae_title(raw) == title


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        # (0002,0016) source, (0002,0017) sending, (0002,0018) receiving, (0002,0027)
        ({}, ("", "", "")),
        (
            {
                "SourceApplicationEntityTitle": "SRC",
                "SendingApplicationEntityTitle": "MODALITY1",
                "ReceivingApplicationEntityTitle": "COURIER",
                "SendingPresentationAddress": "dicom:10.1.2.3:104",
            },
            ("MODALITY1", "COURIER", "10.1.2.3"),
        ),
        ({"SourceApplicationEntityTitle": "SRC"}, ("SRC", "", "")),
        (
            {"SendingPresentationAddress": "dicom:[2001:db8::7]:104"},
            ("", "", "2001:db8::7"),
        ),
        ({"SendingPresentationAddress": "dicom:127.0.0.1:51234"}, ("", "", "127.0.0.1")),
        ({"SendingPresentationAddress": "dicom://user@10.1.2.3:104"}, ("", "", "")),
    ],
)
def test_the_sender_is_read_from_the_file_meta(
    tmp_path: Path, meta: dict[str, str], expected: tuple[str, str, str]
) -> None:
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    ds = pydicom.dcmread(src)
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    path = tmp_path / "meta.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path)
    assert (header.calling_ae, header.called_ae, header.peer_host) == expected
    assert header.sop_instance_uid == ds.SOPInstanceUID


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"UR":  # a 32-bit length
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        # what Courier wrote in its meta: the dataset's group 0002 never replaces it
        (
            {
                "SendingApplicationEntityTitle": "MODALITY1",
                "ReceivingApplicationEntityTitle": "COURIER",
                "SendingPresentationAddress": "dicom:10.1.2.3:104",
            },
            ("MODALITY1", "COURIER", "10.1.2.3"),
        ),
        # nor fills in what Courier's meta left out
        ({}, ("", "", "")),
    ],
)
def test_group_0002_in_the_dataset_is_not_the_sender(
    tmp_path: Path, meta: dict[str, str], expected: tuple[str, str, str]
) -> None:
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    ds = pydicom.dcmread(src)
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    data = plain.read_bytes()
    dataset_offset = read_header(plain).dataset_offset
    # A buggy modality's dataset that starts with group 0002 elements of its own
    # (the transfer syntax too).
    extra = (
        _element(0x0010, b"UI", b"1.2.840.10008.1.2.2\x00")
        + _element(0x0017, b"AE", b"FORGED_AE ")
        + _element(0x0018, b"AE", b"NOT_COURIER ")
        + _element(0x0027, b"UR", b"dicom:192.0.2.9:104 ")
    )
    path = tmp_path / "group2.dcm"
    path.write_bytes(data[:dataset_offset] + extra + data[dataset_offset:])
    header = read_header(path)
    assert (header.calling_ae, header.called_ae, header.peer_host) == expected
    assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    # As before: the dataset is read after them, and its structure checks.
    assert header.dataset_offset == dataset_offset + len(extra)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert check_structure(path) == (ds.file_meta.TransferSyntaxUID, dataset_offset + len(extra))


@pytest.mark.parametrize("fast_store", [True, False], ids=["fast", "pynetdicom"])
def test_a_pushed_dataset_with_group_0002_is_stored_under_its_real_sender(
    db: Database, tmp_path: Path, fast_store: bool
) -> None:
    """A live C-STORE (Explicit VR Little Endian) whose dataset starts with group 0002
    elements naming another sender: the row and the stored file name the association's."""
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    ds = pydicom.dcmread(src)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    forged = _element(0x0017, b"AE", b"FORGED_AE ") + _element(
        0x0027, b"UR", b"dicom:192.0.2.9:104 "
    )
    scp = start_local_scp(db, tmp_path / "data", fast_store=fast_store)
    try:
        ae = AE(ae_title="PYSCU")
        ae.acse_timeout = 5
        ae.add_requested_context(str(ds.SOPClassUID), ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="COURIER")
        assert assoc.is_established
        cx_id = assoc.accepted_contexts[0].context_id
        raw: socket.socket = assoc.dul.socket.socket
        assoc.dul.kill_dul()  # stop pynetdicom reading; the test drives the socket
        assoc.dul.join(5)
        raw.settimeout(10)
        try:
            uid = fastpath._uid_value(str(ds.SOPInstanceUID))
            raw.sendall(fastpath.p_data_tf(cx_id, 0x03, _command(uid)))
            raw.sendall(fastpath.p_data_tf(cx_id, 0x02, forged + fp.getvalue()))
            kind, body = _read_pdu(raw)
            assert (kind, _status(body)) == (0x04, 0x0000)
            assert _release(raw) == 0x06
        finally:
            raw.close()
    finally:
        scp.server.shutdown()
        scp.server.server_close()
    with db.sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert row.calling_ae == "PYSCU"
    header = read_header(scp.content.path(row.path))
    assert (header.calling_ae, header.called_ae, header.peer_host) == (
        "PYSCU",
        "COURIER",
        "127.0.0.1",
    )
