"""The DICOMDIR of one package part, encoded here in one pass (linear in the instances).

Only headers go in: each instance is read with ``stop_before_pixels`` (pixel data is never
loaded), turned into directory records and forgotten, so memory grows with the number of
instances (a few KB of directory records each), not with their size.

The layout is the one pydicom's :class:`~pydicom.fileset.FileSet` writes, so packages read
the same as before, but without FileSet: its ``add`` scans every instance and every sibling
on each call (quadratic: 8 s for 1,000 instances) and it saves a header-only copy of each
instance in a temporary folder. Here:

- records come from pydicom's public :data:`~pydicom.fileset.DIRECTORY_RECORDERS`; the
  leaf record type per SOP class (IMAGE, SR DOCUMENT, ...) is FileSet's rule, copied below
  because pydicom keeps it private (a test checks the copy against pydicom's);
- the hierarchy PATIENT → STUDY → SERIES → leaf is built with dicts keyed by PatientID,
  StudyInstanceUID and SeriesInstanceUID; records appear in first-seen order, depth first;
- file IDs follow PS3.10/PS3.12 as FileSet makes them: one component per level, a prefix
  for the record type and the record's index among its siblings (``PT000000/ST000000/
  SE000000/IM000000``; upper case, at most 8 characters a component and 8 levels);
  a disc puts them under one more component (``root="DICOM"``: ``DICOM/PT000000/...``),
  which is the IHE PDI layout; the ZIP keeps FileSet's (no root);
- each record is encoded once with pydicom's writer; the offsets (byte positions, from the
  first byte of the preamble, of each record's item tag) are then patched into the encoded
  bytes: they are fixed-length UL values, so lengths do not change.

The directory records need a few attributes that are only Type 2 (may be empty) in the
instances themselves: PatientID, StudyDate, StudyTime, StudyID, SeriesNumber,
InstanceNumber, Modality. When one is missing or empty, a placeholder goes into the
*record* only (never into the instance), as ``dcmmkdir +I`` does, and :attr:`Dicomdir.notes`
says so.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import uid as uids
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info

# Placeholders for directory-record attributes the instance left empty (record only).
_INVENTED: dict[str, str | int] = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "SeriesNumber": 0,
    "InstanceNumber": 0,
    "Modality": "OT",
}

# -- FileSet's naming rules (pydicom 3.0 fileset.py keeps them private; mirrored here) ---

# File ID component prefix per record type.
_PREFIXES: dict[str, str] = {
    "PATIENT": "PT", "STUDY": "ST", "SERIES": "SE", "IMAGE": "IM", "RT DOSE": "RD",
    "RT STRUCTURE SET": "RS", "RT PLAN": "RP", "RT TREAT RECORD": "RX",
    "PRESENTATION": "PR", "WAVEFORM": "WV", "SR DOCUMENT": "SR", "KEY OBJECT DOC": "KY",
    "SPECTROSCOPY": "SP", "RAW DATA": "RW", "REGISTRATION": "RG", "FIDUCIAL": "FD",
    "HANGING PROTOCOL": "HG", "ENCAP DOC": "ED", "VALUE MAP": "VM", "STEREOMETRIC": "SX",
    "PALETTE": "PA", "IMPLANT": "IP", "IMPLANT ASSY": "IA", "IMPLANT GROUP": "IG",
    "PLAN": "PL", "MEASUREMENT": "MX", "SURFACE": "SF", "SURFACE SCAN": "SS", "TRACT": "TR",
    "ASSESSMENT": "AS", "RADIOTHERAPY": "RT",
}  # fmt: skip

# SOP classes whose instances get one top-level record (no patient, study or series).
_SINGLE_LEVEL_SOP_CLASSES: dict[str, str] = {
    uids.HangingProtocolStorage: "HANGING PROTOCOL",
    uids.ColorPaletteStorage: "PALETTE",
    uids.GenericImplantTemplateStorage: "IMPLANT",
    uids.ImplantAssemblyTemplateStorage: "IMPLANT ASSY",
    uids.ImplantTemplateGroupStorage: "IMPLANT GROUP",
}

_LEAF_CLASSES: dict[str, tuple[str, ...]] = {
    "RT DOSE": (uids.RTDoseStorage,),
    "RT STRUCTURE SET": (uids.RTStructureSetStorage,),
    "RT TREAT RECORD": (
        uids.RTBeamsTreatmentRecordStorage, uids.RTBrachyTreatmentRecordStorage,
        uids.RTTreatmentSummaryRecordStorage, uids.RTIonBeamsTreatmentRecordStorage,
    ),
    "PRESENTATION": (
        uids.GrayscaleSoftcopyPresentationStateStorage,
        uids.ColorSoftcopyPresentationStateStorage,
        uids.PseudoColorSoftcopyPresentationStateStorage,
        uids.BlendingSoftcopyPresentationStateStorage,
        uids.XAXRFGrayscaleSoftcopyPresentationStateStorage, uids.BasicStructuredDisplayStorage,
    ),
    "WAVEFORM": (
        uids.BasicVoiceAudioWaveformStorage, uids.TwelveLeadECGWaveformStorage,
        uids.GeneralECGWaveformStorage, uids.AmbulatoryECGWaveformStorage,
        uids.HemodynamicWaveformStorage, uids.CardiacElectrophysiologyWaveformStorage,
        uids.ArterialPulseWaveformStorage, uids.RespiratoryWaveformStorage,
        uids.GeneralAudioWaveformStorage, uids.RoutineScalpElectroencephalogramWaveformStorage,
        uids.ElectromyogramWaveformStorage, uids.ElectrooculogramWaveformStorage,
        uids.SleepElectroencephalogramWaveformStorage,
        uids.MultichannelRespiratoryWaveformStorage, uids.BodyPositionWaveformStorage,
    ),
    "SR DOCUMENT": (
        uids.BasicTextSRStorage, uids.EnhancedSRStorage, uids.ComprehensiveSRStorage,
        uids.MammographyCADSRStorage, uids.ChestCADSRStorage, uids.ProcedureLogStorage,
        uids.XRayRadiationDoseSRStorage, uids.SpectaclePrescriptionReportStorage,
        uids.ColonCADSRStorage, uids.MacularGridThicknessAndVolumeReportStorage,
        uids.ImplantationPlanSRStorage, uids.Comprehensive3DSRStorage,
        uids.RadiopharmaceuticalRadiationDoseSRStorage, uids.ExtensibleSRStorage,
        uids.AcquisitionContextSRStorage, uids.SimplifiedAdultEchoSRStorage,
        uids.PatientRadiationDoseSRStorage, uids.PlannedImagingAgentAdministrationSRStorage,
        uids.PerformedImagingAgentAdministrationSRStorage,
    ),
    "KEY OBJECT DOC": (uids.KeyObjectSelectionDocumentStorage,),
    "SPECTROSCOPY": (uids.MRSpectroscopyStorage,),
    "RAW DATA": (uids.RawDataStorage,),
    "REGISTRATION": (uids.SpatialRegistrationStorage, uids.DeformableSpatialRegistrationStorage),
    "FIDUCIAL": (uids.SpatialFiducialsStorage,),
    "VALUE MAP": (uids.RealWorldValueMappingStorage,),
    "STEREOMETRIC": (uids.StereometricRelationshipStorage,),
    "MEASUREMENT": (
        uids.LensometryMeasurementsStorage, uids.AutorefractionMeasurementsStorage,
        uids.KeratometryMeasurementsStorage, uids.SubjectiveRefractionMeasurementsStorage,
        uids.VisualAcuityMeasurementsStorage, uids.OphthalmicAxialMeasurementsStorage,
        uids.OphthalmicVisualFieldStaticPerimetryMeasurementsStorage,
    ),
    "SURFACE": (uids.SurfaceSegmentationStorage,),
    "SURFACE SCAN": (uids.SurfaceScanMeshStorage, uids.SurfaceScanPointCloudStorage),
    "TRACT": (uids.TractographyResultsStorage,),
    "ASSESSMENT": (uids.ContentAssessmentResultsStorage,),
}  # fmt: skip

# SOP classes whose leaf (fourth-level) record is not IMAGE.
_FOUR_LEVEL_SOP_CLASSES: dict[str, str] = {
    sop_class: record_type
    for record_type, classes in _LEAF_CLASSES.items()
    for sop_class in classes
}

_NUMERIC = "0123456789"
_ALPHANUMERIC = "0123456789ABCDEFGHIKLMNOPQRSTUVWXYZ"  # FileSet's: no J
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)  # (FFFE,E000) Item
_SEQUENCE = struct.pack("<HH", 0x0004, 0x1220) + b"SQ\x00\x00"  # Directory Record Sequence
_NEXT_TAG = 0x00041400  # Offset of the Next Directory Record
_LOWER_TAG = 0x00041420  # Offset of Referenced Lower-Level Directory Entity
_UL = struct.Struct("<I")
# PS3.10 8.2: a File ID component is 1-8 of A-Z, 0-9 and _; a File-set ID (CS) is at most 16
# of those and spaces. Both are also ISO 9660 d-characters (PS3.12 F.1.1), so a disc's
# volume identifier can be its File-set ID.
_COMPONENT = re.compile(r"[A-Z0-9_]{1,8}")
_FILE_SET_ID = re.compile(r"[A-Z0-9_ ]{0,16}")


@dataclass
class Dicomdir:
    """A DICOMDIR's bytes and the file ID (a relative POSIX path) of every instance."""

    data: bytes
    file_ids: dict[str, str]  # SOP Instance UID -> "PT000000/ST000000/SE000000/IM000000"
    notes: list[str] = field(default_factory=list)


@dataclass
class _Node:
    """A directory record and the records one level below it, in first-seen order."""

    record_type: str
    record: Dataset | None  # None for the root
    children: list[_Node] = field(default_factory=list)
    by_key: dict[str, _Node] = field(default_factory=dict)
    sop_instance_uid: str | None = None  # leaves only
    position: int = 0  # where its item starts, counted from the first item


def _leaf_record_type(ds: Dataset) -> str:
    """FileSet's fourth-level record type for ``ds`` (IMAGE unless the SOP class says else)."""
    modality = ds.get("Modality")
    if modality in ("RTINTENT", "RTSEGANN", "RTRAD"):
        return "RADIOTHERAPY"
    if modality == "PLAN":
        return "PLAN"
    if "EncapsulatedDocument" in ds:
        return "ENCAP DOC"
    if "RTPlanLabel" in ds:
        return "RT PLAN"
    return _FOUR_LEVEL_SOP_CLASSES.get(str(ds.get("SOPClassUID", "")), "IMAGE")


def _is_empty(header: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is missing or has no value in ``header``."""
    element = header.get_item(keyword)
    if element is None:
        return True
    if isinstance(element, RawDataElement) and element.value and element.value.strip(b" \0"):
        return False  # not decoded yet, and more than padding: has a value (decoding is slow)
    return bool(header[keyword].VM == 0)


def _fill_record_attributes(header: Dataset, notes: list[str]) -> None:
    """Put placeholders for empty record attributes into ``header`` (a header-only copy)."""
    for keyword, value in _INVENTED.items():
        if _is_empty(header, keyword):
            setattr(header, keyword, value)
            notes.append(
                f"instance {header.get('SOPInstanceUID')}: no {keyword} in the file; "
                f"the DICOMDIR record says {value!r}"
            )


def _required(ds: Dataset, keyword: str) -> str:
    """The value of ``keyword``, which the records need; ``ValueError`` when missing/empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise ValueError(
            f"instance {ds.get('SOPInstanceUID')}: no {keyword}, which its directory records need"
        )
    return str(value)


def _record(ds: Dataset, record_type: str, charset: bool) -> Dataset:
    """A new record of ``record_type`` for ``ds``, made by pydicom's recorder for that type."""
    make: Callable[[Dataset], Dataset] = DIRECTORY_RECORDERS[record_type]
    try:
        record = make(ds)
    except ValueError as exc:  # pydicom's words: which Type 1 attribute is missing/empty
        raise ValueError(
            f"instance {ds.get('SOPInstanceUID')}: cannot make its {record_type!r} "
            f"directory record: {exc}"
        ) from exc
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if charset and "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    return record


def _child(parent: _Node, key: str, make: Callable[[], _Node]) -> _Node:
    node = parent.by_key.get(key)
    if node is None:
        node = parent.by_key[key] = make()
        parent.children.append(node)
    return node


def _add(root: _Node, ds: Dataset, seen: set[str]) -> None:
    """Add the records of instance ``ds`` below ``root`` (O(1) per instance)."""
    sop_instance = _required(ds, "SOPInstanceUID")
    if sop_instance in seen:
        raise ValueError(f"instance {sop_instance} is listed twice")
    seen.add(sop_instance)
    sop_class = _required(ds, "SOPClassUID")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise ValueError(f"instance {sop_instance}: no Transfer Syntax UID in its file meta")
    single = _SINGLE_LEVEL_SOP_CLASSES.get(sop_class)
    if single is not None:
        parent, leaf_type = root, single
    else:
        patient = _child(
            root, _required(ds, "PatientID"),
            lambda: _Node("PATIENT", _record(ds, "PATIENT", True)),
        )  # fmt: skip
        study = _child(
            patient, _required(ds, "StudyInstanceUID"),
            lambda: _Node("STUDY", _record(ds, "STUDY", True)),
        )  # fmt: skip
        parent = _child(
            study, _required(ds, "SeriesInstanceUID"),
            lambda: _Node("SERIES", _record(ds, "SERIES", True)),
        )  # fmt: skip
        leaf_type = _leaf_record_type(ds)
    leaf = _record(ds, leaf_type, single is None)
    leaf.ReferencedSOPClassUIDInFile = sop_class
    leaf.ReferencedSOPInstanceUIDInFile = sop_instance
    leaf.ReferencedTransferSyntaxUIDInFile = syntax
    node = parent.by_key[sop_instance] = _Node(leaf_type, leaf, sop_instance_uid=sop_instance)
    parent.children.append(node)


def _component(record_type: str, index: int, chars: str) -> str:
    """FileSet's file ID component: the type's prefix, then ``index`` in base len(chars)."""
    prefix = _PREFIXES[record_type]
    digits = ""
    while index:
        index, rest = divmod(index, len(chars))
        digits = chars[rest] + digits
    return prefix + digits.rjust(8 - len(prefix), "0")


def _encode(record: Dataset) -> tuple[bytearray, int, int]:
    """``record`` encoded (Explicit VR Little Endian) and where its two offset values start.

    Element by element, as pydicom's own FileSet does, to learn the positions.
    """
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    encoding = record.get("SpecificCharacterSet", default_encoding)
    at_next = at_lower = -1
    for tag in sorted(record.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are never written
        if tag == _NEXT_TAG:
            at_next = fp.tell() + 8  # tag (4), VR (2), length (2), then the UL value
        elif tag == _LOWER_TAG:
            at_lower = fp.tell() + 8
        write_data_element(fp, record[tag], encoding)
    return bytearray(fp.getvalue()), at_next, at_lower


def _head(uid: uids.UID, first: int, last: int, file_set_id: str | None = None) -> bytes:
    """Preamble, File Meta and the File-set Identification module up to the records."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uids.MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds = Dataset()
    ds.FileSetID = file_set_id or None
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
    ds.FileSetConsistencyFlag = 0
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    write_dataset(fp, ds)
    return fp.getvalue()


def build_dicomdir(
    headers: Iterable[Dataset], *, root: str | None = None, file_set_id: str | None = None
) -> Dicomdir:
    """Build the DICOMDIR for ``headers`` (datasets read with ``stop_before_pixels``).

    ``root``, when given, is one more File ID component above the patients (a disc's
    ``DICOM``: file IDs ``DICOM/PT000000/...``); ``file_set_id`` fills File-set ID (a
    disc's volume label; empty by default, as FileSet writes it). Headers may be modified
    (placeholders, see the module docstring). Time and memory are linear in the number of
    headers. Raises ``ValueError`` when an instance cannot be described by a directory
    record (no SOPInstanceUID, SOPClassUID, StudyInstanceUID, SeriesInstanceUID or
    transfer syntax, a record attribute pydicom's recorder requires, or the same instance
    twice), or when ``root`` or ``file_set_id`` is not made of the characters PS3.10 allows.
    """
    if root is not None and not _COMPONENT.fullmatch(root):
        raise ValueError(f"File ID component {root!r}: use 1-8 of A-Z, 0-9 and _")
    if file_set_id is not None and not _FILE_SET_ID.fullmatch(file_set_id):
        raise ValueError(f"File-set ID {file_set_id!r}: use at most 16 of A-Z, 0-9, _ and space")
    notes: list[str] = []
    tree = _Node("ROOT", None)
    seen: set[str] = set()
    for header in headers:
        _fill_record_attributes(header, notes)
        _add(tree, header, seen)
    if not seen:
        raise ValueError("a DICOMDIR needs at least one instance")
    # FileSet's switch: 6 decimal digits a component run out past a million instances.
    chars = _ALPHANUMERIC if len(seen) > 10**6 else _NUMERIC

    # Depth first, as FileSet lays records out: each record before the records below it.
    # Positions are counted from the sequence's first item until the head's length is known.
    records: list[tuple[_Node, _Node | None, bytearray, int, int]] = []
    file_ids: dict[str, str] = {}
    end = 0

    def visit(node: _Node, path: tuple[str, ...]) -> None:
        nonlocal end
        for index, child in enumerate(node.children):
            assert child.record is not None
            here = (*path, _component(child.record_type, index, chars))
            if child.sop_instance_uid is not None:
                child.record.ReferencedFileID = list(here)
                file_ids[child.sop_instance_uid] = "/".join(here)
            body, at_next, at_lower = _encode(child.record)
            child.record = None  # encoded: let it go
            following = node.children[index + 1] if index + 1 < len(node.children) else None
            records.append((child, following, body, at_next, at_lower))
            child.position = end
            end += len(_ITEM) + 4 + len(body)
            visit(child, here)

    visit(tree, () if root is None else (root,))
    uid = uids.generate_uid()
    # The head's length does not depend on the offsets it holds (fixed-length UL values).
    base = len(_head(uid, 0, 0, file_set_id)) + len(_SEQUENCE) + 4

    def offset(node: _Node | None) -> int:
        return 0 if node is None else base + node.position

    out = BytesIO()
    out.write(_head(uid, offset(tree.children[0]), offset(tree.children[-1]), file_set_id))
    out.write(_SEQUENCE + _UL.pack(end))
    for node, following, body, at_next, at_lower in records:
        _UL.pack_into(body, at_next, offset(following))
        _UL.pack_into(body, at_lower, offset(node.children[0] if node.children else None))
        out.write(_ITEM + _UL.pack(len(body)))
        out.write(body)
    return Dicomdir(out.getvalue(), file_ids, notes)
