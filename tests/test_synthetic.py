"""The synthetic data generator writes valid, deterministic Part-10 files."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.dcmtk import have_dcmtk
from tests.peers import require_peer
from tests.synthetic import (
    PATIENT_NAME,
    TRANSFER_SYNTAXES,
    dataset_bytes,
    dcmtk_knows,
    deep_sequence_dataset,
    make_ct_series,
    make_small_instances,
    make_transfer_syntax_studies,
    storescu_args_for,
    truncated_copy,
    with_patient_id,
)


@pytest.fixture(scope="module")
def ts_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return make_transfer_syntax_studies(tmp_path_factory.mktemp("ts"))


def test_ct_series_is_one_series_of_ordered_slices(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n_slices=5, rows=64, cols=48)

    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 5]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.Modality == "CT"
    assert first.PatientName == PATIENT_NAME
    assert (first.PatientID, first.AccessionNumber) == ("SYN0001", "ACC0001")
    assert first.pixel_array.shape == (64, 48)
    assert first.pixel_array.dtype == np.uint16
    assert int(first.pixel_array.max()) <= 4095  # 12 bits stored
    assert [float(ds.ImagePositionPatient[2]) for ds in datasets] == sorted(
        float(ds.ImagePositionPatient[2]) for ds in datasets
    )


def test_generation_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_ct_series(tmp_path / "a", n_slices=2, rows=32, cols=32, seed=7)
    b = make_ct_series(tmp_path / "b", n_slices=2, rows=32, cols=32, seed=7)
    c = make_ct_series(tmp_path / "c", n_slices=2, rows=32, cols=32, seed=8)

    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert pydicom.dcmread(a[0]).StudyInstanceUID != pydicom.dcmread(c[0]).StudyInstanceUID


def test_given_study_uid_is_used(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n_slices=1, rows=16, cols=16, study_uid="1.2.3.4")
    assert pydicom.dcmread(path).StudyInstanceUID == "1.2.3.4"


def test_small_instances_are_about_10_kb_in_a_few_series(tmp_path: Path) -> None:
    paths = make_small_instances(tmp_path, n=40)

    assert len(paths) == 40
    assert all(8_000 <= p.stat().st_size <= 12_000 for p in paths)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 4
    assert len({ds.SOPInstanceUID for ds in datasets}) == 40


def test_ct_and_small_sets_do_not_share_uids(tmp_path: Path) -> None:
    (ct,) = make_ct_series(tmp_path / "ct", n_slices=1, rows=16, cols=16)
    (small,) = make_small_instances(tmp_path / "small", n=1)
    assert pydicom.dcmread(ct).StudyInstanceUID != pydicom.dcmread(small).StudyInstanceUID


def test_one_study_per_transfer_syntax(ts_studies: dict[str, list[Path]]) -> None:
    assert list(ts_studies) == list(TRANSFER_SYNTAXES)
    study_uids = set()
    for ts, paths in ts_studies.items():
        datasets = [pydicom.dcmread(p) for p in paths]
        assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {ts}
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        study_uids.add(datasets[0].StudyInstanceUID)
    assert len(study_uids) == len(TRANSFER_SYNTAXES)


@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES, ids=lambda ts: pydicom.uid.UID(ts).keyword)
def test_pixels_decode_losslessly(ts_studies: dict[str, list[Path]], ts: str) -> None:
    reference = [pydicom.dcmread(p).pixel_array for p in ts_studies[ExplicitVRLittleEndian]]
    decoded = [pydicom.dcmread(p).pixel_array for p in ts_studies[ts]]

    if ts == JPEGBaseline8Bit:  # lossy, 8-bit windowed rendering: check it is an image
        assert all(a.dtype == np.uint8 and a.shape == (64, 64) for a in decoded)
        assert all(int(a.max()) > 200 and int(a.min()) < 50 for a in decoded)
    else:
        for got, want in zip(decoded, reference, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES, ids=lambda ts: pydicom.uid.UID(ts).keyword)
def test_dcmdump_reads_every_study(ts_studies: dict[str, list[Path]], ts: str) -> None:
    require_peer("dcmtk", have_dcmtk())
    for path in ts_studies[ts]:
        out = subprocess.run(
            ["dcmdump", "-q", "+P", "0002,0010", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "(0002,0010)" in out.stdout


def test_storescu_args_cover_every_syntax_dcmtk_knows() -> None:
    for ts in TRANSFER_SYNTAXES:
        if dcmtk_knows(ts):
            assert storescu_args_for(ts)
        else:
            with pytest.raises(ValueError, match="cannot send"):
                storescu_args_for(ts)
    assert not dcmtk_knows(HTJ2KLossless)


def test_subset_of_syntaxes_and_unknown_syntax(tmp_path: Path) -> None:
    studies = make_transfer_syntax_studies(tmp_path, syntaxes=[RLELossless], n_instances=1)
    assert list(studies) == [RLELossless]
    with pytest.raises(ValueError, match=r"1\.2\.3"):
        make_transfer_syntax_studies(tmp_path, syntaxes=["1.2.3"])


def test_truncated_copy(tmp_path: Path) -> None:
    (path,) = make_small_instances(tmp_path / "in", n=1)
    head = truncated_copy(path, tmp_path / "head.dcm", 500)
    short = truncated_copy(path, tmp_path / "short.dcm", -10)

    assert head.read_bytes() == path.read_bytes()[:500]
    assert short.read_bytes() == path.read_bytes()[:-10]


def test_with_patient_id_keeps_uids_and_syntax(
    ts_studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    for ts in (ExplicitVRLittleEndian, RLELossless):
        original = ts_studies[ts][0]
        changed = with_patient_id(original, tmp_path / f"{ts}.dcm", "OTHER")

        before, after = pydicom.dcmread(original), pydicom.dcmread(changed)
        assert after.PatientID == "OTHER"
        assert after.SOPInstanceUID == before.SOPInstanceUID
        assert after.file_meta.TransferSyntaxUID == ts
        assert after.PixelData == before.PixelData
        assert changed.read_bytes() != original.read_bytes()


def test_dataset_bytes_skips_the_file_meta(tmp_path: Path) -> None:
    (path,) = make_small_instances(tmp_path, n=1)
    raw = path.read_bytes()
    data = dataset_bytes(path)

    assert raw.endswith(data)
    assert data.startswith(b"\x08\x00")  # group 0008 comes first in the dataset


def _depth(ds: pydicom.Dataset) -> int:
    depth = 0
    while "ContentSequence" in ds:
        ds = ds.ContentSequence[0]
        depth += 1
    return depth


def test_deep_sequence_dataset_reads_back_when_shallow() -> None:
    ds = pydicom.dcmread(BytesIO(deep_sequence_dataset(50)))
    assert _depth(ds) == 50
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientName == PATIENT_NAME


def test_deep_sequence_dataset_is_as_deep_as_asked(tmp_path: Path) -> None:
    data = deep_sequence_dataset(10_000, sop_instance_uid="1.2.3.4.5")
    (tmp_path / "deep.dcm").write_bytes(data)

    meta = read_file_meta_info(tmp_path / "deep.dcm")
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert data.count(b"\x40\x00\x30\xa7SQ") == 10_000
    assert data.count(b"\xfe\xff\xdd\xe0") == 10_000  # one sequence delimiter per level
