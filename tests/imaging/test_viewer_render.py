"""The viewer's rendering table: every transfer syntax the tests generate, MONOCHROME1,
RGB, palette colour, multi-frame ultrasound, enhanced CT (functional groups), a corrupt
instance; window overrides and presets; what :func:`imaging.describe` reads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from imaging import Renderer, RenderFailed, describe, presets
from imaging.render import read_header
from tests import synthetic

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _png(renderer: Renderer, path: Path, **kw: object) -> np.ndarray:
    data = renderer.render(path, max_side=256, fmt="png", **kw)  # type: ignore[arg-type]
    return np.asarray(Image.open(io.BytesIO(data)))


def _save(ds: Dataset, sop_class: str, path: Path) -> Path:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(rows: int, cols: int, samples: int, bits: int, photometric: str) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    return ds


@pytest.fixture(scope="module")
def renderer() -> object:
    with Renderer() as r:
        yield r


@pytest.fixture(scope="module")
def syntaxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = synthetic.make_transfer_syntax_studies(
        tmp_path_factory.mktemp("ts"), n_instances=1, rows=64, cols=64
    )
    return {ts: paths[0] for ts, paths in out.items()}


@pytest.mark.parametrize("ts", synthetic.TRANSFER_SYNTAXES)
def test_every_generated_transfer_syntax_renders(
    renderer: Renderer, syntaxes: dict[str, Path], ts: str
) -> None:
    picture = _png(renderer, syntaxes[ts])
    assert picture.shape == (64, 64) and picture.std() > 5
    if ts != JPEGBaseline8Bit:  # lossless: the same picture as the uncompressed file
        reference = _png(renderer, syntaxes[ExplicitVRLittleEndian])
        assert np.array_equal(picture, reference)


def test_monochrome1_is_inverted(renderer: Renderer, tmp_path: Path) -> None:
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=64, cols=64)[0]
    ds = pydicom.dcmread(ct)
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = tmp_path / "mono1.dcm"
    ds.save_as(mono1, enforce_file_format=True)
    normal, inverted = _png(renderer, ct), _png(renderer, mono1)
    assert np.abs(normal.astype(int) + inverted.astype(int) - 255).max() <= 1


def test_rgb_keeps_its_colours(renderer: Renderer, tmp_path: Path) -> None:
    ds = _image(32, 32, 3, 8, "RGB")
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    ds.PixelData = pixels.tobytes()
    picture = _png(renderer, _save(ds, SECONDARY_CAPTURE, tmp_path / "rgb.dcm"))
    assert picture.shape == (32, 32, 3)
    assert tuple(picture[16, 4]) == (255, 0, 0) and tuple(picture[16, 28]) == (0, 0, 255)
    assert describe(read_header(tmp_path / "rgb.dcm")).colour


def test_palette_colour_goes_through_its_lut(renderer: Renderer, tmp_path: Path) -> None:
    ds = _image(32, 32, 1, 8, "PALETTE COLOR")
    indices = np.zeros((32, 32), np.uint8)
    indices[:, 16:] = 1
    ds.PixelData = indices.tobytes()
    for colour, values in (("Red", (65535, 0)), ("Green", (0, 65535)), ("Blue", (0, 0))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [2, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(values, "<u2").tobytes())
    path = _save(ds, SECONDARY_CAPTURE, tmp_path / "palette.dcm")
    picture = _png(renderer, path)
    assert tuple(picture[16, 4]) == (255, 0, 0) and tuple(picture[16, 28]) == (0, 255, 0)
    info = describe(read_header(path))
    assert info.colour and presets(info.modality, info.windows, info.colour) == []


def test_multiframe_ultrasound_every_frame(renderer: Renderer, tmp_path: Path) -> None:
    ds = _image(24, 24, 3, 8, "RGB")
    ds.NumberOfFrames = 3
    ds.Modality = "US"
    frames = np.zeros((3, 24, 24, 3), np.uint8)
    for i in range(3):
        frames[i, :, :, i] = 200  # frame 0 red, 1 green, 2 blue
    ds.PixelData = frames.tobytes()
    path = _save(ds, UltrasoundMultiFrameImageStorage, tmp_path / "us.dcm")
    info = describe(read_header(path))
    assert info.kind == "image" and info.frames == 3
    for i in range(3):
        picture = _png(renderer, path, frame=i)
        assert int(np.argmax(picture[12, 12])) == i and picture[12, 12].max() >= 199
    with pytest.raises(RenderFailed, match="frame 3 does not exist"):
        renderer.render(path, frame=3)


def _enhanced_ct(path: Path) -> Path:
    ds = _image(32, 32, 1, 16, "MONOCHROME2")
    ds.Modality = "CT"
    ds.NumberOfFrames = 4
    ds.PixelRepresentation = 0
    frames = np.zeros((4, 32, 32), np.uint16)
    for i in range(4):
        frames[i] = 1024 + 100 * i  # -> 0, 100, 200, 300 HU after the intercept
        frames[i, :, :16] = 1024 - 1000  # air on the left
    ds.PixelData = frames.tobytes()
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", "-1024", "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(4):
        item, voi, plane = Dataset(), Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = "150", "400"
        plane.ImagePositionPatient = [0, 0, 2.5 * i]
        item.FrameVOILUTSequence = Sequence([voi])
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return _save(ds, ENHANCED_CT, path)


def test_enhanced_ct_uses_its_functional_groups(renderer: Renderer, tmp_path: Path) -> None:
    path = _enhanced_ct(tmp_path / "enhanced.dcm")
    info = describe(read_header(path))
    assert info.frames == 4 and info.positions == (0.0, 2.5, 5.0, 7.5)
    assert info.windows == ((150.0, 400.0),)
    values = [int(_png(renderer, path, frame=i)[16, 24]) for i in range(4)]
    # Window 150/400 spans -50..350 HU: 0, 100, 200, 300 HU climb through it.
    assert values == sorted(values) and values[0] > 0 and values[-1] < 255
    assert int(_png(renderer, path, frame=0)[16, 4]) == 0  # air is black


def test_window_override_and_full_range(renderer: Renderer, tmp_path: Path) -> None:
    path = _enhanced_ct(tmp_path / "enhanced.dcm")
    bone = _png(renderer, path, frame=3, window=(400.0, 1800.0))
    narrow = _png(renderer, path, frame=3, window=(300.0, 10.0))
    full = _png(renderer, path, frame=3, minmax=True)
    assert 100 < int(narrow[16, 24]) < 200 and int(bone[16, 24]) < int(full[16, 24])
    assert int(full[16, 24]) == 255 and int(full[16, 4]) == 0


def test_a_corrupt_instance_fails_cleanly(renderer: Renderer, tmp_path: Path) -> None:
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=1, rows=64, cols=64)[0]
    cut = synthetic.truncated_copy(ct, tmp_path / "cut.dcm", -2000)
    with pytest.raises(RenderFailed):
        renderer.render(cut)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(RenderFailed):
        renderer.render(garbage)
    assert renderer.render(ct)[:3] == b"\xff\xd8\xff"  # still usable


def test_presets_per_modality() -> None:
    ct = [w.id for w in presets("CT", ((40.0, 400.0),), False)]
    assert ct == ["auto", "full", "soft", "lung", "bone", "brain"]
    mr = [w.id for w in presets("MR", ((300.0, 600.0), (500.0, 1000.0)), False)]
    assert mr == ["auto", "h2", "full"]
    assert [w.id for w in presets("MR", (), False)] == ["auto"]


def test_documents_are_not_images(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    assert describe(ds).kind == "pdf"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    assert describe(ds).kind == "sr"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set: no pixels
    assert describe(ds).kind == "other"


def test_a_huge_declared_frame_count_is_capped_never_allocated(tmp_path: Path) -> None:
    """NumberOfFrames is untrusted: a 1x1 image claiming a billion frames offers at most
    MAX_VIEW_FRAMES evenly spaced ones, first and last included."""
    from imaging.info import MAX_VIEW_FRAMES, spread

    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 1, 1, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = 1_000_000_000
    info = describe(ds)
    assert info.kind == "image" and info.frames == 1_000_000_000
    assert len(info.picks) == MAX_VIEW_FRAMES == len(info.positions)
    assert info.picks[0] == 0 and info.picks[-1] == 999_999_999
    assert list(info.picks) == sorted(set(info.picks))
    assert spread(3, MAX_VIEW_FRAMES) == [0, 1, 2]
    assert spread(0, MAX_VIEW_FRAMES) == []
