"""The files page lists the package's reports and opens them (portal.reports_page): a
package built with ``REPORT/`` files, the real portal app, a signed-in patient."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from delivery.packaging.package import PackageInfo, PackageItem, build_package
from tests import synthetic
from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import BuiltPackage, Rig, make_rig, sign_in
from tests.ris.reportdata import PDF

rig = patient_rig.rig
built_package = patient_rig.built_package
PAGE = b"<!DOCTYPE html><html><body><p>Report &lt;as written&gt;</p></body></html>"


@pytest.fixture(scope="module")
def reported_package(tmp_path_factory: pytest.TempPathFactory) -> BuiltPackage:
    src = tmp_path_factory.mktemp("instances")
    paths = synthetic.make_small_instances(src, n=2, n_series=1)
    items = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        items.append(
            PackageItem(
                path=p,
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                modality="CT",
            )
        )
    root = tmp_path_factory.mktemp("packages")
    info = PackageInfo(
        "CR-REPT-0001",
        "en",
        "",
        datetime(2026, 3, 1, tzinfo=UTC),
        reports=(("REPORT/RPT001.HTM", PAGE), ("REPORT/RPT002.PDF", PDF)),
    )
    result = build_package(items, root / "CR-REPT-0001", info=info)
    parts = json.dumps(
        [
            {"name": p.name, "size": n, "sha256": h}
            for p, n, h in zip(result.parts, result.part_bytes, result.part_sha256, strict=True)
        ]
    )
    return BuiltPackage(
        "CR-REPT-0001", parts, result.total_bytes, items[0].study_uid, len(items), root
    )


def test_files_page_lists_and_opens_the_reports(
    db: Database, reported_package: BuiltPackage, tmp_path: Path
) -> None:
    rig = make_rig(db, tmp_path, reported_package, rate_limit_per_min=1000)
    p = rig.patient(package=reported_package)
    client: TestClient = rig.client()
    sign_in(rig, client, p.token)
    page = client.get("/files")
    assert page.status_code == 200
    assert "Your reports" in page.text
    assert 'href="/files/report/1"' in page.text and 'href="/files/report/2"' in page.text
    assert "Report 2 (PDF)" in page.text
    html = client.get("/files/report/1")
    assert html.status_code == 200 and html.content == PAGE
    assert html.headers["content-type"].startswith("text/html")
    assert "sandbox" in html.headers["content-security-policy"]
    assert html.headers["x-content-type-options"] == "nosniff"
    pdf = client.get("/files/report/2")
    assert pdf.content == PDF and pdf.headers["content-type"] == "application/pdf"
    assert client.get("/files/report/3").status_code == 404
    assert client.get("/files/report/0").status_code == 404
    # Signed out: nothing.
    other = rig.client()
    assert other.get("/files/report/1").content != PAGE


def test_no_reports_no_section(rig: Rig) -> None:
    p = rig.patient()
    client = rig.client()
    sign_in(rig, client, p.token)
    page = client.get("/files")
    assert page.status_code == 200 and "Your reports" not in page.text
