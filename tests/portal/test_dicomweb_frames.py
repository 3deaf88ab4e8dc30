"""WADO-RS frames as stored: every transfer syntax the tests generate, and multi-frame
objects native and compressed, read one frame at a time from the file (the frame
bytes equal what pydicom finds in the whole pixel data), in every encapsulated layout
(Basic Offset Table, none with one or several fragments per frame, Extended Offset
Table), reading the header and that frame only, never the whole pixel data; lying offset
tables and fragment lengths refused before anything is read for them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, get_frame
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from portal import dicomweb_frames
from portal.dicomweb_frames import (
    FRAME_TYPES,
    FrameSource,
    FramesUnreadable,
    NoFrame,
    frame_source,
)
from tests import synthetic


def _frames(source: FrameSource, numbers: list[int]) -> list[bytes]:
    with open(source.path, "rb", buffering=0) as fh:  # as the route reads them
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
        assert source.media == FRAME_TYPES.get(ts, "application/octet-stream")
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
    with pytest.raises(NoFrame):
        frame_source(tmp_path / "none.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 4  # declares more than it holds
    ds.save_as(tmp_path / "short.dcm")
    source = frame_source(tmp_path / "short.dcm")
    with pytest.raises(NoFrame):
        _frames(source, [4])


# -- encapsulated layouts, and what one frame costs to read ----------------------------

COUNT = 60


class _Counting(io.FileIO):
    """A file that counts the bytes read from it (every open of the test's file)."""

    total = 0

    def readinto(self, buffer: Any) -> int | None:
        n = super().readinto(buffer)
        _Counting.total += n or 0
        return n

    def read(self, size: int = -1) -> bytes:  # FileIO's own read does not call readinto
        data = super().read(size)
        _Counting.total += len(data)
        return data

    def readall(self) -> bytes:
        data = super().readall()
        _Counting.total += len(data)
        return data


def _counting_open(path: Any, mode: str = "r", buffering: int = -1, **kw: Any) -> Any:
    raw = _Counting(path, "rb")
    return raw if buffering == 0 else io.BufferedReader(raw)


def _jpeg_like(rng: np.random.Generator, n: int) -> bytes:
    """A frame shaped like a JPEG stream (SOI ... EOI, no 0xFF inside): never decoded."""
    return b"\xff\xd8" + rng.integers(0, 255, size=n, dtype=np.uint8).tobytes() + b"\xff\xd9"


def _encapsulated(path: Path, layout: str) -> Path:
    rng = np.random.default_rng(11)
    frames = [_jpeg_like(rng, 4000 + 7 * k) for k in range(COUNT)]
    ds = pydicom.dcmread(_multiframe(path, COUNT, ExplicitVRLittleEndian))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if layout == "extended":
        data, offsets, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets, lengths
    else:
        bot = layout.startswith("bot")
        per_frame = 3 if layout.endswith("3") else 1
        data = encapsulate(frames, fragments_per_frame=per_frame, has_bot=bot)
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def _expected_encapsulated(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    if "ExtendedOffsetTable" in ds:
        eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return [get_frame(ds.PixelData, k, extended_offsets=eot) for k in range(COUNT)]
    return list(generate_frames(ds.PixelData, number_of_frames=COUNT))


@pytest.mark.parametrize("layout", ["bot", "bot-3", "no-bot", "no-bot-3", "extended"])
def test_encapsulated_frames_read_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    path = _encapsulated(tmp_path / "cine.dcm", layout)
    expected = _expected_encapsulated(path)
    assert len(expected) == COUNT
    with open(path, "rb") as fh:
        header = len(fh.read()) - len(pydicom.dcmread(path).PixelData)
    monkeypatch.setattr(dicomweb_frames, "open", _counting_open, raising=False)
    for number in range(1, COUNT + 1):  # every frame, the same bytes as the whole read
        _Counting.total = 0
        source = frame_source(path)
        with _counting_open(path, "rb", buffering=0) as fh:
            got = source.read(fh, number)
        assert got == expected[number - 1], number
        # The header, one read-ahead buffer, the tables and item headers, the frame:
        # never the pixel data (COUNT frames of about 4 KB).
        budget = header + len(got) + 2 * io.DEFAULT_BUFFER_SIZE + 24 * 3 * COUNT
        assert _Counting.total <= budget, (number, _Counting.total, budget)
    source = frame_source(path)
    assert _frames(source, [COUNT, 1, 30]) == [expected[-1], expected[0], expected[29]]
    with pytest.raises(NoFrame):
        _frames(source, [COUNT + 1])


def test_lying_offsets_are_refused(tmp_path: Path) -> None:
    path = _encapsulated(tmp_path / "cine.dcm", "bot")
    data = bytearray(path.read_bytes())
    ds = pydicom.dcmread(path)
    # The second Basic Offset Table entry points far past the end of the file.
    table = data.index(b"\xfe\xff\x00\xe0")  # the first item: the table itself
    data[table + 12 : table + 16] = (1 << 31).to_bytes(4, "little")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(bytes(data))
    assert ds.NumberOfFrames == COUNT
    with pytest.raises(FramesUnreadable):
        _frames(frame_source(bad), [2])


# -- lying tables and lengths: refused before anything is read for them ------------------

_ITEM_TAG = b"\xfe\xff\x00\xe0"
_HUGE = 1 << 31


def _patched(path: Path, at_item: int, field: int, value: int) -> None:
    """Write ``value`` over the ``field``-th 4-byte word after the ``at_item``-th item tag
    of the pixel data (word 1 is the item's length, word 2 the table's second entry)."""
    data = bytearray(path.read_bytes())
    at = frame_source(path).start  # the first item: the Basic Offset Table
    assert data[at : at + 4] == _ITEM_TAG
    for _ in range(at_item):
        at += 8 + int.from_bytes(data[at + 4 : at + 8], "little")
    data[at + 4 * field : at + 4 * field + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _lying_bot_length(path: Path) -> None:
    # 100 000 bytes, inside the file: before, read whole and turned into 25 000 offsets.
    _patched(path, 0, 1, 100_000)


def _lying_fragment_length(path: Path) -> None:
    _patched(path, 1, 1, _HUGE)  # the first fragment, after the (empty or not) table


def _eot(path: Path, offsets: list[int] | None = None, lengths: list[int] | None = None) -> None:
    ds = pydicom.dcmread(path)
    if offsets is not None:
        ds.ExtendedOffsetTable = b"".join(o.to_bytes(8, "little") for o in offsets)
    if lengths is not None:
        ds.ExtendedOffsetTableLengths = b"".join(n.to_bytes(8, "little") for n in lengths)
    ds.save_as(path)


def _eot_entries(path: Path, tag: str) -> list[int]:
    raw = pydicom.dcmread(path)[tag].value
    return [int.from_bytes(raw[k : k + 8], "little") for k in range(0, len(raw), 8)]


def _lying_eot_count(path: Path) -> None:
    offsets = _eot_entries(path, "ExtendedOffsetTable")
    _eot(path, offsets=offsets + [0] * 10_000)  # 10 000 more frames than the file has


def _lying_eot_offset(path: Path) -> None:
    offsets = _eot_entries(path, "ExtendedOffsetTable")
    _eot(path, offsets=[offsets[0], _HUGE << 8, *offsets[2:]])


def _lying_eot_length(path: Path) -> None:
    lengths = _eot_entries(path, "ExtendedOffsetTableLengths")
    _eot(path, lengths=[lengths[0], _HUGE << 8, *lengths[2:]])


@pytest.mark.parametrize(
    ("layout", "lie", "frame"),
    [
        ("bot", _lying_bot_length, 2),
        ("bot", _lying_fragment_length, 1),
        ("no-bot", _lying_fragment_length, 2),
        ("no-bot-3", _lying_fragment_length, 2),
        ("extended", _lying_eot_count, 2),
        ("extended", _lying_eot_offset, 2),
        ("extended", _lying_eot_length, 2),
    ],
)
def test_lying_lengths_are_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, lie: Any, frame: int
) -> None:
    path = _encapsulated(tmp_path / "cine.dcm", layout)
    lie(path)
    with open(path, "rb") as fh:  # the header, up to the pixel data (the lying EOT's too)
        header = len(fh.read()) - len(pydicom.dcmread(path).PixelData)
    monkeypatch.setattr(dicomweb_frames, "open", _counting_open, raising=False)
    _Counting.total = 0
    with pytest.raises(FramesUnreadable):  # the route's 422
        source = frame_source(path)
        with _counting_open(path, "rb", buffering=0) as fh:
            source.read(fh, frame)
    # The header, one read-ahead buffer, item headers and a good table at most: never
    # the claimed length (the lying Basic Offset Table claims 100 000 bytes).
    budget = header + 2 * io.DEFAULT_BUFFER_SIZE + 8 * 8 + 4 * COUNT
    assert _Counting.total <= budget < 100_000, (_Counting.total, budget)
