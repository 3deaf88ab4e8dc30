"""Synthetic DICOM reports for tests: a Comprehensive (or Basic Text) SR with nested
containers, a numeric measurement and codes, and an Encapsulated PDF. Never real data."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from ris.dicom import COMPREHENSIVE_SR, ENCAPSULATED_PDF

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _item(kind: str, name: Dataset, rel: str = "CONTAINS") -> Dataset:
    it = Dataset()
    it.RelationshipType = rel
    it.ValueType = kind
    it.ConceptNameCodeSequence = Sequence([name])
    if kind == "CONTAINER":
        it.ContinuityOfContent = "SEPARATE"
    return it


def _base(study_uid: str, sop_class: str, patient_id: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Test"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = accession
    ds.StudyDate = "20260301"
    ds.ContentDate = "20260301"
    ds.ContentTime = "101500"
    ds.InstanceNumber = "1"
    return ds


def make_sr(
    out: Path,
    study_uid: str,
    *,
    patient_id: str = "PAT-1",
    accession: str = "ACC1001",
    completion: str = "COMPLETE",
    verification: str = "VERIFIED",
    sop_class: str = COMPREHENSIVE_SR,
    finding: str = "Nodule in the right upper lobe <b>unchanged</b>.",
    predecessor: str = "",
) -> tuple[Path, str]:
    """An SR: Imaging Report > Findings (text, measurement 12.5 mm, finding code) >
    Impression (text). Returns (path, SOP Instance UID)."""
    ds = _base(study_uid, sop_class, patient_id, accession)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.CompletionFlag = completion
    ds.VerificationFlag = verification
    text = _item("TEXT", _code("121071", "DCM", "Finding"))
    text.TextValue = finding
    num = _item("NUM", _code("410668003", "SCT", "Length"))
    mv = Dataset()
    mv.NumericValue = "12.5"
    mv.MeasurementUnitsCodeSequence = Sequence([_code("mm", "UCUM", "millimeter")])
    num.MeasuredValueSequence = Sequence([mv])
    code = _item("CODE", _code("121071", "DCM", "Finding"))
    code.ConceptCodeSequence = Sequence([_code("27925004", "SCT", "Nodule")])
    findings = _item("CONTAINER", _code("121070", "DCM", "Findings"))
    findings.ContentSequence = Sequence([text, num, code])
    impression = _item("CONTAINER", _code("121072", "DCM", "Impressions"))
    imp = _item("TEXT", _code("121073", "DCM", "Impression"))
    imp.TextValue = "No change since the previous study."
    impression.ContentSequence = Sequence([imp])
    ds.ContentSequence = Sequence([findings, impression])
    if predecessor:
        ref = Dataset()
        ref.StudyInstanceUID = study_uid
        ser = Dataset()
        ser.SeriesInstanceUID = generate_uid()
        sop = Dataset()
        sop.ReferencedSOPClassUID = sop_class
        sop.ReferencedSOPInstanceUID = predecessor
        ser.ReferencedSOPSequence = Sequence([sop])
        ref.ReferencedSeriesSequence = Sequence([ser])
        ds.PredecessorDocumentsSequence = Sequence([ref])
    path = out / f"sr-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def make_pdf(
    out: Path,
    study_uid: str,
    *,
    patient_id: str = "PAT-1",
    accession: str = "ACC1001",
    pdf: bytes = PDF,
) -> tuple[Path, str]:
    """An Encapsulated PDF instance holding ``pdf``."""
    ds = _base(study_uid, ENCAPSULATED_PDF, patient_id, accession)
    ds.Modality = "DOC"
    ds.ConversionType = "WSD"
    ds.DocumentTitle = "Radiology report"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    data = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf)
    path = out / f"pdf-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)
