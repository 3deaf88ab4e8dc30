"""REPORT/ files: a PDF as received, SR and text rendered to escaped HTML in the
patient's language frame, content as written."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydicom

from delivery.report_render import report_files, sr_html, text_html
from store.content import ContentStore
from store.models import Report
from tests.conftest import Database
from tests.ris.reportdata import PDF, make_pdf, make_sr

STUDY = "1.2.826.0.1.3680043.8.498.777"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_text_is_escaped_isolated_and_controls_are_visible() -> None:
    shown = text_html("<script>alert(1)</script>\n\u202eevil\x07")
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "\u202e" not in shown and "\\u202e" in shown and "\\x07" in shown
    assert shown.startswith("<bdi>") and "<br>" in shown


def test_sr_nested_containers_measurement_and_codes(tmp_path: Path) -> None:
    path, _ = make_sr(tmp_path, STUDY)
    out = sr_html(pydicom.dcmread(path))
    assert out.count('<dl class="sr">') == 3  # root, Findings, Impressions
    assert "Findings" in out and "Impressions" in out
    assert "12.5 mm" in out  # the measurement and its UCUM unit
    assert "Nodule" in out  # a coded finding
    assert "&lt;b&gt;unchanged&lt;/b&gt;" in out  # content as written, escaped


def _add(db: Database, **kw: object) -> None:
    with db.sessions() as s, s.begin():
        s.add(
            Report(
                study_instance_uid=STUDY,
                accession_number="ACC1001",
                received_at=T0,
                body_sha256="0" * 64,
                body_size=1,
                **kw,
            )
        )


def test_report_files_in_the_patient_language(db: Database, tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    (content.root / "reports").mkdir()
    (content.root / "reports" / "a.txt").write_text("Conclusion: normal & <ok>", "utf-8")
    (content.root / "reports" / "b.pdf").write_bytes(PDF)
    sr, _ = make_sr(tmp_path, STUDY)
    dicom_pdf, _ = make_pdf(tmp_path, STUDY, pdf=PDF + b"x")
    (content.root / "instances").mkdir(exist_ok=True)
    for p in (sr, dicom_pdf):
        (content.root / "instances" / p.name).write_bytes(p.read_bytes())
    _add(db, status="final", source="hl7", kind="text", body_path="reports/a.txt")
    _add(db, status="preliminary", source="hl7", kind="pdf", body_path="reports/b.pdf")
    _add(db, status="final", source="dicom", kind="sr", body_path=f"instances/{sr.name}")
    _add(
        db, status="corrected", source="dicom", kind="pdf", body_path=f"instances/{dicom_pdf.name}"
    )
    with db.sessions() as s:
        files = report_files(s, content, [STUDY], "ar")
    names = [f.name for f in files]
    assert names == ["REPORT/RPT001.HTM", "REPORT/RPT002.HTM", "REPORT/RPT003.PDF"]  # no prelim
    text = files[0].data.decode()
    assert '<html lang="ar" dir="rtl">' in text and "تقرير الأشعة" in text
    assert "Conclusion: normal &amp; &lt;ok&gt;" in text
    assert "12.5 mm" in files[1].data.decode()
    assert files[2].data == PDF + b"x"  # the PDF as received (padding removed)


def test_a_hostile_sr_is_rendered_bounded() -> None:
    """100 nested containers (deeper than anyone writes) stop at the depth limit."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    leaf = Dataset()
    leaf.ValueType = "TEXT"
    leaf.TextValue = "deep"
    node = leaf
    for _ in range(100):
        parent = Dataset()
        parent.ValueType = "CONTAINER"
        parent.ContentSequence = Sequence([node])
        node = parent
    root = Dataset()
    root.ContentSequence = Sequence([node])
    out = sr_html(root)
    assert "…" in out and "deep" not in out
    assert out.count("<dl") <= 34
