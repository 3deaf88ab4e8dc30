"""Copies that leave the hospital carry no sender (store.filemeta.OutgoingFile): a
received file, its meta naming the calling/called AE titles and the sender's address,
goes into a ZIP part and a disc image without (0002,0016)-(0002,0028); pydicom reads the
copies, the bytes after the meta are the stored file's, and MANIFEST.json lists the
bytes written. Group 0002 elements a modality put at the start of its dataset do not go
out either. A file from a version before the sender elements goes byte for byte; a
malformed meta fails the build before anything final is written."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info

from delivery.disc import write_disc_image
from delivery.packaging.errors import UnreadableInstanceError
from delivery.packaging.package import build_package
from scp import filemeta
from store.filemeta import MAX_META, MalformedMeta, OutgoingFile, content_sha256, meta_group
from tests import synthetic
from tests.delivery.test_disc import extract
from tests.delivery.test_package import INFO, items_for, read_fileset, unpack

SENDER_TAGS = {0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028}


def split_file(raw: bytes) -> tuple[bytes, bytes]:
    """(meta elements after the group length, the dataset's bytes) of a Part-10 file."""
    length = struct.unpack_from("<I", raw, 140)[0]
    return raw[144 : 144 + length], raw[144 + length :]


def received(path: Path) -> Path:
    """Rewrite ``path`` as Courier's SCP stores a received file: the sender in its meta."""
    meta, dataset = split_file(path.read_bytes())
    peer = filemeta.sender_elements("MODALITY_A", "COURIER", "10.1.2.3", 104)
    path.write_bytes(filemeta.PREAMBLE + meta_group(meta + peer) + dataset)
    assert SENDER_TAGS & set(read_file_meta_info(path).keys())
    return path


def _outgoing(path: Path) -> bytes:
    with OutgoingFile(path) as f:
        data = f.read()
        assert len(data) == f.size
    return data


def check_copy(copy: bytes, stored: Path, tmp_path: Path) -> None:
    """No sender in ``copy``, readable, its dataset bytes the stored file's."""
    out = tmp_path / "copy.dcm"
    out.write_bytes(copy)
    meta = read_file_meta_info(out)
    assert not SENDER_TAGS & set(meta.keys())
    assert meta.FileMetaInformationGroupLength == len(split_file(copy)[0])
    ds = pydicom.dcmread(out)
    assert ds.SOPInstanceUID == pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID
    assert split_file(copy)[1] == split_file(stored.read_bytes())[1]
    assert b"10.1.2.3" not in copy and b"MODALITY_A" not in copy
    # The index's content digest of the stored file is the copy's plain digest.
    assert content_sha256(stored)[0] == hashlib.sha256(copy).hexdigest()


# -- the reader on its own -------------------------------------------------------------


def test_a_received_file_reads_without_its_sender(tmp_path: Path) -> None:
    stored = received(synthetic.make_small_instances(tmp_path / "src", n=1, n_series=1)[0])
    check_copy(_outgoing(stored), stored, tmp_path)


def test_an_older_file_reads_byte_for_byte(tmp_path: Path) -> None:
    for path in synthetic.make_small_instances(tmp_path / "src", n=2, n_series=1):
        assert _outgoing(path) == path.read_bytes()
    not_part10 = tmp_path / "raw.bin"
    not_part10.write_bytes(b"no preamble here")
    assert _outgoing(not_part10) == b"no preamble here"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"UR", b"OB"):  # a 32-bit length
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


# A modality's dataset that starts with group 0002 elements of its own.
MODALITY_GROUP_0002 = (
    _element(0x0010, b"UI", b"1.2.840.10008.1.2.2\x00")
    + _element(0x0016, b"AE", b"MODALITY_A")
    + _element(0x0017, b"AE", b"MODALITY_A")
    + _element(0x0027, b"UR", b"dicom:10.1.2.3:104 ")
)


def with_group_0002_in_dataset(path: Path, extra: bytes = MODALITY_GROUP_0002) -> bytes:
    """Put ``extra`` at the start of the dataset of ``path``; return the dataset before."""
    raw = path.read_bytes()
    meta, dataset = split_file(raw)
    path.write_bytes(raw[: 144 + len(meta)] + extra + dataset)
    return dataset


@pytest.mark.parametrize("sender_in_meta", [True, False], ids=["received", "older"])
def test_group_0002_at_the_start_of_the_dataset_does_not_go_out(
    sender_in_meta: bool, tmp_path: Path
) -> None:
    stored = synthetic.make_small_instances(tmp_path / "src", n=1, n_series=1)[0]
    if sender_in_meta:
        stored = received(stored)
    uid = pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID
    dataset = with_group_0002_in_dataset(stored)
    # pydicom reads the modality's elements as meta: they would name it.
    assert read_file_meta_info(stored).SourceApplicationEntityTitle == "MODALITY_A"

    copy = _outgoing(stored)
    out = tmp_path / "copy.dcm"
    out.write_bytes(copy)
    meta = read_file_meta_info(out)
    assert not SENDER_TAGS & set(meta.keys())
    assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert split_file(copy)[1] == dataset  # the rest of the dataset, byte for byte
    assert b"10.1.2.3" not in copy and b"MODALITY_A" not in copy
    ds = pydicom.dcmread(out)
    assert ds.SOPInstanceUID == uid
    assert not [elem.tag for elem in ds if elem.tag.group == 0x0002]


def _meta_claims_too_much(raw: bytes) -> bytes:
    return raw[:140] + struct.pack("<I", MAX_META + 1) + raw[144:]


def _meta_cut_short(raw: bytes) -> bytes:
    return raw[:140] + struct.pack("<I", len(raw)) + raw[144:]


def meta_bad_element(raw: bytes) -> bytes:
    meta, dataset = split_file(raw)
    bad = meta + struct.pack("<HH2sH", 0x0008, 0x0005, b"CS", 0)  # another group inside
    return raw[:140] + struct.pack("<I", len(bad)) + bad + dataset


def _dataset_group_0002_cut_short(raw: bytes) -> bytes:
    meta = split_file(raw)[0]
    return raw[: 144 + len(meta)] + _element(0x0016, b"AE", b"MODALITY_A")[:-2]


def _dataset_group_0002_too_long(raw: bytes) -> bytes:
    meta, dataset = split_file(raw)
    return raw[: 144 + len(meta)] + _element(0x0001, b"OB", b"\0" * MAX_META) + dataset


@pytest.mark.parametrize(
    "spoil",
    [
        _meta_claims_too_much,
        _meta_cut_short,
        meta_bad_element,
        _dataset_group_0002_cut_short,
        _dataset_group_0002_too_long,
    ],
)
def test_a_malformed_meta_raises_before_any_byte(spoil: object, tmp_path: Path) -> None:
    path = received(synthetic.make_small_instances(tmp_path / "src", n=1, n_series=1)[0])
    path.write_bytes(spoil(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(MalformedMeta):
        OutgoingFile(path)


def test_small_reads_give_the_same_bytes(tmp_path: Path) -> None:
    stored = received(synthetic.make_small_instances(tmp_path / "src", n=1, n_series=1)[0])
    whole = _outgoing(stored)
    got = io.BytesIO()
    with OutgoingFile(stored) as f:
        while chunk := f.read(7):
            got.write(chunk)
    assert got.getvalue() == whole


# -- a ZIP part and a disc image -------------------------------------------------------


def _stored(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """(received files with a sender, older files without) of one small study each."""
    new = synthetic.make_small_instances(tmp_path / "new", n=3, n_series=1, accession="NEW01")
    old = synthetic.make_small_instances(tmp_path / "old", n=2, n_series=1, accession="OLD01")
    return [received(p) for p in new], old


def _check_fileset(
    root: Path, manifest: dict[str, object], new: list[Path], old: list[Path]
) -> None:
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in new + old}
    with read_fileset(root / "DICOMDIR") as fileset:
        assert len(fileset) == len(by_uid)
        for instance in fileset:
            stored = by_uid[instance.SOPInstanceUID]
            copy = Path(instance.path).read_bytes()
            if stored in old:
                assert copy == stored.read_bytes()
            else:
                check_copy(copy, stored, root.parent / "check")
    files = manifest["files"]
    assert isinstance(files, list)
    for entry in files:
        data = (root / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])


def test_zip_and_disc_copies_carry_no_sender(tmp_path: Path) -> None:
    new, old = _stored(tmp_path)
    (tmp_path / "check").mkdir()
    items = items_for(new + old)

    result = build_package(items, tmp_path / "out", info=INFO)
    root = unpack(result.parts[0], tmp_path / "zip")
    manifest = json.loads((root / "MANIFEST.json").read_text("utf-8"))
    _check_fileset(root, manifest, new, old)

    iso = tmp_path / "disc.iso"
    write_disc_image(items, iso, info=INFO)
    files = extract(iso, tmp_path / "disc")
    manifest = json.loads(files["MANIFEST.json"].read_text("utf-8"))
    _check_fileset(tmp_path / "disc", manifest, new, old)
    assert b"10.1.2.3" not in iso.read_bytes()


def test_a_malformed_meta_fails_the_zip_and_the_disc(tmp_path: Path) -> None:
    new, old = _stored(tmp_path)
    items = items_for(new + old)
    new[0].write_bytes(meta_bad_element(new[0].read_bytes()))
    with pytest.raises(UnreadableInstanceError, match="malformed File Meta"):
        build_package(items, tmp_path / "out", info=INFO)
    with pytest.raises(UnreadableInstanceError, match="malformed File Meta"):
        write_disc_image(items, tmp_path / "disc.iso", info=INFO)
    assert not list((tmp_path / "out").glob("*.zip"))
    assert not (tmp_path / "disc.iso").exists()


def test_a_deflated_dataset_is_never_cut_as_group_0002(tmp_path: Path) -> None:
    """A deflated dataset is a deflate stream: bytes that happen to read as a group
    0002 element at its start are data, and go out as stored."""
    meta = (
        _element(0x0001, b"OB", b"\x00\x01")
        + _element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00")
        + _element(0x0003, b"UI", b"1.2.3.4\x00")
        + _element(0x0010, b"UI", b"1.2.840.10008.1.2.1.99")
    )
    stream = MODALITY_GROUP_0002 + b"\x9c\x01" * 40  # reads as group 0002 if walked
    path = tmp_path / "deflated.dcm"
    path.write_bytes(filemeta.PREAMBLE + meta_group(meta) + stream)
    assert _outgoing(path) == path.read_bytes()
    received(path)
    meta_out, rest = split_file(_outgoing(path))
    assert rest == stream  # only Courier's own meta is re-encoded
    assert b"COURIER" not in meta_out and b"10.1.2.3" not in meta_out
