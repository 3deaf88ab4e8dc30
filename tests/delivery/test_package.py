"""Delivery packages read back by pydicom's FileSet and dcmtk, with synthetic studies only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom import fileset as pydicom_fileset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
)

from delivery.packaging import dicomdir
from delivery.packaging.package import (
    MissingInstanceError,
    PackageInfo,
    PackageItem,
    PackageResult,
    UnreadableInstanceError,
    build_package,
    sweep_partial,
)
from delivery.packaging.parts import SeriesGroup, Sized, plan_parts
from tests import synthetic
from tests.dcmtk import have_dcmtk
from tests.peers import require_peer

REPO = Path(__file__).resolve().parents[2]
CREATED = datetime(2024, 1, 2, 10, 15, tzinfo=UTC)
INFO = PackageInfo("CR-ABCD-EFGH-K", "en", "Imaging desk, 01632 960000", CREATED)


def items_for(paths: list[Path]) -> list[PackageItem]:
    """PackageItems as the index would hold them (read from the files' headers)."""
    items = []
    for path in paths:
        h = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(
            PackageItem(
                path, h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID,
                h.SOPClassUID, h.file_meta.TransferSyntaxUID, h.Modality,
                int(h.SeriesNumber), int(h.InstanceNumber),
            )
        )  # fmt: skip
    return items


def discard(fileset: FileSet) -> None:
    """Remove the staging folder every FileSet keeps in ``TMPDIR``, now.

    pydicom (3.0) creates it on construction and leaves it to the garbage collector, which
    warns (ResourceWarning, an error here); FileSet has no public close, so this reaches
    for its ``TemporaryDirectory``. Only the tests use FileSet.
    """
    stage = getattr(fileset, "_stage", {}).get("t")
    if stage is not None:
        stage.cleanup()


@contextlib.contextmanager
def read_fileset(dicomdir: Path) -> Iterator[FileSet]:
    """pydicom's FileSet over ``dicomdir``, its staging folder removed afterwards."""
    fileset = FileSet(dicomdir)
    try:
        yield fileset
    finally:
        discard(fileset)


def unpack(part: Path, into: Path) -> Path:
    with zipfile.ZipFile(part) as zf:
        assert zf.testzip() is None
        zf.extractall(into)
    return into


def check_part(part: Path, into: Path, sources: dict[str, Path]) -> dict[str, object]:
    """Check one part on its own; return its manifest. ``sources``: SOP UID -> stored file."""
    root = unpack(part, into)
    manifest = json.loads((root / "MANIFEST.json").read_text("utf-8"))
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {
        "MANIFEST.json"
    }
    assert set(listed) == on_disk
    for name, entry in listed.items():
        data = (root / name).read_bytes()
        assert len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    with read_fileset(root / "DICOMDIR") as fileset:
        assert len(fileset) == manifest["counts"]["instances"]
        for instance in fileset:
            stored = sources[instance.SOPInstanceUID]
            assert Path(instance.path).read_bytes() == stored.read_bytes()
    previews = [s["preview"] for s in manifest["series"] if s["preview"]]
    assert all((root / p).read_bytes()[:3] == b"\xff\xd8\xff" for p in previews)
    return manifest


def sources_of(items: list[PackageItem]) -> dict[str, Path]:
    return {i.sop_instance_uid: i.path for i in items}


# -- whole packages read back -------------------------------------------------------------


def _ct(d: Path) -> list[Path]:
    return synthetic.make_ct_series(d, n_slices=9, rows=64, cols=64)


def _small(d: Path) -> list[Path]:
    return synthetic.make_small_instances(d, n=24, n_series=3)


def _syntaxes(d: Path) -> list[Path]:
    return [p for ps in synthetic.make_transfer_syntax_studies(d).values() for p in ps]


@pytest.mark.parametrize(
    ("make", "studies", "series"),
    [(_ct, 1, 1), (_small, 1, 3), (_syntaxes, len(synthetic.TRANSFER_SYNTAXES), 10)],
    ids=["ct", "small-3-series", "every-transfer-syntax"],
)
def test_package_reads_back_whole(make, studies: int, series: int, tmp_path: Path) -> None:
    items = items_for(make(tmp_path / "src"))
    calls: list[tuple[int, int]] = []
    result = build_package(items, tmp_path / "out", info=INFO, progress=lambda *a: calls.append(a))
    assert result.parts == (tmp_path / "out" / "CR-ABCD-EFGH-K.zip",)
    assert (result.studies, result.series, result.instances) == (studies, series, len(items))
    data = result.parts[0].read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.part_sha256[0]
    assert len(data) == result.part_bytes[0] == result.total_bytes
    manifest = check_part(result.parts[0], tmp_path / "x", sources_of(items))
    assert manifest["counts"] == {"studies": studies, "series": series, "instances": len(items)}
    assert (manifest["part"], manifest["parts"]) == (1, 1)
    # A thumbnail for every series, compressed transfer syntaxes included.
    assert all(s["preview"] for s in manifest["series"]), manifest["notes"]
    assert calls[-1][0] == calls[-1][1] == sum(i.path.stat().st_size for i in items)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CR-ABCD-EFGH-K.zip"]


def test_dcmtk_reads_the_dicomdir(tmp_path: Path) -> None:
    require_peer("dcmtk", have_dcmtk() and shutil.which("dcmmkdir") is not None)
    items = items_for(_syntaxes(tmp_path / "src"))
    result = build_package(items, tmp_path / "out", info=INFO)
    root = unpack(result.parts[0], tmp_path / "x")
    dump = subprocess.run(["dcmdump", "-q", "DICOMDIR"], cwd=root, capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr
    assert "ReferencedFileID" in dump.stdout
    # dcmmkdir +U reads the DICOMDIR, then checks each referenced file (PS3.10 file IDs,
    # consistency); -w writes nothing. dcmtk 3.6.7 cannot parse HTJ2K files at all.
    with read_fileset(root / "DICOMDIR") as fileset:
        known = [
            Path(i.path).relative_to(root).as_posix()
            for i in fileset
            if synthetic.dcmtk_knows(i.TransferSyntaxUID)
        ]
    mkdir = subprocess.run(
        ["dcmmkdir", "-w", "-Nxc", "+U", "+D", "DICOMDIR", *known],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert mkdir.returncode == 0 and "E:" not in mkdir.stderr, mkdir.stderr


def test_dciodvfy_accepts_the_dicomdir(tmp_path: Path) -> None:
    require_peer("dicom3tools (dciodvfy)", shutil.which("dciodvfy") is not None)
    result = build_package(items_for(_small(tmp_path / "src")), tmp_path / "out", info=INFO)
    root = unpack(result.parts[0], tmp_path / "x")
    run = subprocess.run(["dciodvfy", "DICOMDIR"], cwd=root, capture_output=True, text=True)
    assert "Error" not in run.stderr, run.stderr


# -- the DICOMDIR against pydicom's FileSet ----------------------------------------------


_STUDY_KEYWORDS = [
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
]  # fmt: skip


def _document(path: Path, like: Path, sop_class: str, series_uid: str, number: int) -> Path:
    """A small non-image instance (Basic Text SR or encapsulated PDF) in ``like``'s study."""
    ref = pydicom.dcmread(like, stop_before_pixels=True)
    ds = Dataset()
    for keyword in _STUDY_KEYWORDS:
        setattr(ds, keyword, ref.get(keyword))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = synthetic.synthetic_uid("document", series_uid, number)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 90
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = "20240102", "101600"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [title]
    if sop_class == BasicTextSRStorage:
        ds.Modality = "SR"
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
        text = Dataset()
        text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
        text.ConceptNameCodeSequence = [title]
        text.TextValue = "Synthetic findings."
        ds.ContentSequence = [text]
    else:
        ds.Modality = "DOC"
        ds.DocumentTitle = "SYNTHETIC REPORT"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.BurnedInAnnotation = "NO"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _mixed(d: Path) -> list[Path]:
    """3 patients, several studies and series, every transfer syntax, an SR and a PDF."""
    ct = _ct(d / "ct")
    small = _small(d / "small")
    report = synthetic.synthetic_uid("report-series")
    return [
        *ct,
        *small,
        *_syntaxes(d / "ts"),
        _document(d / "doc" / "sr.dcm", ct[0], BasicTextSRStorage, report, 1),
        _document(d / "doc" / "pdf.dcm", ct[0], EncapsulatedPDFStorage, report, 2),
        # An SR among images: siblings of any type share one index (IM..., then SR000008).
        _document(d / "doc" / "sr2.dcm", small[0], BasicTextSRStorage,
                  pydicom.dcmread(small[0]).SeriesInstanceUID, 99),
    ]  # fmt: skip


def _fileset_reference(headers: list[Dataset], uid: str, into: Path) -> dict[str, str]:
    """What pydicom's FileSet writes for ``headers`` into ``into``; returns its file IDs."""
    fileset = FileSet()
    try:
        fileset.UID = uid  # the one random part of a DICOMDIR, made equal
        for header in headers:
            fileset.add(header)
        fileset.write(into)
        return {i.SOPInstanceUID: Path(i.path).relative_to(into).as_posix() for i in fileset}
    finally:
        discard(fileset)


def _records(data: bytes) -> list[tuple[str, object]]:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    return [(r.DirectoryRecordType, r.get("ReferencedFileID")) for r in ds.DirectoryRecordSequence]


def test_dicomdir_is_the_one_fileset_writes(tmp_path: Path) -> None:
    paths = _mixed(tmp_path / "src")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    del headers[3].StudyID  # a placeholder goes into the record (same for both writers)
    ours = dicomdir.build_dicomdir(headers)
    uid = pydicom.dcmread(pydicom.filebase.DicomBytesIO(ours.data)).file_meta
    reference_ids = _fileset_reference(headers, uid.MediaStorageSOPInstanceUID, tmp_path / "ref")
    reference = (tmp_path / "ref" / "DICOMDIR").read_bytes()

    types = {t for t, _ in _records(ours.data)}
    assert {"PATIENT", "STUDY", "SERIES", "IMAGE", "SR DOCUMENT", "ENCAP DOC"} <= types
    assert _records(ours.data) == _records(reference)  # same records, types and file IDs
    assert ours.file_ids == reference_ids
    assert ours.file_ids[headers[-1].SOPInstanceUID] == "PT000001/ST000000/SE000000/SR000008"
    assert any("StudyID" in n for n in ours.notes)
    assert ours.data == reference  # byte for byte, offsets included

    # FileSet reads ours back over the reference's files: every instance, at its file ID.
    (tmp_path / "ref" / "DICOMDIR").write_bytes(ours.data)
    with read_fileset(tmp_path / "ref" / "DICOMDIR") as fileset:
        read = {i.SOPInstanceUID: Path(i.path).relative_to(tmp_path / "ref").as_posix()
                for i in fileset}  # fmt: skip
        syntaxes = {i.SOPInstanceUID: i.TransferSyntaxUID for i in fileset}
    assert syntaxes == {h.SOPInstanceUID: h.file_meta.TransferSyntaxUID for h in headers}
    assert read == ours.file_ids and len(read) == len(paths)


def test_record_type_rules_match_pydicom() -> None:
    # Copied from pydicom's private tables (fileset.py); a pydicom upgrade that changes
    # them should change ours too, or file IDs would drift from FileSet's.
    private = pydicom_fileset._PREFIXES
    assert {k: v for k, v in private.items() if k != "PRIVATE"} == dicomdir._PREFIXES
    assert dicomdir._SINGLE_LEVEL_SOP_CLASSES == pydicom_fileset._SINGLE_LEVEL_SOP_CLASSES
    assert dicomdir._FOUR_LEVEL_SOP_CLASSES == pydicom_fileset._FOUR_LEVEL_SOP_CLASSES
    cases = [{"Modality": "RTRAD"}, {"Modality": "PLAN"}, {"RTPlanLabel": "P"},
             {"EncapsulatedDocument": b"%PDF"}, {"SOPClassUID": BasicTextSRStorage},
             {"SOPClassUID": CTImageStorage}, {}]  # fmt: skip
    for attributes in cases:
        ds = Dataset()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        assert dicomdir._leaf_record_type(ds) == pydicom_fileset._four_level_record_type(ds)


def _header_only(patient: int, study: int, series: int, number: int) -> Dataset:
    """A CT header as read without pixel data; no file behind it."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    # One dotted part: synthetic_uid joins its parts without a separator.
    ds.SOPInstanceUID = synthetic.synthetic_uid(f"scale.{patient}.{study}.{series}.{number}")
    ds.PatientID = f"SCALE{patient}"
    ds.PatientName = synthetic.PATIENT_NAME
    ds.StudyInstanceUID = synthetic.synthetic_uid(f"scale.{patient}.{study}")
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101500", str(study + 1)
    ds.SeriesInstanceUID = synthetic.synthetic_uid(f"scale.{patient}.{study}.{series}")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series + 1, number + 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_dicomdir_of_5000_instances(tmp_path: Path) -> None:
    # Linear, not quadratic: FileSet needed minutes for this. No timing assertion: it
    # completes (under pytest-timeout) and reads back.
    shape = (2, 2, 5, 250)  # patients, studies each, series each, instances each
    headers = [
        _header_only(p, s, r, n)
        for p in range(shape[0]) for s in range(shape[1])
        for r in range(shape[2]) for n in range(shape[3])
    ]  # fmt: skip
    built = dicomdir.build_dicomdir(headers)
    assert len(built.file_ids) == 5000 and built.notes == []
    assert built.file_ids[headers[-1].SOPInstanceUID] == "PT000001/ST000001/SE000004/IM000249"
    root = tmp_path / "fs"
    for file_id in built.file_ids.values():  # FileSet checks that each referenced file exists
        (root / file_id).parent.mkdir(parents=True, exist_ok=True)
        (root / file_id).touch()
    (root / "DICOMDIR").write_bytes(built.data)
    with read_fileset(root / "DICOMDIR") as fileset:
        read = {i.SOPInstanceUID: Path(i.path).relative_to(root).as_posix() for i in fileset}
    assert read == built.file_ids
    assert list(read) == [h.SOPInstanceUID for h in headers]  # in order, depth first


def test_dicomdir_refuses_an_instance_it_cannot_describe() -> None:
    header = _header_only(0, 0, 0, 0)
    del header.SeriesInstanceUID
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        dicomdir.build_dicomdir([header])
    with pytest.raises(ValueError, match="listed twice"):
        dicomdir.build_dicomdir([_header_only(0, 0, 0, 0), _header_only(0, 0, 0, 0)])


# -- README languages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "direction", "script"),
    [
        ("en", "ltr", "Your medical images"),
        ("ar", "rtl", "صورك الطبية"),
        ("zh-Hans", "ltr", "您的医学影像"),
    ],
)  # fmt: skip
def test_readme_in_the_request_language(
    language: str, direction: str, script: str, tmp_path: Path
) -> None:
    items = items_for(_ct(tmp_path / "src"))
    info = PackageInfo("CR-ABCD-EFGH-K", language, "Imaging desk", CREATED, CREATED)
    result = build_package(items, tmp_path / "out", info=info)
    english = build_package(items, tmp_path / "en", info=INFO)
    with zipfile.ZipFile(result.parts[0]) as zf, zipfile.ZipFile(english.parts[0]) as en:
        html = zf.read("README.html").decode()
        text = zf.read("README.txt").decode()
        english_lines = [ln for ln in en.read("README.txt").decode().splitlines() if " " in ln]
    assert f'dir="{direction}"' in html and f'lang="{language}"' in html
    assert script in html and script in text
    assert "CR-ABCD-EFGH-K" in text and "Imaging desk" in text
    for viewer in ("Weasis", "Horos", "MicroDicom", "RadiAnt", "OsiriX Lite"):
        assert viewer in text
    if language != "en":  # every sentence translated: no English line is left over
        leftover = [ln for ln in english_lines if ln in text and "http" not in ln]
        assert leftover == []


# -- failures -----------------------------------------------------------------------------


def test_missing_instance_fails_and_leaves_nothing(tmp_path: Path) -> None:
    items = items_for(_small(tmp_path / "src"))
    items[5].path.unlink()
    with pytest.raises(MissingInstanceError, match=items[5].sop_instance_uid):
        build_package(items, tmp_path / "out", info=INFO)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_file_that_is_another_instance_fails(tmp_path: Path) -> None:
    items = items_for(_small(tmp_path / "src"))
    shutil.copyfile(items[1].path, items[2].path)  # index and store disagree
    with pytest.raises(UnreadableInstanceError, match="another instance"):
        build_package(items, tmp_path / "out", info=INFO)
    assert list((tmp_path / "out").iterdir()) == []


def test_undecodable_series_has_no_preview_but_a_package(tmp_path: Path) -> None:
    studies = synthetic.make_transfer_syntax_studies(
        tmp_path / "src", syntaxes=[JPEG2000Lossless, synthetic.ExplicitVRLittleEndian]
    )
    broken = studies[JPEG2000Lossless]
    for path in broken:  # same length, garbage codestream: the header still reads
        ds = pydicom.dcmread(path)
        frame = bytearray(ds.PixelData)
        frame[40:-40] = bytes(len(frame) - 80)
        ds.PixelData = bytes(frame)
        ds.save_as(path, enforce_file_format=True)
    items = items_for([p for ps in studies.values() for p in ps])
    result = build_package(items, tmp_path / "out", info=INFO)
    manifest = check_part(result.parts[0], tmp_path / "x", sources_of(items))
    by_series = {s["series_uid"]: s for s in manifest["series"]}
    assert by_series[items[0].series_uid]["preview"] is None
    assert "could not be decoded" in by_series[items[0].series_uid]["preview_note"]
    assert by_series[items[-1].series_uid]["preview"]
    assert any("no preview" in n for n in result.notes)


def test_missing_record_attributes_are_invented_in_the_dicomdir_only(tmp_path: Path) -> None:
    paths = _ct(tmp_path / "src")
    ds = pydicom.dcmread(paths[0])
    del ds.StudyID
    ds.save_as(paths[0], enforce_file_format=True)
    items = items_for(paths)
    result = build_package(items, tmp_path / "out", info=INFO)
    check_part(result.parts[0], tmp_path / "x", sources_of(items))  # still byte-identical
    assert any("StudyID" in n for n in result.notes)


# -- splitting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "parts", "cut_series"),
    [(None, 1, False), (10_000_000, 1, False), (450_000, 2, False), (160_000, 6, True)],
)
def test_split_into_self_contained_parts(
    limit: int | None, parts: int, cut_series: bool, tmp_path: Path
) -> None:
    # 3 series of 16 instances of ~10 KB (~160 KB a series).
    items = items_for(synthetic.make_small_instances(tmp_path / "src", n=48, n_series=3))
    result: PackageResult = build_package(items, tmp_path / "out", info=INFO, max_part_bytes=limit)
    assert len(result.parts) == parts
    if parts > 1:
        assert result.parts[0].name == f"CR-ABCD-EFGH-K-part1-of-{parts}.zip"
    seen: list[str] = []
    series_parts: dict[str, int] = {}
    for k, part in enumerate(result.parts, start=1):
        assert limit is None or part.stat().st_size <= limit
        assert hashlib.sha256(part.read_bytes()).hexdigest() == result.part_sha256[k - 1]
        manifest = check_part(part, tmp_path / f"x{k}", sources_of(items))
        assert (manifest["part"], manifest["parts"]) == (k, parts)
        assert manifest["package_counts"]["instances"] == len(items)
        with read_fileset(tmp_path / f"x{k}" / "DICOMDIR") as fileset:
            seen += [i.SOPInstanceUID for i in fileset]
        for s in manifest["series"]:
            series_parts[s["series_uid"]] = series_parts.get(s["series_uid"], 0) + 1
        with zipfile.ZipFile(part) as zf:
            assert f"part {k} of {parts}" in zf.read("README.txt").decode() or parts == 1
    assert sorted(seen) == sorted(i.sop_instance_uid for i in items)  # each exactly once
    assert any(n > 1 for n in series_parts.values()) == cut_series


# Two series of one 40 KB instance: 2 x (40_000 + 1024 + 2048) = 86_144 bytes, plus the
# part's own 64 KiB; the REPORT/ files of the first part cost their size + 1024 each.
_TWO = 86_144 + 64 * 1024
_LEFT = 100_000 - 86_144 - 1024  # a report this large fills the first part to exactly 100_000


@pytest.mark.parametrize(
    ("sizes", "limit", "first", "expected"),
    [
        ([[10, 10], [10]], None, (), [["a0", "a1", "b0"]]),
        ([[10, 10], [10]], 10**9, (), [["a0", "a1", "b0"]]),
        # series b does not fit after a, but fits a part: a new part, not a cut
        ([[40_000], [40_000]], 70_000 + 64 * 1024, (), [["a0"], ["b0"]]),
        # one series larger than a part: cut between its instances
        ([[30_000] * 4], 70_000 + 64 * 1024, (), [["a0", "a1"], ["a2", "a3"]]),
        # an instance larger than the limit still gets a part of its own
        ([[10**6]], 100, (), [["a0"]]),
        # the first part's REPORT/ files count: at the limit exactly, one part; a byte
        # more and series b moves to a second part
        ([[40_000], [40_000]], 100_000 + 64 * 1024, (_LEFT,), [["a0", "b0"]]),
        ([[40_000], [40_000]], 100_000 + 64 * 1024, (_LEFT + 1,), [["a0"], ["b0"]]),
        ([[40_000], [40_000]], 100_000 + 64 * 1024, (_LEFT - 1024, 0), [["a0", "b0"]]),
        ([[40_000], [40_000]], 100_000 + 64 * 1024, (_LEFT - 1024, 1), [["a0"], ["b0"]]),
        ([[40_000], [40_000]], _TWO, (), [["a0", "b0"]]),
        # only the first part carries them: the others are planned as before
        ([[40_000], [40_000], [40_000]], 50_000 + 64 * 1024, (20_000,), [["a0"], ["b0"], ["c0"]]),
        # reports that leave less room than an instance: the first part still holds one
        # (over the limit, as an instance larger than a part is), the series goes on
        ([[30_000] * 2], 70_000 + 64 * 1024, (60_000,), [["a0"], ["a1"]]),
    ],
)  # fmt: skip
def test_plan_parts(
    sizes: list[list[int]], limit: int | None, first: tuple[int, ...], expected: list[list[str]]
) -> None:
    groups = [
        SeriesGroup(chr(97 + g), [Sized(f"{chr(97 + g)}{i}", s) for i, s in enumerate(sz)], 0)
        for g, sz in enumerate(sizes)
    ]
    planned = plan_parts(groups, limit, first_part_files=first)
    assert [[s.item for s in part] for part in planned] == expected


@pytest.mark.parametrize("report_kb", [0, 100, 200, 300])
def test_the_reports_count_against_the_first_parts_limit(tmp_path: Path, report_kb: int) -> None:
    """REPORT/ files go into the first part: with them counted, no part exceeds the
    limit however large they are next to the instances (3 series of ~160 KB)."""
    items = items_for(synthetic.make_small_instances(tmp_path / "src", n=48, n_series=3))
    report = os.urandom(report_kb * 1024)  # incompressible, as a PDF is
    info = replace(INFO, reports=(("REPORT/RPT001.PDF", report),) if report_kb else ())
    limit = 450_000
    result = build_package(items, tmp_path / "out", info=info, max_part_bytes=limit)
    for part in result.parts:
        assert part.stat().st_size <= limit, (part.name, part.stat().st_size)
    with zipfile.ZipFile(result.parts[0]) as zf:
        assert ("REPORT/RPT001.PDF" in zf.namelist()) == bool(report_kb)
    seen: list[str] = []
    for k, part in enumerate(result.parts):
        check_part(part, tmp_path / f"x{k}", sources_of(items))
        with read_fileset(tmp_path / f"x{k}" / "DICOMDIR") as fileset:
            seen += [i.SOPInstanceUID for i in fileset]
    assert sorted(seen) == sorted(i.sop_instance_uid for i in items)  # each exactly once


# -- atomicity and memory (subprocesses) --------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from delivery.packaging.package import PackageInfo, build_package
    from tests.delivery.test_package import items_for
    src, out, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "slow"
    items = items_for(sorted(src.glob("*.dcm")))
    def progress(done, total):
        print("progress", done, total, flush=True)
        if slow:
            time.sleep(0.05)
    info = PackageInfo("CR-ABCD-EFGH-K", "en", "desk", datetime.now(timezone.utc))
    build_package(items, out, info=info, progress=progress)
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) high-water mark across exec.
    status = Path("/proc/self/status").read_text().splitlines()
    print("hwm_kb", next(ln.split()[1] for ln in status if ln.startswith("VmHWM:")), flush=True)
    """
)


def _child(tmp_path: Path, src: Path, out: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(src), str(out), mode],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def test_kill_9_mid_build_leaves_no_final_zip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    synthetic.make_ct_series(src, n_slices=60, rows=256, cols=256)
    out = tmp_path / "out"
    child = _child(tmp_path, src, out, "slow")
    assert child.stdout is not None
    for _ in range(10):  # a few instances in: the part is half written
        assert child.stdout.readline().startswith("progress")
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    names = [p.name for p in out.iterdir()]
    assert not any(n.endswith(".zip") for n in names), names
    assert any(n.startswith(".") and n.endswith(".partial") for n in names), names
    assert sweep_partial(out) >= 1
    assert list(out.iterdir()) == []
    assert sweep_partial(out) == 0


def test_sweep_partial_keeps_finished_packages(tmp_path: Path) -> None:
    result = build_package(items_for(_ct(tmp_path / "src")), tmp_path / "out", info=INFO)
    (tmp_path / "out" / ".CR-X.zip.abc.partial").write_bytes(b"half")
    (tmp_path / "out" / ".CR-X.zip.def.dicomdir.partial").mkdir()
    assert sweep_partial(tmp_path / "out") == 2
    assert list((tmp_path / "out").iterdir()) == [result.parts[0]]


def _peak_rss_kb(tmp_path: Path, n_slices: int, name: str) -> int:
    src = tmp_path / name
    synthetic.make_ct_series(src, n_slices=n_slices)
    child = _child(tmp_path, src, tmp_path / f"out-{name}", "fast")
    stdout, _ = child.communicate(timeout=300)
    assert child.returncode == 0
    shutil.rmtree(src)
    return int(stdout.strip().splitlines()[-1].split()[1])


def test_peak_memory_stays_flat(tmp_path: Path) -> None:
    small = _peak_rss_kb(tmp_path, 10, "small")  # ~5 MB of instances
    big = _peak_rss_kb(tmp_path, 240, "big")  # ~126 MB of instances
    # Generous bounds: the interpreter and libraries, plus directory records; never the data.
    assert big < 200 * 1024, big
    assert big - small < 48 * 1024, (small, big)


def test_htj2k_is_previewed_even_though_dcmtk_cannot_read_it(tmp_path: Path) -> None:
    studies = synthetic.make_transfer_syntax_studies(tmp_path / "src", syntaxes=[HTJ2KLossless])
    items = items_for(studies[HTJ2KLossless])
    result = build_package(items, tmp_path / "out", info=INFO)
    manifest = check_part(result.parts[0], tmp_path / "x", sources_of(items))
    assert manifest["series"][0]["preview"] == "PREVIEW/001-CT.jpg"
