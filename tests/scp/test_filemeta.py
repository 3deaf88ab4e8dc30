"""The sender in every received file's File Meta Information (scp.filemeta): encoded as
PS3.10 Table 7.1-1 says, from untrusted values, on both receive paths, readable by
pydicom, dcmtk's dcmdump and dciodvfy; and the content digest that leaves it out."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from scp import filemeta
from scp.header import read_header
from store.models import Instance
from tests import synthetic
from tests.conftest import Database, LocalScp, have_dcmtk, need, start_local_scp
from tests.scu import dataset_bytes, send

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _file(tmp_path: Path, peer: bytes, name: str = "f.dcm") -> Path:
    """A Part-10 file: our meta (with ``peer``), then a one-element dataset."""
    meta = filemeta.file_meta(CT, "1.2.3.4", EXPLICIT, peer)
    path = tmp_path / name
    # (0008,0016) SOP Class UID, Explicit VR Little Endian.
    dataset = b"\x08\x00\x16\x00UI" + len(CT).to_bytes(2, "little") + CT.encode()
    path.write_bytes(filemeta.PREAMBLE + meta.written + dataset)
    return path


# (calling, called, host, port) -> what a reader finds: (0002,0016)/(0002,0017),
# (0002,0018), (0002,0027); None = the element is left out.
ENCODED = [
    (("MODALITY_A", "COURIER", "10.1.2.3", 104), ("MODALITY_A", "COURIER", "dicom:10.1.2.3:104")),
    (("CT1", "COURIER", "127.0.0.1", 51234), ("CT1", "COURIER", "dicom:127.0.0.1:51234")),
    (("A B", "X", "::1", 11112), ("A B", "X", "dicom:[::1]:11112")),
    (("M", "C", "::ffff:127.0.0.1", 5), ("M", "C", "dicom:[::ffff:127.0.0.1]:5")),
    # Untrusted bytes: control characters, a backslash and non-ASCII go, 16 chars at most.
    (("  EVIL\\AE\x00\x1b[31m ", "ÜBER", "10.0.0.1", 1), ("EVILAE[31m", "BER", "dicom:10.0.0.1:1")),
    (
        ("ABCDEFGHIJKLMNOPQRSTUV", "COURIER", "10.0.0.1", 2),
        ("ABCDEFGHIJKLMNOP", "COURIER", "dicom:10.0.0.1:2"),
    ),
    # Nothing left, or not an IP address, or no port: left out, never written malformed.
    (("", " ", "example.org", 104), (None, None, None)),
    (("A", "B", "10.0.0.1 /x", 104), ("A", "B", None)),
    (("A", "B", "10.0.0.1", 0), ("A", "B", None)),
    (("A", "B", "10.0.0.1", 65536), ("A", "B", None)),
    (("A", "B", "10.0.0.1", None), ("A", "B", None)),
    (("A", "B", "fe80::1%eth0", 104), ("A", "B", None)),
]


@pytest.mark.parametrize(("given", "expected"), ENCODED)
def test_sender_elements_read_back_as_written(
    tmp_path: Path, given: tuple[str, str, str, object], expected: tuple[str | None, ...]
) -> None:
    peer = filemeta.sender_elements(*given)
    path = _file(tmp_path, peer)
    meta = read_file_meta_info(path)
    calling, called, address = expected
    assert meta.get("SourceApplicationEntityTitle") == calling
    assert meta.get("SendingApplicationEntityTitle") == calling
    assert meta.get("ReceivingApplicationEntityTitle") == called
    assert meta.get("SendingPresentationAddress") == address
    # Every value has an even length, and the group length counts exactly the group.
    raw = path.read_bytes()
    group = int.from_bytes(raw[140:144], "little")
    assert raw[144 + group : 144 + group + 4] == b"\x08\x00\x16\x00"
    kept = filemeta.without_sender(raw[144 : 144 + group])
    assert kept is not None and all(len(e) % 2 == 0 for e in (peer, kept))
    header = read_header(path)
    assert (header.calling_ae, header.called_ae) == (calling or "", called or "")
    if address is not None:
        assert header.peer_host == given[2]


def test_content_digest_leaves_the_sender_out(tmp_path: Path) -> None:
    plain = _file(tmp_path, b"", "plain.dcm")  # as an older version wrote it
    named = _file(tmp_path, filemeta.sender_elements("A", "B", "10.0.0.1", 104), "a.dcm")
    other = _file(tmp_path, filemeta.sender_elements("OTHER", "B", "::1", 5), "b.dcm")
    not_dicom = tmp_path / "junk.dcm"
    not_dicom.write_bytes(b"not dicom at all")
    table = [
        # (file, its content digest is the SHA-256 of ...)
        (plain, plain.read_bytes()),  # no sender elements: its plain bytes
        (named, plain.read_bytes()),  # the same content, whoever sent it
        (other, plain.read_bytes()),
        (not_dicom, not_dicom.read_bytes()),
    ]
    for path, content in table:
        assert filemeta.content_sha256(path) == (
            hashlib.sha256(content).hexdigest(),
            path.stat().st_size,
        ), path.name


@pytest.fixture(params=[True, False], ids=["fast", "pynetdicom"])
def either_scp(request: pytest.FixtureRequest, db: Database, tmp_path: Path) -> Iterator[LocalScp]:
    scp = start_local_scp(db, tmp_path / "data", fast_store=request.param)
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


def _tool_lines(tool: str, path: Path) -> set[str]:
    """dcmdump/dciodvfy's complaints about ``path`` (file names taken out)."""
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).replace(str(path), "FILE").splitlines()
    return {line for line in lines if re.match(r"^\s*(E:|W:|Error|Warning)", line)}


def test_both_receive_paths_write_the_sender(either_scp: LocalScp, tmp_path: Path) -> None:
    files = synthetic.make_small_instances(tmp_path / "s", n=2)
    files += synthetic.make_ct_series(tmp_path / "ct", n_slices=1)
    assert send(either_scp.port, files, calling="MODALITY_A") == [0x0000] * 3
    # Re-sent from another AE (another connection, another port): the same content.
    assert send(either_scp.port, files[:1], calling="OTHER_AE") == [0x0000]
    with either_scp.db.sessions() as s:
        rows = list(s.scalars(select(Instance)))
    assert len(rows) == 3 and not list(either_scp.content.conflicts.glob("*"))
    for row in rows:
        path = either_scp.content.path(row.path)
        meta = pydicom.dcmread(path).file_meta
        assert meta.SourceApplicationEntityTitle == "MODALITY_A"
        assert meta.SendingApplicationEntityTitle == "MODALITY_A"
        assert meta.ReceivingApplicationEntityTitle == "COURIER"
        assert re.fullmatch(r"dicom:127\.0\.0\.1:\d+", meta.SendingPresentationAddress)
        assert row.sha256 == filemeta.content_sha256(path)[0]
        header = read_header(path)
        assert (header.calling_ae, header.called_ae, header.peer_host) == (
            "MODALITY_A",
            "COURIER",
            "127.0.0.1",
        )
    need("dcmtk", have_dcmtk())
    for row in rows:
        path = either_scp.content.path(row.path)
        sources = [f for f in files if dataset_bytes(f) == dataset_bytes(path)]
        assert len(sources) == 1
        dump = subprocess.run(["dcmdump", "-M", str(path)], capture_output=True, text=True)
        assert dump.returncode == 0 and not dump.stderr, dump.stderr
        assert "(0002,0017) AE [MODALITY_A]" in dump.stdout
        assert "(0002,0027) UR [dicom:127.0.0.1:" in dump.stdout
        # dciodvfy: nothing new against the file as the sender had it.
        if shutil.which("dciodvfy"):
            assert _tool_lines("dciodvfy", path) <= _tool_lines("dciodvfy", sources[0])
