"""Synthetic DICOM studies: never real patients, never real images.

Used by ``courier demo push`` (:mod:`node.demo`: a tiny study to try the node with) and by
the tests and benchmarks (``tests/synthetic.py`` builds its other generators on these).
Every file is a proper Part-10 file (preamble, ``DICM``, file meta group). Output is
deterministic for a given ``seed``: UIDs come from :func:`pydicom.uid.generate_uid` with
fixed entropy sources, dates are fixed, and pixels come from a seeded numpy generator, so
two runs write byte-identical files.

:func:`make_ct_series` writes one axial CT series (a cheap phantom: body, lungs, spine,
aorta, noise), Explicit VR Little Endian. Imports only pydicom and numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

#: The patient name the tests' instances carry: obviously not a person.
PATIENT_NAME = "SYNTHETIC^PATIENT"

# Fixed values shared by every generated instance (deterministic output needs fixed dates).
STUDY_DATE = "20240102"
_STUDY_TIME = "101500"
# The birth date the tests' requests give (tests/release/helpers.py): the identity check
# (release.identity) holds a study whose birth date differs from its request's.
BIRTH_DATE = "19700131"
_MANUFACTURER = "COURIER SYNTHETIC"
# CT stored values: HU = stored * slope + intercept, 12 bits stored in 16 allocated.
INTERCEPT = -1024
_MAX_STORED = 4095


def synthetic_uid(*parts: object) -> str:
    """Return a deterministic UID under pydicom's root for the given entropy parts.

    The same parts always give the same UID; different parts give different UIDs (a
    SHA-512 of the parts, as :func:`pydicom.uid.generate_uid` does).
    """
    return str(generate_uid(entropy_srcs=["courier-synthetic", *map(str, parts)]))


# --------------------------------------------------------------------------------------------
# Pixels


class Phantom:
    """A cheap CT-like phantom: body, two lungs whose size varies along z, spine, aorta.

    Distance fields are computed once; each slice only thresholds them and adds noise, so
    300 slices of 512x512 take about a second.
    """

    def __init__(self, rows: int, cols: int, seed: int) -> None:
        y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : cols * 1j]
        y = y.astype(np.float32)
        x = x.astype(np.float32)
        self._rng = np.random.default_rng(seed)
        body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0
        base = np.where(body, 40 - INTERCEPT, -1000 - INTERCEPT).astype(np.int16)
        base[(x / 0.09) ** 2 + ((y - 0.45) / 0.09) ** 2 <= 1.0] = 700 - INTERCEPT  # spine
        base[((x - 0.12) / 0.06) ** 2 + ((y - 0.2) / 0.06) ** 2 <= 1.0] = 200 - INTERCEPT
        self._base = base
        self._lung_left = ((x + 0.4) / 0.25) ** 2 + ((y + 0.02) / 0.38) ** 2
        self._lung_right = ((x - 0.4) / 0.25) ** 2 + ((y + 0.02) / 0.38) ** 2
        self._shape = (rows, cols)

    def slice(self, z: float) -> npt.NDArray[np.uint16]:
        """Return the slice at relative height ``z`` in [0, 1] as 12-bit unsigned values."""
        img = self._base.copy()
        scale = float(np.sin(np.pi * min(max(z, 0.0), 1.0))) ** 2  # lungs grow then shrink
        if scale > 0.01:
            lung = (self._lung_left <= scale) | (self._lung_right <= scale)
            img[lung] = -850 - INTERCEPT
        img += self._rng.integers(-20, 21, size=self._shape, dtype=np.int16)
        np.clip(img, 0, _MAX_STORED, out=img)
        return img.astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Datasets


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "COURIER_SYN"
    return meta


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient_id: str,
    accession: str,
    series_number: int,
    rows: int,
    cols: int,
    sop_class: str = CTImageStorage,
    description: str = "SYNTHETIC CT",
    patient_name: str = PATIENT_NAME,
    birth_date: str = BIRTH_DATE,
) -> Dataset:
    """Build the attributes shared by every instance of a series (no per-instance ones)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    if sop_class == CTImageStorage:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _STUDY_TIME
    ds.AccessionNumber = accession
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = description
    ds.SeriesDescription = f"{description} SERIES {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "NO"  # a made-up patient, not a de-identified real one
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if sop_class == CTImageStorage:
        ds.SliceThickness = 1.0
        ds.KVP = 120
        ds.RescaleIntercept = INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    return ds


def set_instance(ds: Dataset, sop_instance: str, number: int, z_mm: float) -> None:
    ds.SOPInstanceUID = sop_instance
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-179.2, -179.2, round(z_mm, 2)]
    ds.SliceLocation = round(z_mm, 2)


def write_instance(ds: Dataset, meta: FileMetaDataset, path: Path) -> Path:
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def make_ct_series(
    out_dir: Path,
    n_slices: int = 300,
    rows: int = 512,
    cols: int = 512,
    seed: int = 0,
    study_uid: str | None = None,
    patient_id: str = "SYN0001",
    accession: str = "ACC0001",
    patient_name: str = PATIENT_NAME,
    birth_date: str = BIRTH_DATE,
    description: str = "SYNTHETIC CT CHEST",
) -> list[Path]:
    """Write one axial CT series of ``n_slices`` 16-bit slices, Explicit VR Little Endian.

    Files are ``out_dir/CT00001.dcm`` ... in slice order (the directory is created). With the
    defaults this is about 157 MB and takes a few seconds. ``study_uid`` defaults to a UID
    derived from ``seed``, ``patient_id`` and ``accession`` (the name, birth date and
    description do not change the UIDs).

    Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ("ct", seed, patient_id, accession)
    study_uid = study_uid or synthetic_uid(*key, "study")
    ds = ct_dataset(
        study_uid=study_uid,
        series_uid=synthetic_uid(*key, study_uid, "series"),
        frame_uid=synthetic_uid(*key, study_uid, "frame"),
        patient_id=patient_id,
        accession=accession,
        series_number=1,
        rows=rows,
        cols=cols,
        description=description,
        patient_name=patient_name,
        birth_date=birth_date,
    )
    phantom = Phantom(rows, cols, seed)
    paths: list[Path] = []
    for i in range(n_slices):
        sop_instance = synthetic_uid(*key, study_uid, "instance", i)
        set_instance(ds, sop_instance, i + 1, -150.0 + i * 1.0)
        ds.PixelData = phantom.slice(i / max(n_slices - 1, 1)).tobytes()
        meta = file_meta(CTImageStorage, sop_instance, ExplicitVRLittleEndian)
        paths.append(write_instance(ds, meta, out_dir / f"CT{i + 1:05d}.dcm"))
    return paths
