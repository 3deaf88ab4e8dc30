"""Synthetic DICOM data for tests and benchmarks: never real patients, never real images.

Every generator writes proper Part-10 files (preamble, ``DICM``, file meta group) into a
directory the caller owns and returns their paths in the order written. Output is
deterministic for a given ``seed``: UIDs come from :func:`pydicom.uid.generate_uid` with fixed
entropy sources, dates are fixed, and pixels come from a seeded numpy generator, so two runs
write byte-identical files.

Generators:

- :func:`make_ct_series` (from :mod:`node.synthetic`, which ``courier demo push`` uses):
  one CT series (default 300 slices of 512x512, 16-bit, about 0.5 MB each), Explicit VR
  Little Endian: the "CT-300" benchmark set.
- :func:`make_small_instances`: many about-10-KB CT instances (64x64) spread over a few series
  of one study: the "small-2000" benchmark set.
- :func:`make_transfer_syntax_studies`: one small study per transfer syntax in
  :data:`TRANSFER_SYNTAXES`, compressed by real encoders (see :data:`ENCODERS`).

Bad inputs for robustness tests: :func:`truncated_copy`, :func:`deep_sequence_dataset`,
:func:`with_patient_id`.

dcmtk: :func:`storescu_args_for` gives the ``storescu`` options that send a file of a given
transfer syntax *as is* (without transcoding it), and :func:`dcmtk_knows` says whether the
installed dcmtk can read that syntax at all (Debian 12's dcmtk 3.6.7 predates HTJ2K).

Encoders: pydicom's own ``Dataset.compress`` does RLE (pydicom/pylibjpeg-rle), JPEG-LS
(pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg). No package installed with the node encodes JPEG
Baseline, JPEG Lossless SV1 or HTJ2K, so those three use ``imagecodecs`` (a test-only
dependency: libjpeg-turbo 3 for baseline and lossless process 14 with predictor 1, OpenJPH for
HTJ2K), and the resulting frames are encapsulated with :func:`pydicom.encaps.encapsulate`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from node.synthetic import (
    INTERCEPT,
    PATIENT_NAME,
    STUDY_DATE,
    Phantom,
    ct_dataset,
    file_meta,
    make_ct_series,
    set_instance,
    synthetic_uid,
    write_instance,
)

__all__ = [
    "ENCODERS",
    "PATIENT_NAME",
    "TRANSFER_SYNTAXES",
    "dataset_bytes",
    "dcmtk_knows",
    "deep_sequence_dataset",
    "make_ct_series",
    "make_small_instances",
    "make_transfer_syntax_studies",
    "storescu_args_for",
    "synthetic_uid",
    "truncated_copy",
    "with_patient_id",
]


#: Transfer syntaxes :func:`make_transfer_syntax_studies` writes, in this order.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    HTJ2KLossless,
)

#: Which library encodes each transfer syntax (for messages and reports).
ENCODERS: dict[str, str] = {
    ImplicitVRLittleEndian: "pydicom",
    ExplicitVRLittleEndian: "pydicom",
    ExplicitVRBigEndian: "pydicom (pixel bytes swapped by numpy)",
    DeflatedExplicitVRLittleEndian: "pydicom (zlib)",
    JPEGBaseline8Bit: "imagecodecs.jpeg8_encode (libjpeg-turbo)",
    JPEGLosslessSV1: "imagecodecs.jpeg8_encode lossless=True predictor=1 (libjpeg-turbo 3)",
    JPEGLSLossless: "pydicom Dataset.compress (pyjpegls)",
    JPEG2000Lossless: "pydicom Dataset.compress (pylibjpeg-openjpeg)",
    RLELossless: "pydicom Dataset.compress (RLE: pydicom or pylibjpeg-rle plugin)",
    HTJ2KLossless: "imagecodecs.htj2k_encode reversible=True (OpenJPH)",
}

# The CT generator lives in the node (``courier demo push`` uses it): node.synthetic.
# The private names stay for the generators below and tests/imaging/hostile.py.
_STUDY_DATE = STUDY_DATE
_INTERCEPT = INTERCEPT
_Phantom = Phantom
_file_meta = file_meta
_ct_dataset = ct_dataset
_set_instance = set_instance
_write = write_instance


def make_small_instances(
    out_dir: Path,
    n: int = 2000,
    seed: int = 0,
    n_series: int = 4,
    rows: int = 64,
    cols: int = 64,
    study_uid: str | None = None,
    patient_id: str = "SYN0002",
    accession: str = "ACC0002",
) -> list[Path]:
    """Write ``n`` small CT instances (64x64 16-bit, about 10 KB each) in one study.

    Instances are spread round-robin over ``n_series`` series; files are named
    ``out_dir/S{series}_{index:05d}.dcm``. Explicit VR Little Endian.

    Returns the paths written, in the order written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ("small", seed, patient_id, accession)
    study_uid = study_uid or synthetic_uid(*key, "study")
    frame_uid = synthetic_uid(*key, study_uid, "frame")
    series = [
        _ct_dataset(
            study_uid=study_uid,
            series_uid=synthetic_uid(*key, study_uid, "series", s),
            frame_uid=frame_uid,
            patient_id=patient_id,
            accession=accession,
            series_number=s + 1,
            rows=rows,
            cols=cols,
            description="SYNTHETIC CT SMALL",
        )
        for s in range(n_series)
    ]
    phantom = _Phantom(rows, cols, seed)
    per_series = -(-n // n_series)
    paths: list[Path] = []
    for i in range(n):
        s, k = i % n_series, i // n_series
        ds = series[s]
        sop_instance = synthetic_uid(*key, study_uid, "instance", i)
        _set_instance(ds, sop_instance, k + 1, k * 1.0)
        ds.PixelData = phantom.slice(k / max(per_series - 1, 1)).tobytes()
        meta = _file_meta(CTImageStorage, sop_instance, ExplicitVRLittleEndian)
        paths.append(_write(ds, meta, out_dir / f"S{s + 1}_{i:05d}.dcm"))
    return paths


# --------------------------------------------------------------------------------------------
# One study per transfer syntax


def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "JPEG Baseline, JPEG Lossless SV1 and HTJ2K need the test dependency "
            "'imagecodecs' (pip install imagecodecs)"
        ) from exc
    return imagecodecs


def _encapsulated(ds: Dataset, frame: bytes) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"


def _encode_native(ds: Dataset, arr: npt.NDArray[np.uint16], ts: str) -> None:
    if ts == ExplicitVRBigEndian:
        # pydicom writes PixelData bytes as given: swap them for big endian ourselves.
        ds.PixelData = arr.astype(">u2").tobytes()
    else:
        ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"


def _encode_pydicom(ds: Dataset, arr: npt.NDArray[np.uint16], ts: str) -> None:
    # generate_instance_uid=False: keep our deterministic SOPInstanceUID.
    ds.compress(ts, arr, generate_instance_uid=False)


def _encode_jpeg_lossless(ds: Dataset, arr: npt.NDArray[np.uint16], ts: str) -> None:
    ic = _imagecodecs()
    frame = ic.jpeg8_encode(arr, lossless=True, predictor=1, bitspersample=ds.BitsStored)
    _encapsulated(ds, bytes(frame))


def _encode_htj2k(ds: Dataset, arr: npt.NDArray[np.uint16], ts: str) -> None:
    ic = _imagecodecs()
    frame = ic.htj2k_encode(arr, reversible=True)
    _encapsulated(ds, bytes(frame))


def _encode_jpeg_baseline(ds: Dataset, arr: npt.NDArray[np.uint16], ts: str) -> None:
    # Baseline JPEG is 8-bit only: store a windowed 8-bit rendering as Secondary Capture.
    ic = _imagecodecs()
    hu = arr.astype(np.int32) + _INTERCEPT
    img8 = (np.clip((hu - (40 - 200)) * 255 // 400, 0, 255)).astype(np.uint8)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    frame = bytes(ic.jpeg8_encode(img8, level=90))
    ds.LossyImageCompressionRatio = f"{img8.size / len(frame):.2f}"
    _encapsulated(ds, frame)


_ENCODE: dict[str, Callable[[Dataset, npt.NDArray[np.uint16], str], None]] = {
    ImplicitVRLittleEndian: _encode_native,
    ExplicitVRLittleEndian: _encode_native,
    ExplicitVRBigEndian: _encode_native,
    DeflatedExplicitVRLittleEndian: _encode_native,
    JPEGBaseline8Bit: _encode_jpeg_baseline,
    JPEGLosslessSV1: _encode_jpeg_lossless,
    JPEGLSLossless: _encode_pydicom,
    JPEG2000Lossless: _encode_pydicom,
    RLELossless: _encode_pydicom,
    HTJ2KLossless: _encode_htj2k,
}


def make_transfer_syntax_studies(
    out_dir: Path,
    seed: int = 0,
    n_instances: int = 3,
    rows: int = 64,
    cols: int = 64,
    syntaxes: Iterable[str] | None = None,
    patient_id: str = "SYNTS001",
) -> dict[str, list[Path]]:
    """Write one small study per transfer syntax; keys are transfer syntax UIDs.

    Each study has its own StudyInstanceUID and accession number (``ACCTS01``...), lies in
    ``out_dir/<syntax keyword>/`` and holds ``n_instances`` instances whose pixels are the
    same for a given index across syntaxes, so a lossless decode of any of them equals the
    Explicit VR Little Endian one. JPEG Baseline instances are 8-bit Secondary Capture (a
    windowed rendering); all others are 12-bit-in-16 CT. ``syntaxes`` picks a subset of
    :data:`TRANSFER_SYNTAXES` (default: all).

    Raises ``RuntimeError`` when a syntax needs ``imagecodecs`` and it is missing, and
    ``ValueError`` for a syntax this module cannot write.
    """
    out_dir = Path(out_dir)
    wanted = list(TRANSFER_SYNTAXES if syntaxes is None else syntaxes)
    for ts in wanted:
        if ts not in _ENCODE:
            raise ValueError(f"no synthetic encoder for transfer syntax {ts!r}")
    phantom = _Phantom(rows, cols, seed)
    frames = [phantom.slice(i / max(n_instances - 1, 1)) for i in range(n_instances)]
    result: dict[str, list[Path]] = {}
    for ts in wanted:
        index = TRANSFER_SYNTAXES.index(ts) + 1
        key = ("ts", seed, patient_id, ts)
        study_uid = synthetic_uid(*key, "study")
        study_dir = out_dir / UID(ts).keyword
        study_dir.mkdir(parents=True, exist_ok=True)
        sop_class = SecondaryCaptureImageStorage if ts == JPEGBaseline8Bit else CTImageStorage
        paths: list[Path] = []
        for i, arr in enumerate(frames):
            ds = _ct_dataset(
                study_uid=study_uid,
                series_uid=synthetic_uid(*key, "series"),
                frame_uid=synthetic_uid(*key, "frame"),
                patient_id=patient_id,
                accession=f"ACCTS{index:02d}",
                series_number=1,
                rows=rows,
                cols=cols,
                sop_class=sop_class,
                description=f"SYNTHETIC {UID(ts).keyword}",
            )
            if sop_class == SecondaryCaptureImageStorage:
                ds.ConversionType = "WSD"
            sop_instance = synthetic_uid(*key, "instance", i)
            _set_instance(ds, sop_instance, i + 1, i * 1.0)
            ds.file_meta = _file_meta(sop_class, sop_instance, ts)
            _ENCODE[ts](ds, arr, ts)
            # compress() may have changed the meta; keep ours but with its syntax.
            ds.file_meta.TransferSyntaxUID = UID(ts)
            paths.append(_write(ds, ds.file_meta, study_dir / f"IM{i + 1:04d}.dcm"))
        result[ts] = paths
    return result


# --------------------------------------------------------------------------------------------
# dcmtk helpers

# storescu options that propose the file's own syntax (plus the uncompressed ones, which it
# always proposes too). Without one, storescu proposes only uncompressed syntaxes and would
# have to decompress (it cannot: it has no decoders linked in) or fail.
_STORESCU_PROPOSE: dict[str, list[str]] = {
    ImplicitVRLittleEndian: ["-xi"],
    ExplicitVRLittleEndian: ["-xe"],
    ExplicitVRBigEndian: ["-xb"],
    DeflatedExplicitVRLittleEndian: ["-xd"],
    JPEGBaseline8Bit: ["-xy"],
    JPEGLosslessSV1: ["-xs"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
    RLELossless: ["-xr"],
}

# Debian 12 ships dcmtk 3.6.7 (2022), which predates the HTJ2K syntaxes (DICOM 2023b):
# it cannot even parse such files, so there is no flag that sends them.
_DCMTK_UNKNOWN: frozenset[str] = frozenset({HTJ2KLossless})


def dcmtk_knows(ts_uid: str) -> bool:
    """Return whether the installed dcmtk (3.6.7) can read and send ``ts_uid``."""
    return ts_uid not in _DCMTK_UNKNOWN


def storescu_args_for(ts_uid: str) -> list[str]:
    """Return the ``storescu`` options that send a ``ts_uid`` file in its own syntax.

    Add ``-R`` (propose only the SOP classes of the files) if the peer accepts few classes.
    Raises ``ValueError`` when dcmtk cannot send the syntax (see :func:`dcmtk_knows`).
    """
    try:
        return list(_STORESCU_PROPOSE[ts_uid])
    except KeyError:
        raise ValueError(f"dcmtk's storescu cannot send transfer syntax {ts_uid!r}") from None


# --------------------------------------------------------------------------------------------
# Bad inputs


def truncated_copy(path: Path, out: Path, keep_bytes: int) -> Path:
    """Copy the first ``keep_bytes`` bytes of ``path`` to ``out`` and return ``out``.

    A negative ``keep_bytes`` drops that many bytes from the end instead.
    """
    data = Path(path).read_bytes()
    out = Path(out)
    out.write_bytes(data[:keep_bytes])
    return out


def with_patient_id(path: Path, out: Path, value: str) -> Path:
    """Copy ``path`` to ``out`` with PatientID set to ``value``, keeping its transfer syntax.

    Everything else (UIDs, pixel data, encapsulation) is unchanged: the result is "same SOP
    Instance UID, different bytes". Returns ``out``.
    """
    ds = pydicom.dcmread(path)
    ds.PatientID = value
    out = Path(out)
    if Path(path).resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def dataset_bytes(path: Path) -> bytes:
    """Return the bytes of a Part-10 file after its file meta group: the dataset as stored.

    Two files with equal ``dataset_bytes`` hold byte-identical datasets even when their file
    meta differs (a receiver writes its own implementation UID and source AE title). For a
    deflated file these are the deflated bytes. Raises ``ValueError`` without a preamble
    and ``DICM`` prefix.
    """
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path} is not a Part-10 file with a group length")
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Encode one Explicit VR Little Endian element with a short (2-byte) length."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def deep_sequence_dataset(
    depth: int = 10000,
    *,
    seed: int = 0,
    sop_instance_uid: str | None = None,
) -> bytes:
    """Return a Part-10 CT file whose Content Sequence nests ``depth`` levels deep.

    pydicom writes (and reads) sequences recursively and cannot handle this, so the bytes
    are assembled by hand: Explicit VR Little Endian, each level an undefined-length
    (0040,A730) sequence holding one undefined-length item, closed by delimiters. The file
    has the usual patient/study/series attributes but no pixel data; its SOP Instance UID
    is ``sop_instance_uid`` or one derived from ``seed`` and ``depth``.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    sop_instance = sop_instance_uid or synthetic_uid("deep", seed, depth, "instance")
    study_uid = synthetic_uid("deep", seed, depth, "study")
    series_uid = synthetic_uid("deep", seed, depth, "series")

    meta_body = b"".join(
        [
            struct.pack("<HH", 0x0002, 0x0001) + b"OB\0\0" + struct.pack("<I", 2) + b"\0\1",
            _element(0x00020002, b"UI", CTImageStorage.encode()),
            _element(0x00020003, b"UI", sop_instance.encode()),
            _element(0x00020010, b"UI", ExplicitVRLittleEndian.encode()),
            _element(0x00020012, b"UI", PYDICOM_IMPLEMENTATION_UID.encode()),
        ]
    )
    meta = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(meta_body))
    header = b"\0" * 128 + b"DICM" + meta + meta_body

    body = BytesIO()
    for tag, vr, value in (
        (0x00080016, b"UI", CTImageStorage),
        (0x00080018, b"UI", sop_instance),
        (0x00080020, b"DA", _STUDY_DATE),
        (0x00080060, b"CS", "CT"),
        (0x00100010, b"PN", PATIENT_NAME),
        (0x00100020, b"LO", "SYNDEEP"),
        (0x0020000D, b"UI", study_uid),
        (0x0020000E, b"UI", series_uid),
    ):
        body.write(_element(tag, vr, value.encode()))
    open_level = (
        struct.pack("<HH", 0x0040, 0xA730)
        + b"SQ\0\0"
        + struct.pack("<I", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body.write(open_level * depth)
    body.write(close_level * depth)
    return header + body.getvalue()
