"""The ``REPORT/`` folder of a package: a study's current reports, readable without a
DICOM viewer.

A PDF goes in as received (the HL7 body, or the Encapsulated Document of a DICOM PDF
instance). A text report (HL7 TX/FT/ST) and an SR are rendered to one self-contained
HTML page each: the frame (title, labels, ``lang`` and ``dir``) in the patient's
language, the content exactly as written, escaped, each text isolated for bidi
(``<bdi>``) and control characters shown visibly. Which reports: the chain's latest
final or corrected one (:func:`release.reports.current_reports`), never a preliminary.
File names are ISO 9660 safe (``REPORT/RPT001.PDF``, ``RPT002.HTM``) so the disc
carries the same names.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from delivery.i18n import direction
from release.reports import current_reports
from store.content import ContentStore
from store.models import Report
from telemetry.text import BIDI_CONTROLS, CONTROLS, escape, pattern

FOLDER = "REPORT"
_MAX_DEPTH = 32  # SR nesting rendered at most this deep (deeper: "…")

#: The frame's words, per supported language (the content stays as written).
LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Radiology report",
        "status": "Status",
        "final": "final",
        "corrected": "corrected",
        "date": "Report date",
        "note": "This is the report as the hospital wrote it.",
    },
    "ar": {
        "title": "تقرير الأشعة",
        "status": "الحالة",
        "final": "نهائي",
        "corrected": "مصحَّح",
        "date": "تاريخ التقرير",
        "note": "هذا هو التقرير كما كتبه المستشفى.",
    },
    "zh-Hans": {
        "title": "放射学报告",
        "status": "状态",
        "final": "最终",
        "corrected": "已更正",
        "date": "报告日期",
        "note": "这是医院撰写的报告原文。",
    },
}

_HIDDEN = pattern(CONTROLS | BIDI_CONTROLS)


@dataclass(frozen=True)
class ReportFile:
    """One file of ``REPORT/``: its name in the package and its bytes."""

    name: str
    data: bytes
    report_id: int


def text_html(value: str) -> str:
    """Untrusted text as HTML: escaped, bidi-isolated, control characters visible
    (``\\n`` becomes a line break)."""
    lines = []
    for line in value.split("\n"):
        shown = _HIDDEN.sub(lambda m: escape(m.group()), line)
        lines.append(html.escape(shown, quote=True))
    return "<bdi>" + "<br>".join(lines) + "</bdi>"


def _labels(language: str) -> dict[str, str]:
    return LABELS.get(language, LABELS["en"])


def _page(language: str, report: Report, body: str) -> bytes:
    lab = _labels(language)
    lang = language if language in LABELS else "en"
    status = lab.get(report.status, report.status)
    title = text_html(report.title) if report.title else ""
    date = text_html(report.reported_at_text) if report.reported_at_text else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{html.escape(lang)}" dir="{direction(lang)}">\n<head>'
        '<meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(lab['title'])}</title>"
        "<style>body{font-family:sans-serif;max-width:50em;margin:1em auto;padding:0 1em;"
        "line-height:1.5}dl.sr{margin:0 0 0 1em}dt{font-weight:bold}dd{margin:0 0 .5em 1em}"
        ".meta{color:#444}</style></head>\n<body>\n"
        f"<h1>{html.escape(lab['title'])}</h1>\n"
        + (f"<h2>{title}</h2>\n" if title else "")
        + f'<p class="meta">{html.escape(lab["status"])}: {html.escape(status)}'
        + (f" · {html.escape(lab['date'])}: {date}" if date else "")
        + "</p>\n"
        + f'<p class="meta">{html.escape(lab["note"])}</p>\n'
        + f'<div class="report">{body}</div>\n</body></html>\n'
    ).encode("utf-8")


def _meaning(item: Dataset, key: str = "ConceptNameCodeSequence") -> str:
    for code in item.get(key, []) or []:
        return str(code.get("CodeMeaning", "") or code.get("CodeValue", "") or "")
    return ""


def _value(item: Dataset) -> str:
    vt = str(item.get("ValueType", ""))
    if vt == "TEXT":
        return text_html(str(item.get("TextValue", "")))
    if vt == "CODE":
        return text_html(_meaning(item, "ConceptCodeSequence"))
    if vt == "NUM":
        parts = []
        for mv in item.get("MeasuredValueSequence", []) or []:
            unit = _meaning(mv, "MeasurementUnitsCodeSequence")
            for code in mv.get("MeasurementUnitsCodeSequence", []) or []:
                unit = str(code.get("CodeValue", "") or unit)  # "mm" rather than "millimeter"
            parts.append(f"{mv.get('NumericValue', '')} {unit}".strip())
        return text_html(", ".join(parts))
    if vt in ("DATE", "TIME", "DATETIME", "PNAME", "UIDREF"):
        key = {
            "DATE": "Date",
            "TIME": "Time",
            "DATETIME": "DateTime",
            "PNAME": "PersonName",
            "UIDREF": "UID",
        }[vt]
        return text_html(str(item.get(key, "")))
    return ""


def sr_html(ds: Dataset, depth: int = 0) -> str:
    """An SR content tree as nested definition lists (containers become headings)."""
    if depth > _MAX_DEPTH:
        return "<p>…</p>"
    out = ['<dl class="sr">']
    for item in ds.get("ContentSequence", []) or []:
        name = text_html(_meaning(item))
        if str(item.get("ValueType", "")) == "CONTAINER":
            out.append(f"<dt>{name}</dt><dd>{sr_html(item, depth + 1)}</dd>")
        else:
            value = _value(item)
            children = sr_html(item, depth + 1) if item.get("ContentSequence") else ""
            out.append(f"<dt>{name}</dt><dd>{value}{children}</dd>")
    out.append("</dl>")
    return "".join(out)


def _pdf_of(content: ContentStore, report: Report) -> bytes:
    path = content.path(report.body_path)
    if report.source == "hl7":
        return path.read_bytes()
    ds = pydicom.dcmread(path)
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length else data.rstrip(b"\0")


def render_report(content: ContentStore, report: Report, language: str) -> tuple[str, bytes]:
    """(extension, bytes) of one report: ``PDF`` as received, or an ``HTM`` page."""
    if report.kind == "pdf":
        return "PDF", _pdf_of(content, report)
    if report.kind == "sr":
        ds = pydicom.dcmread(Path(content.path(report.body_path)))
        return "HTM", _page(language, report, sr_html(ds))
    text = content.path(report.body_path).read_text("utf-8")
    return "HTM", _page(language, report, f"<p>{text_html(text)}</p>")


def report_files(
    s: Session, content: ContentStore, study_uids: Iterable[str], language: str
) -> list[ReportFile]:
    """The ``REPORT/`` files of these studies' current reports (none: an empty list).
    Raises OSError (or pydicom's errors) when a report's body cannot be read."""
    files = []
    for n, report in enumerate(current_reports(s, study_uids), start=1):
        ext, data = render_report(content, report, language)
        files.append(ReportFile(f"{FOLDER}/RPT{n:03d}.{ext}", data, report.id))
    return files
