"""WADO-RS frames as stored: every transfer syntax the tests generate, and multi-frame
objects native and compressed, read one frame at a time from the file (the frame
bytes equal what pydicom finds in the whole pixel data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from portal.dicomweb_wado import _FRAME_TYPES, FrameSource, _Missing, frame_source
from tests import synthetic


def _frames(source: FrameSource, numbers: list[int]) -> list[bytes]:
    with open(source.path, "rb") as fh:
        return [source.read(fh, n) for n in numbers]


def _expected(path: Path, count: int) -> list[bytes]:
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]


@pytest.fixture(scope="module")
def syntaxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return synthetic.make_transfer_syntax_studies(tmp_path_factory.mktemp("ts"), n_instances=1)


@pytest.mark.parametrize("ts", synthetic.TRANSFER_SYNTAXES)
def test_every_generated_transfer_syntax(syntaxes: dict[str, list[Path]], ts: str) -> None:
    path = syntaxes[ts][0]
    source = frame_source(path)
    assert source.count == 1
    assert _frames(source, [1]) == _expected(path, 1)
    if pydicom.uid.UID(ts).is_encapsulated:
        assert source.encapsulated and source.transfer_syntax == ts
        assert source.media == _FRAME_TYPES.get(ts, "application/octet-stream")
    else:
        assert source.media == "application/octet-stream"
        big = ts == ExplicitVRBigEndian
        assert source.transfer_syntax == (ExplicitVRBigEndian if big else ExplicitVRLittleEndian)


def _multiframe(path: Path, frames: int, ts: str) -> Path:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, size=(frames, 32, 48), dtype=np.uint8)
    ds = Dataset()
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "SYNTHETIC^CINE", "SYNCINE1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 32, 48, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ts != ExplicitVRLittleEndian:
        ds.compress(ts)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
def test_multiframe_frames_one_at_a_time(tmp_path: Path, ts: str) -> None:
    path = _multiframe(tmp_path / "cine.dcm", 5, ts)
    source = frame_source(path)
    assert source.count == 5 and source.whole is None  # nothing read but the header
    expected = _expected(path, 5)
    assert _frames(source, [1, 3, 5]) == [expected[0], expected[2], expected[4]]
    assert _frames(source, [5, 1]) == [expected[4], expected[0]]


def test_no_pixel_data_and_short_pixel_data(tmp_path: Path) -> None:
    path = _multiframe(tmp_path / "cine.dcm", 3, ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "none.dcm")
    with pytest.raises(_Missing):
        frame_source(tmp_path / "none.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 4  # declares more than it holds
    ds.save_as(tmp_path / "short.dcm")
    source = frame_source(tmp_path / "short.dcm")
    with pytest.raises(_Missing):
        _frames(source, [4])
