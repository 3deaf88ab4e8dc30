"""Report instances the PACS pushes with a study (Text SR, Encapsulated PDF) reach the
recipient only under the report policy, one rule (:func:`release.reports.withheld_instances`)
in every way a study's instances go out: the package's items (ZIP, DICOMDIR, offline
viewer, disc), the portal viewer and DICOMweb. A preliminary never goes; under
``reports: never`` no report instance goes; under ``with_images`` a current final
report's instance goes; one the sweep has not recorded yet is withheld. Both databases."""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.packaging.items import package_items
from delivery.packaging.package import PackageInfo, build_package
from release.reports import (
    ENCAPSULATED_CDA,
    EXTENSIBLE_SR,
    REPORT_CLASSES,
    studies_with_reports,
    withheld_instances,
)
from ris.dicom import DicomReports
from ris.reports import ReportBook
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Instance, Package, Report, Study
from tests import synthetic
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig, post, sign_in
from tests.ris.reportdata import make_pdf, make_sr

rig = patient_rig.rig
built_package = patient_rig.built_package

ACC = "ACCWH01"
CT_IMAGES = 3


@dataclass
class Stored:
    rig: Rig
    content: ContentStore
    study_uid: str
    study_id: int
    src: Path

    def push(self, *paths: Path, sweep: bool = True) -> None:
        """Store ``paths`` as the SCP would (content store + index), then let the
        report sweep record them (unless ``sweep`` is False)."""
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = self.content.instance_relpath(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            self.content.path(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.content.path(rel))
        sessions = self.rig.db.sessions
        recover(self.content, sessions, Catalog(sessions, clock=self.rig.clock))
        if sweep:
            DicomReports(sessions, self.content, ReportBook(sessions, self.content)).sweep()

    def policy(self, reports: str) -> Callable[[Session, int], list[str]]:
        """The site's ``delivery.reports`` (no rule override) for the portal and the
        package alike."""
        self.rig.ctx.delivery = self.rig.ctx.delivery.model_copy(update={"reports": reports})
        return lambda s, rid: studies_with_reports(s, rid, None, reports)

    def sop_classes_of(self, sop_uids: set[str]) -> set[str]:
        with self.rig.db.sessions() as s:
            return set(
                s.scalars(
                    select(Instance.sop_class_uid).where(Instance.sop_instance_uid.in_(sop_uids))
                )
            )


@pytest.fixture
def stored(rig: Rig, tmp_path: Path) -> Stored:
    src = tmp_path / "src"
    ct = synthetic.make_small_instances(
        src, n=CT_IMAGES, n_series=1, accession=ACC, patient_id="SYNWH01"
    )
    content = ContentStore(tmp_path / "data")
    content.prepare()
    rig.ctx.content = content
    rig.ctx.package_dir = tmp_path / "packages"
    out = Stored(rig, content, str(pydicom.dcmread(ct[0]).StudyInstanceUID), 0, src)
    out.push(*ct, sweep=False)
    with rig.db.sessions() as s:
        out.study_id = s.scalars(select(Study.id).where(Study.study_uid == out.study_uid)).one()
    return out


def _patient(st: Stored) -> tuple[Patient, TestClient]:
    p = st.rig.patient(study_ids=[st.study_id])
    with st.rig.db.sessions() as s:
        folder = s.scalars(select(Package.folder).where(Package.request_id == p.request_id)).one()
    (st.rig.ctx.package_dir / folder).mkdir(parents=True, exist_ok=True)
    c = st.rig.client()
    sign_in(st.rig, c, p.token)
    return p, c


def _zip_sops(
    st: Stored, p: Patient, report_studies: Callable[[Session, int], list[str]]
) -> set[str]:
    """The SOP Instance UIDs a package of the request holds (items, built ZIP)."""
    items = package_items(
        st.rig.db.sessions, st.content, p.request_id, report_studies=report_studies
    )
    info = PackageInfo(reference="CR-WH-1", language="en", contact="x", created=st.rig.clock())
    result = build_package(items, st.src.parent / "zip" / str(p.request_id), info=info)
    assert result.instances == len(items)  # withheld ones are not counted (nor missing)
    with zipfile.ZipFile(result.parts[0]) as z:
        in_zip = [n for n in z.namelist() if n.startswith("PT")]
    assert len(in_zip) == len(items)
    return {i.sop_instance_uid for i in items}


def _viewer_documents(c: TestClient) -> tuple[int, str]:
    """How many series the viewer offers for study 1, and the last series' page."""
    page = c.get("/files").text
    n = 0
    while f'href="/files/view/1/{n + 1}/1"' in page:
        n += 1
    last = c.get(f"/files/view/1/{n}/1").text if n else ""
    return n, last


def _dicomweb_sops(c: TestClient, study_uid: str) -> set[str]:
    r = post(c, "/files/dicomweb")
    token = re.search(r'id="dicomweb-token">([^<]+)<', r.text)
    assert token is not None
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    found = c.get(f"/dicomweb/studies/{study_uid}/instances", headers=bearer)
    assert found.status_code == 200, found.text[:300]
    sops = {x["00080018"]["Value"][0] for x in found.json()}
    # The study and series searches count and name only what the instances list shows.
    [study] = c.get("/dicomweb/studies", headers=bearer).json()
    modalities = study.get("00080061", {}).get("Value", [])
    assert "SR" not in modalities or "SR" in _web_modalities(c, bearer, study_uid)
    assert int(study["00201208"]["Value"][0]) == len(sops)
    series = c.get(f"/dicomweb/studies/{study_uid}/series", headers=bearer).json()
    assert sum(int(x["00201209"]["Value"][0]) for x in series) == len(sops)
    return sops


def _web_modalities(c: TestClient, bearer: dict[str, str], study_uid: str) -> set[str]:
    series = c.get(f"/dicomweb/studies/{study_uid}/series", headers=bearer).json()
    return {x["00080060"]["Value"][0] for x in series if x.get("00080060", {}).get("Value")}


def test_a_preliminary_sr_goes_nowhere(stored: Stored) -> None:
    draft, draft_uid = make_sr(
        stored.src,
        stored.study_uid,
        patient_id="SYNWH01",
        accession=ACC,
        completion="PARTIAL",
        verification="UNVERIFIED",
    )
    stored.push(draft)
    policy = stored.policy("with_images")
    p, c = _patient(stored)

    sops = _zip_sops(stored, p, policy)
    assert len(sops) == CT_IMAGES and draft_uid not in sops
    series, _ = _viewer_documents(c)
    assert series == 1  # the CT only: the SR's series is not offered
    assert c.get("/files/view/1/2/1").status_code == 404
    web = _dicomweb_sops(c, stored.study_uid)  # counts only the images (see there)
    assert len(web) == CT_IMAGES and draft_uid not in web
    token = re.search(r'id="dicomweb-token">([^<]+)<', post(c, "/files/dicomweb").text)
    assert token is not None
    [study] = c.get(
        "/dicomweb/studies", headers={"Authorization": f"Bearer {token.group(1)}"}
    ).json()
    assert "SR" not in study["00080061"]["Value"]
    assert int(study["00201208"]["Value"][0]) == CT_IMAGES


def test_never_sends_no_report_instance(stored: Stored) -> None:
    sr, sr_uid = make_sr(stored.src, stored.study_uid, patient_id="SYNWH01", accession=ACC)
    pdf, pdf_uid = make_pdf(stored.src, stored.study_uid, patient_id="SYNWH01", accession=ACC)
    stored.push(sr, pdf)
    policy = stored.policy("never")
    p, c = _patient(stored)

    sops = _zip_sops(stored, p, policy)
    assert len(sops) == CT_IMAGES and not {sr_uid, pdf_uid} & sops
    assert not stored.sop_classes_of(sops) & set(REPORT_CLASSES)
    series, _ = _viewer_documents(c)
    assert series == 1
    web = _dicomweb_sops(c, stored.study_uid)
    assert len(web) == CT_IMAGES and not {sr_uid, pdf_uid} & web
    # A package built without a policy at all (None) withholds every report instance.
    items = package_items(stored.rig.db.sessions, stored.content, p.request_id)
    assert {i.sop_instance_uid for i in items} == sops


def test_with_images_sends_the_final_sr(stored: Stored) -> None:
    sr, sr_uid = make_sr(stored.src, stored.study_uid, patient_id="SYNWH01", accession=ACC)
    stored.push(sr)
    policy = stored.policy("with_images")
    p, c = _patient(stored)

    sops = _zip_sops(stored, p, policy)
    assert len(sops) == CT_IMAGES + 1 and sr_uid in sops
    series, last = _viewer_documents(c)
    assert series == 2 and 'href="/files/view/1/2/doc/1"' in last
    web = _dicomweb_sops(c, stored.study_uid)
    assert len(web) == CT_IMAGES + 1 and sr_uid in web


def test_an_unrecorded_report_instance_and_a_replaced_one_are_withheld(stored: Stored) -> None:
    first, first_uid = make_sr(
        stored.src,
        stored.study_uid,
        patient_id="SYNWH01",
        accession=ACC,
        verification="UNVERIFIED",
    )
    final, final_uid = make_sr(
        stored.src, stored.study_uid, patient_id="SYNWH01", accession=ACC, predecessor=first_uid
    )
    stored.push(first, final, sweep=False)  # the sweep has not run: nothing is known
    ids = {}
    with stored.rig.db.sessions() as s:
        for inst in s.scalars(select(Instance).where(Instance.study_id == stored.study_id)):
            ids[inst.sop_instance_uid] = inst.id
        held = withheld_instances(s, [stored.study_id], [stored.study_uid])
    assert held == {ids[first_uid], ids[final_uid]}
    sessions = stored.rig.db.sessions
    DicomReports(sessions, stored.content, ReportBook(sessions, stored.content)).sweep()
    with sessions() as s:
        assert withheld_instances(s, [stored.study_id], [stored.study_uid]) == {ids[first_uid]}
        both = withheld_instances(s, [stored.study_id], [])  # never: all report instances
        assert both == {ids[first_uid], ids[final_uid]}


def _cda(st: Stored) -> tuple[Path, str]:
    """An Encapsulated CDA instance (made from a PDF instance: class, MIME type, body)."""
    path, uid = make_pdf(st.src, st.study_uid, patient_id="SYNWH01", accession=ACC)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ENCAPSULATED_CDA
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_CDA
    ds.MIMETypeOfEncapsulatedDocument = "text/XML"
    ds.EncapsulatedDocument = b"<ClinicalDocument>synthetic</ClinicalDocument>\n"
    ds.save_as(path, enforce_file_format=True)
    return path, uid


def test_extensible_sr_preliminary_and_a_cda_are_withheld(stored: Stored) -> None:
    draft, draft_uid = make_sr(
        stored.src,
        stored.study_uid,
        patient_id="SYNWH01",
        accession=ACC,
        completion="PARTIAL",
        verification="UNVERIFIED",
        sop_class=EXTENSIBLE_SR,
    )
    cda, cda_uid = _cda(stored)
    stored.push(draft, cda)
    assert stored.sop_classes_of({draft_uid, cda_uid}) == {EXTENSIBLE_SR, ENCAPSULATED_CDA}
    policy = stored.policy("with_images")
    p, c = _patient(stored)

    sops = _zip_sops(stored, p, policy)
    assert len(sops) == CT_IMAGES and not {draft_uid, cda_uid} & sops
    web = _dicomweb_sops(c, stored.study_uid)
    assert len(web) == CT_IMAGES and not {draft_uid, cda_uid} & web
    with stored.rig.db.sessions() as s:
        # The SR is recorded (a preliminary), the CDA never: it can never be current.
        assert [r.sop_instance_uid for r in s.scalars(select(Report))] == [draft_uid]
