"""The portal's image viewer without a browser: pages and pictures by position only,
links for every move (no JavaScript needed), presets, 404 for positions that do not
exist, a placeholder for an instance that cannot be drawn, documents listed and opened,
access exactly as downloads, a view audited once per session and study, and the disk
cache beside the package (bounded, gone with it)."""

from __future__ import annotations

import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select, update

from portal import viewer_render
from portal.settings import PortalSettings
from portal.viewer_sr import MAX_DEPTH, MAX_LINES, sr_lines
from release.reports import REPORT_CLASSES
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import AuditEvent, Grant, Instance, Package, Report, Study
from tests import synthetic
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig, sign_in

rig = patient_rig.rig
built_package = patient_rig.built_package

ACCESSION = "ACCV001"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@dataclass
class Viewing:
    rig: Rig
    content: ContentStore
    study_uid: str
    patient: Patient
    folder: Path  # the package's folder

    def client(self) -> TestClient:
        c = self.rig.client()
        sign_in(self.rig, c, self.patient.token)
        return c


def _document(template: Path, out: Path, sop_class: str, series: str, number: int) -> Path:
    """A PDF or SR instance in a series of its own, same patient and study as ``template``."""
    src = pydicom.dcmread(template, stop_before_pixels=True)
    ds = Dataset()
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        setattr(ds, keyword, src.get(keyword, ""))
    ds.StudyDate = src.get("StudyDate", "")
    ds.SeriesInstanceUID = synthetic.synthetic_uid("viewer-doc", series)
    ds.SeriesNumber = 9
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = synthetic.synthetic_uid("viewer-doc", series, number)
    ds.InstanceNumber = number
    if sop_class.endswith("104.1"):
        ds.Modality = "DOC"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = PDF + (b"\0" if len(PDF) % 2 else b"")
    else:
        ds.Modality = "SR"
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = Sequence([_code("Imaging report")])
        finding = Dataset()
        finding.ValueType = "TEXT"
        finding.ConceptNameCodeSequence = Sequence([_code("Finding")])
        finding.TextValue = "No acute abnormality <script>"
        ds.ContentSequence = Sequence([finding])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    return out


def _code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "1", "99TEST", meaning
    return code


@pytest.fixture
def viewing(rig: Rig, tmp_path: Path) -> Viewing:
    """A CT study of two series of 3 images (the first with a 4th, corrupt, instance)
    and a document series (a PDF and a report), in a content store of the test's own."""
    src = tmp_path / "src"
    paths = synthetic.make_small_instances(src, n=6, n_series=2, accession=ACCESSION)
    corrupt = pydicom.dcmread(paths[0])
    corrupt.SOPInstanceUID = synthetic.synthetic_uid("viewer-corrupt")
    corrupt.file_meta.MediaStorageSOPInstanceUID = corrupt.SOPInstanceUID
    corrupt.InstanceNumber = 99
    corrupt.PixelData = b"\0" * 64  # far fewer bytes than 64x64 16-bit values
    corrupt.save_as(src / "corrupt.dcm", enforce_file_format=True)
    paths.append(src / "corrupt.dcm")
    paths.append(_document(paths[0], src / "pdf.dcm", "1.2.840.10008.5.1.4.1.1.104.1", "d", 1))
    paths.append(_document(paths[0], src / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.11", "d", 2))
    content = ContentStore(tmp_path / "data")
    content.prepare()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, content.path(rel))
    recover(content, rig.db.sessions, Catalog(rig.db.sessions, clock=rig.clock))
    with rig.db.sessions() as s, s.begin():
        study = s.scalars(select(Study).where(Study.accession_number == ACCESSION)).one()
        study.study_description = "CT CHEST"
        study_id, uid = study.id, study.study_uid
        # The documents are final reports (as ris.dicom's sweep records them) and the
        # site sends reports with the images: the report policy lets them through.
        docs = s.scalars(
            select(Instance).where(
                Instance.study_id == study_id, Instance.sop_class_uid.in_(REPORT_CLASSES)
            )
        ).all()
        for inst in docs:
            s.add(
                Report(
                    study_instance_uid=uid,
                    status="final",
                    source="dicom",
                    kind="pdf" if inst.sop_class_uid.endswith("104.1") else "sr",
                    received_at=rig.clock(),
                    instance_id=inst.id,
                    sop_instance_uid=inst.sop_instance_uid,
                    body_path=inst.path,
                    body_sha256=inst.sha256,
                    body_size=inst.size_bytes,
                )
            )
    rig.ctx.delivery = rig.ctx.delivery.model_copy(update={"reports": "with_images"})
    p = rig.patient(study_ids=[study_id])
    rig.ctx.package_dir = tmp_path / "packages"
    rig.ctx.content = content
    with rig.db.sessions() as s:
        folder = s.scalars(select(Package.folder).where(Package.request_id == p.request_id)).one()
    (rig.ctx.package_dir / folder).mkdir(parents=True)
    return Viewing(rig, content, uid, p, rig.ctx.package_dir / folder)


def _hrefs(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]*)"', html)


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.width > 0
    return image


def test_the_files_page_offers_view_per_study_and_series(viewing: Viewing) -> None:
    page = viewing.client().get("/files").text
    assert 'id="view-study-1" href="/files/view/1/1/1"' in page
    assert 'href="/files/view/1/2/1"' in page and 'href="/files/view/1/3/1"' in page


def test_image_by_image_with_plain_links_and_presets(viewing: Viewing) -> None:
    c = viewing.client()
    r = c.get("/files/view/1/1/1")
    assert r.status_code == 200, r.text
    page = r.text
    assert 'src="/files/view/1/1/1/image"' in page
    assert 'id="view-next" href="/files/view/1/1/2"' in page
    assert 'id="view-prev" aria-disabled="true"' in page
    assert "Image 1 of 4" in page and "not for diagnosis" in page
    assert '<script src="/static/viewer.js" defer></script>' in page
    for preset in ("soft", "lung", "bone", "brain"):
        assert f'id="preset-{preset}" href="/files/view/1/1/1?w={preset}"' in page
    # Every address is a position or a static file: no UID, nothing about the patient.
    for href in _hrefs(page):
        assert viewing.study_uid not in href and "SYN" not in href
        assert re.fullmatch(r"#main|/[A-Za-z0-9/._-]*(\?[a-z]+=[a-zA-Z0-9-]+)?", href), href
    second = c.get("/files/view/1/1/2?w=lung").text
    assert 'id="view-prev" href="/files/view/1/1/1?w=lung"' in second
    assert 'src="/files/view/1/1/2/image?w=lung"' in second
    assert 'id="preset-lung" href="/files/view/1/1/2?w=lung" data-preset="lung"' in second
    assert 'aria-current="true">Lung' in second
    auto = _jpeg(c.get("/files/view/1/1/2/image").content)
    lung = _jpeg(c.get("/files/view/1/1/2/image?w=lung").content)
    custom = c.get("/files/view/1/1/2/image?c=100&ww=50")
    assert custom.status_code == 200 and custom.headers["content-type"] == "image/jpeg"
    assert auto.tobytes() != lung.tobytes()
    assert (
        c.get("/files/view/1/1/2/image?w=nonsense").content
        == c.get("/files/view/1/1/2/image").content
    )  # an unknown preset is the stored window


@pytest.mark.parametrize(
    "path",
    [
        "/files/view/1/1/5",
        "/files/view/1/1/0",
        "/files/view/1/1/01",
        "/files/view/1/1/-1",
        "/files/view/1/1/x",
        "/files/view/1/4/1",
        "/files/view/2/1/1",
        "/files/view/1/1/5/image",
        "/files/view/1/3/thumb",
        "/files/view/1/3/doc/3",
    ],
)
def test_a_position_that_does_not_exist_is_the_404_page(viewing: Viewing, path: str) -> None:
    r = viewing.client().get(path)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


def test_a_corrupt_instance_is_a_placeholder_never_an_error(viewing: Viewing) -> None:
    c = viewing.client()
    page = c.get("/files/view/1/1/4")
    assert page.status_code == 200
    assert 'id="view-not-drawn"' in page.text and "The download still has it." in page.text
    image = c.get("/files/view/1/1/4/image")
    assert image.status_code == 200
    assert image.content == viewer_render.placeholder(viewer_render.VIEW_SIDE)
    assert 'id="view-not-drawn"' not in c.get("/files/view/1/1/3").text
    thumb = c.get("/files/view/1/2/thumb")  # the series' middle image, small
    assert thumb.status_code == 200 and max(_jpeg(thumb.content).size) <= 128


def test_documents_are_listed_and_opened_not_drawn(viewing: Viewing) -> None:
    c = viewing.client()
    page = c.get("/files/view/1/3/1").text
    assert 'id="view-image"' not in page
    assert 'href="/files/view/1/3/doc/1"' in page and "(PDF)" in page
    assert 'href="/files/view/1/3/doc/2"' in page
    pdf = c.get("/files/view/1/3/doc/1")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content == PDF
    assert "attachment" in pdf.headers["content-disposition"]
    report = c.get("/files/view/1/3/doc/2").text
    assert "Imaging report" in report and "No acute abnormality &lt;script&gt;" in report


def test_documents_over_their_size_cap_are_not_read(
    viewing: Viewing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PDF over MAX_PDF_BYTES or a report over MAX_SR_BYTES (on disk) is never read into
    memory: the page says it cannot be shown here."""
    from portal import viewer

    c = viewing.client()
    monkeypatch.setattr(viewer, "MAX_PDF_BYTES", 64)
    monkeypatch.setattr(viewer, "MAX_SR_BYTES", 64)
    for path in ("/files/view/1/3/doc/1", "/files/view/1/3/doc/2"):
        answer = c.get(path)
        assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
        assert 'id="document-not-shown"' in answer.text
    monkeypatch.setattr(viewer, "MAX_PDF_BYTES", 64 * 1024 * 1024)
    monkeypatch.setattr(viewer, "MAX_SR_BYTES", 16 * 1024 * 1024)
    assert c.get("/files/view/1/3/doc/1").content == PDF
    assert 'id="report"' in c.get("/files/view/1/3/doc/2").text


def test_access_is_the_downloads_no_session_revoked_or_purged(viewing: Viewing) -> None:
    anonymous = viewing.rig.client()
    for path in ("/files/view/1/1/1", "/files/view/1/1/1/image", "/files/view/1/1/thumb"):
        r = anonymous.get(path)
        assert r.status_code == 401 and b"\xff\xd8" not in r.content[:2]
    c = viewing.client()
    assert c.get("/files/view/1/1/1/image").status_code == 200
    with viewing.rig.db.sessions() as s, s.begin():
        s.execute(
            update(Grant)
            .where(Grant.id == viewing.patient.grant_id)
            .values(revoked_at=viewing.rig.clock())
        )
    for path in ("/files/view/1/1/1", "/files/view/1/1/1/image"):
        assert c.get(path).status_code == 401


def test_a_view_is_audited_once_per_session_and_study(viewing: Viewing) -> None:
    rig = viewing.rig

    def audited() -> tuple[list[str], list[AuditEvent]]:
        reasons = [
            e.reason
            for e in rig.events(viewing.patient.request_id)
            if e.reason.startswith("viewed")
        ]
        with rig.db.sessions() as s:
            events = list(s.scalars(select(AuditEvent).where(AuditEvent.detail.like("viewed%"))))
        return reasons, events

    c = viewing.client()
    for path in ("/files/view/1/1/1", "/files/view/1/1/2", "/files/view/1/2/1"):
        assert c.get(path).status_code == 200
    for _ in range(3):
        c.get("/files/view/1/1/3/image")
    reasons, events = audited()
    assert len(reasons) == 1 and reasons[0].startswith("viewed study 1 in the viewer")
    assert len(events) == 1
    event = events[0]
    assert event.kind == "export" and event.event_id == "110106"
    assert event.actor == f"patient:grant-{viewing.patient.grant_id}"
    assert viewing.study_uid in event.study_uids
    viewing.client().get("/files/view/1/1/1")  # another session
    assert len(audited()[0]) == 2


def test_images_and_thumbnails_alone_are_audited_once(viewing: Viewing) -> None:
    """Fetching pictures without the page is a view too: audited once per session and
    study, whatever the number of images."""
    rig = viewing.rig

    def reasons() -> list[str]:
        events = rig.events(viewing.patient.request_id)
        return [e.reason for e in events if e.reason.startswith("viewed")]

    c = viewing.client()
    assert c.get("/files/view/1/1/thumb").status_code == 200
    assert len(reasons()) == 1
    for n in (1, 2, 3):
        assert c.get(f"/files/view/1/1/{n}/image").status_code == 200
    assert len(reasons()) == 1
    other = viewing.client()  # another session, images only
    assert other.get("/files/view/1/1/2/image").status_code == 200
    assert len(reasons()) == 2


def test_busy_renderers_answer_503_with_retry_after(
    viewing: Viewing, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No idle renderer within BUSY_WAIT_S: 503 + Retry-After, not the placeholder."""
    from imaging import RenderLimits

    monkeypatch.setattr(viewer_render, "BUSY_WAIT_S", 0.01)
    busy = viewer_render._Pool(RenderLimits())
    busy._made = viewer_render.POOL_SIZE  # every child lent out, none idle
    with pytest.raises(viewer_render.Busy):
        busy.render(tmp_path / "none.dcm", 0, 64, viewer_render.Voi())

    def render(*_args: object) -> bytes:
        raise viewer_render.Busy

    monkeypatch.setattr(viewer_render._Pool, "render", render)
    c = viewing.client()
    assert c.get("/files/view/1/1/1").status_code == 200  # the page itself still answers
    for path in ("/files/view/1/1/2/image", "/files/view/1/1/thumb"):
        answer = c.get(path)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "2"


def test_pictures_are_cached_beside_the_package_bounded_and_not_after_a_purge(
    viewing: Viewing, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = viewing.client()
    first = c.get("/files/view/1/1/2/image?w=bone").content
    cached = sorted((viewing.folder / "viewer").rglob("*.jpg"))
    assert cached and all(viewing.folder in p.parents for p in cached)
    assert all(viewing.study_uid not in str(p) for p in cached)
    for path in [*cached, cached[0].parent, cached[0].parent.parent]:  # 0600 / 0700
        assert path.stat().st_mode & 0o077 == 0, path
    assert c.get("/files/view/1/1/2/image?w=bone").content == first
    # Bounded: past the limit the oldest go first.
    folder = cached[0].parent
    viewing.rig.ctx.portal = PortalSettings(viewer_cache_mb=1)
    for i in range(30):
        (folder / f"filler-{i}.jpg").write_bytes(b"\0" * 100_000)
    monkeypatch.setattr(viewer_render, "_sizes", viewer_render._Sizes())  # counts again
    c.get("/files/view/1/1/3/image?w=brain")
    assert sum(p.stat().st_size for p in folder.glob("*.jpg")) <= 1_000_000
    # The package's folder gone (purged): nothing is written again.
    shutil.rmtree(viewing.folder)
    assert c.get("/files/view/1/1/1/image?w=lung").status_code == 200
    assert not viewing.folder.exists()


def test_a_hostile_report_is_read_bounded() -> None:
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "x" * 10_000
    deep = item
    for _ in range(100):  # 100 levels
        parent = Dataset()
        parent.ValueType = "CONTAINER"
        parent.ContentSequence = Sequence([deep])
        deep = parent
    wide = Dataset()
    wide.ContentSequence = Sequence([deep] + [item] * 5000)
    lines = sr_lines(wide)
    assert len(lines) <= MAX_LINES
    assert max(line.depth for line in lines) <= MAX_DEPTH
    assert max(len(line.value) for line in lines) <= 2000


def test_trim_removes_the_oldest_first(tmp_path: Path) -> None:
    import os

    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + i, 1000 + i))
    assert viewer_render._trim(tmp_path, 2500) == 2000
    assert sorted(p.name for p in tmp_path.glob("*.jpg")) == ["3.jpg", "4.jpg"]


def test_a_huge_declared_frame_count_indexes_bounded(tmp_path: Path) -> None:
    """A 1x1 instance whose header claims a billion frames is indexed with at most
    MAX_VIEW_FRAMES entries (nothing per declared frame)."""
    from types import SimpleNamespace

    from imaging.info import MAX_VIEW_FRAMES
    from portal.viewer_data import index_rows

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = 1_000_000_000
    ds.PixelData = b"\0\0"
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    ctx = SimpleNamespace(content=SimpleNamespace(path=lambda p: tmp_path / p))
    index = index_rows(ctx, [(1, "huge.dcm", "1")])  # type: ignore[arg-type]
    assert len(index.frames) == MAX_VIEW_FRAMES
    assert index.frames[0].frame == 0 and index.frames[-1].frame == 999_999_999


def test_a_series_index_of_an_older_version_is_rebuilt(viewing: Viewing) -> None:
    """An index kept before the format last changed (version 1: every declared frame,
    before MAX_VIEW_FRAMES) is never served: it is built again and kept anew."""
    import json
    import os

    from portal.viewer_data import _INDEX_VERSION

    assert _INDEX_VERSION >= 2
    c = viewing.client()
    assert "Image 1 of 4" in c.get("/files/view/1/1/1").text
    (kept,) = (viewing.folder / "viewer").rglob("series-*.json")
    doc = json.loads(kept.read_text())
    assert doc["version"] == _INDEX_VERSION
    # The same series as an older node kept it, one image only: must not be believed.
    stale = {**doc, "version": 1, "frames": doc["frames"][:1]}
    kept.write_text(json.dumps(stale))
    os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns + 10**9))
    assert "Image 1 of 4" in c.get("/files/view/1/1/1").text
    assert json.loads(kept.read_text()) == doc
