"""The viewer lists the package's radiology reports (issue 13: with ``delivery.reports:
with_images`` "the viewer lists it"): plain links to the files page's
``/files/report/{n}`` (HTML sandboxed, PDF as received) on every viewer page, only for
a grant whose package carries ``REPORT/`` files, nothing when signed out. The real
portal app, a package built with reports, its study indexed in a content store."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from delivery.packaging.package import PackageInfo, PackageItem, build_package
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Study
from tests import synthetic
from tests.conftest import Database
from tests.portal.patient_rig import BuiltPackage, Patient, Rig, make_rig, sign_in
from tests.ris.reportdata import PDF

ACCESSION = "ACCVR001"
PAGE = b"<!DOCTYPE html><html><body><p>Report &lt;as written&gt;</p></body></html>"


def _package(paths: list[Path], root: Path, name: str, reports: bool) -> BuiltPackage:
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
    files = (("REPORT/RPT001.HTM", PAGE), ("REPORT/RPT002.PDF", PDF)) if reports else ()
    info = PackageInfo(name, "en", "", datetime(2026, 3, 1, tzinfo=UTC), reports=files)
    result = build_package(items, root / name, info=info)
    parts = json.dumps(
        [
            {"name": p.name, "size": n, "sha256": h}
            for p, n, h in zip(result.parts, result.part_bytes, result.part_sha256, strict=True)
        ]
    )
    return BuiltPackage(name, parts, result.total_bytes, items[0].study_uid, len(items), root)


@dataclass
class Setup:
    rig: Rig
    study_uid: str
    reported: Patient  # the package carries REPORT/
    plain: Patient  # the same study, a package without reports

    def client(self, patient: Patient) -> TestClient:
        c = self.rig.client()
        sign_in(self.rig, c, patient.token)
        return c


@pytest.fixture
def setup(db: Database, tmp_path: Path) -> Setup:
    """One CT study (2 series of 2 images) indexed in a content store, and two requests
    for it: one whose package has an HTML and a PDF report, one whose package has none."""
    src = tmp_path / "src"
    paths = synthetic.make_small_instances(src, n=4, n_series=2, accession=ACCESSION)
    root = tmp_path / "packages"
    reported = _package(paths, root, "CR-VREP-0001", reports=True)
    plain = _package(paths, root, "CR-VREP-0002", reports=False)
    rig = make_rig(db, tmp_path, reported, rate_limit_per_min=1000)
    content = ContentStore(tmp_path / "data")
    content.prepare()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, content.path(rel))
    recover(content, rig.db.sessions, Catalog(rig.db.sessions, clock=rig.clock))
    with rig.db.sessions() as s:
        study = s.scalars(select(Study).where(Study.accession_number == ACCESSION)).one()
        study_id, uid = study.id, study.study_uid
    rig.ctx.content = content
    with_reports = rig.patient(study_ids=[study_id], package=reported)
    without = rig.patient(study_ids=[study_id], package=plain)
    return Setup(rig, uid, with_reports, without)


def _outside_script_only_parts(html: str) -> str:
    """The page without its JavaScript-only tools (hidden until viewer.js shows them)."""
    return re.sub(r'<div class="js-only".*?</div>', "", html, flags=re.S)


def test_the_viewer_lists_the_packages_reports_as_plain_links(setup: Setup) -> None:
    c = setup.client(setup.reported)
    for path in ("/files/view/1/1/1", "/files/view/1/1/2", "/files/view/1/2/1"):
        r = c.get(path)
        assert r.status_code == 200, r.text
        page = _outside_script_only_parts(r.text)
        assert 'id="viewer-reports-heading">Your reports' in page
        assert '<a href="/files/report/1" id="viewer-report-1"' in page
        assert '<a href="/files/report/2" id="viewer-report-2"' in page
        assert "Report 1</a>" in page and "Report 2 (PDF)</a>" in page
        assert "/files/report/3" not in page
        assert setup.study_uid not in page
    # The links are the files page's: same numbers, same files, served the same way.
    files = c.get("/files").text
    assert 'href="/files/report/1"' in files and 'href="/files/report/2"' in files
    html = c.get("/files/report/1")
    assert html.status_code == 200 and html.content == PAGE
    assert html.headers["content-type"].startswith("text/html")
    assert "sandbox" in html.headers["content-security-policy"]
    assert html.headers["x-content-type-options"] == "nosniff"
    pdf = c.get("/files/report/2")
    assert pdf.content == PDF and pdf.headers["content-type"] == "application/pdf"


def test_no_reports_in_the_package_no_reports_in_the_viewer(setup: Setup) -> None:
    c = setup.client(setup.plain)
    page = c.get("/files/view/1/1/1")
    assert page.status_code == 200, page.text
    assert "viewer-reports" not in page.text and "/files/report/" not in page.text
    assert "Your reports" not in page.text
    # The other grant's reports are not this one's: the numbers lead nowhere.
    assert c.get("/files/report/1").status_code == 404


def test_signed_out_no_viewer_and_no_reports(setup: Setup) -> None:
    anonymous = setup.rig.client()
    r = anonymous.get("/files/view/1/1/1")
    assert r.status_code == 401 and "/files/report/" not in r.text
    assert anonymous.get("/files/report/1").content != PAGE
