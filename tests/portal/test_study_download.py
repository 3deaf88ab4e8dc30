"""Per-study downloads: a request of two stored studies offers each alone, built once on
first request from the content store, served like a part (Range, HEAD, completion
audited), refused like any bad file URL, and a clear page when the store lost a file."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import select, update

from delivery.packaging.items import package_items
from delivery.packaging.package import PackageInfo, build_package
from portal import studyzip
from portal.filespage import human_size
from portal.http import SECURITY_HEADERS
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Grant, Instance, Package, RequestState, Study
from tests import synthetic
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig, sign_in

# The rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package

# Two synthetic studies in the store: (accession, date, description), page order.
STUDIES = (("ACC1001", "20260110", "CT HEAD"), ("ACC1002", "20260220", "CT CHEST"))


@dataclass
class Stored:
    """A rig whose package folder and content store are this test's own."""

    rig: Rig
    content: ContentStore
    uids: list[str]  # in page order

    def patient(self, uids: list[str] | None = None) -> Patient:
        """A notified request of ``uids`` (default: both studies) with its real package,
        built from the store as the batch builds it."""
        uids = self.uids if uids is None else uids
        with self.rig.db.sessions() as s:
            ids = [s.scalars(select(Study.id).where(Study.study_uid == u)).one() for u in uids]
        p = self.rig.patient(study_ids=ids)
        folder = f"PKG-{p.request_id}"
        result = build_package(
            package_items(self.rig.db.sessions, self.content, p.request_id),
            self.rig.ctx.package_dir / folder,
            info=PackageInfo(folder, "en", "", self.rig.clock()),
        )
        parts = [
            {"name": path.name, "size": n, "sha256": h}
            for path, n, h in zip(result.parts, result.part_bytes, result.part_sha256, strict=True)
        ]
        with self.rig.db.sessions() as s, s.begin():
            s.execute(
                update(Package)
                .where(Package.request_id == p.request_id)
                .values(folder=folder, parts=json.dumps(parts), size_bytes=result.total_bytes)
            )
        return p

    def signed_in(self, p: Patient) -> TestClient:
        c = self.rig.client()
        sign_in(self.rig, c, p.token)
        return c

    def folder(self, p: Patient) -> Path:
        """Where the request's study ZIPs go."""
        return self.rig.ctx.package_dir / f"PKG-{p.request_id}" / studyzip.STUDIES_FOLDER

    def instances(self, uid: str) -> dict[str, bytes]:
        """The stored files of study ``uid``, by SOP Instance UID."""
        with self.rig.db.sessions() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.path)
                .join(Study, Study.id == Instance.study_id)
                .where(Study.study_uid == uid)
            ).all()
        return {sop: self.content.path(rel).read_bytes() for sop, rel in rows}


@pytest.fixture
def stored(rig: Rig, tmp_path: Path) -> Stored:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    for accession, _date, _desc in STUDIES:
        for path in synthetic.make_small_instances(
            tmp_path / "src" / accession, n=4, n_series=2, accession=accession
        ):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = content.instance_relpath(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            content.path(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, content.path(rel))
    recover(content, rig.db.sessions, Catalog(rig.db.sessions, clock=rig.clock))
    uids = []
    with rig.db.sessions() as s, s.begin():
        for accession, date, desc in STUDIES:
            study = s.scalars(select(Study).where(Study.accession_number == accession)).one()
            study.study_date, study.study_description = date, desc
            uids.append(study.study_uid)
    rig.ctx.package_dir = tmp_path / "packages"
    rig.ctx.content = content
    return Stored(rig, content, uids)


def _entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _audited(rig: Rig, request_id: int) -> list[str]:
    return [e.reason for e in rig.events(request_id) if e.reason.startswith("downloaded")]


def test_each_study_downloads_alone_byte_identical_with_its_own_dicomdir(
    stored: Stored,
) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    page = c.get("/files").text
    assert 'id="download-study-1" href="/files/study/1"' in page
    assert 'id="download-study-2" href="/files/study/2"' in page
    assert "ZIP)" not in page.split('id="download-study-1"')[1].split("</p>")[0]  # not built
    for number, uid in enumerate(stored.uids, start=1):
        r = c.get(f"/files/study/{number}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert r.headers["cache-control"] == "no-store"
        assert f"-S{number}.zip" in r.headers["content-disposition"]
        files = _entries(r.content)
        dicomdir = pydicom.dcmread(io.BytesIO(files.pop("DICOMDIR")))
        records = dicomdir.DirectoryRecordSequence
        assert [x.StudyInstanceUID for x in records if x.DirectoryRecordType == "STUDY"] == [uid]
        listed = {
            x.ReferencedSOPInstanceUIDInFile for x in records if x.DirectoryRecordType == "IMAGE"
        }
        expected = stored.instances(uid)
        assert listed == set(expected)
        dicoms = {
            pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID: data
            for name, data in files.items()
            if not name.startswith(("README", "MANIFEST", "PREVIEW/", "VIEWER/"))
        }
        assert dicoms == expected  # only that study's instances, byte for byte
        assert {"README.txt", "README.html", "MANIFEST.json"} <= set(files)
    page = c.get("/files").text
    for number in (1, 2):
        link = page.split(f'id="download-study-{number}"')[1].split("</p>")[0]
        assert "ZIP)" in link  # its size, now that it is built
    reasons = _audited(stored.rig, p.request_id)
    assert [r.split(" (")[0] for r in reasons] == ["downloaded study 1", "downloaded study 2"]


def test_completion_is_audited_and_is_the_first_download(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    assert c.get("/files/study/2").status_code == 200
    reasons = _audited(stored.rig, p.request_id)
    assert len(reasons) == 1
    assert reasons[0].startswith("downloaded study 2 (") and reasons[0].endswith(
        "-S2.zip) (download 1)"
    )
    assert stored.rig.grant(p.grant_id).downloads == 1
    moved = [e for e in stored.rig.events(p.request_id) if e.to_state == RequestState.DOWNLOADED]
    assert len(moved) == 1 and moved[0].from_state == RequestState.NOTIFIED


def test_range_resumes_and_head_sends_nothing_and_records_nothing(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    head = c.head("/files/study/1")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["accept-ranges"] == "bytes"
    size = int(head.headers["content-length"])
    assert stored.rig.grant(p.grant_id).downloads == 0 and not _audited(stored.rig, p.request_id)
    first = c.get("/files/study/1", headers={"Range": f"bytes=0-{size // 2 - 1}"})
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-{size // 2 - 1}/{size}"
    assert stored.rig.grant(p.grant_id).downloads == 0  # not complete yet
    rest = c.get("/files/study/1", headers={"Range": f"bytes={size // 2}-"})
    assert rest.status_code == 206 and rest.headers["cache-control"] == "no-store"
    assert rest.headers["content-range"] == f"bytes {size // 2}-{size - 1}/{size}"
    whole = c.get("/files/study/1").content
    assert first.content + rest.content == whole
    assert stored.rig.grant(p.grant_id).downloads == 2  # the resumed one, then the whole


def _same_as_unknown_file(c: TestClient, path: str) -> None:
    """``path`` answers exactly what an unknown package file answers (status and body)."""
    unknown = c.get("/files/package/nope.zip")
    r = c.get(path)
    assert (r.status_code, r.content) == (unknown.status_code, unknown.content), path
    assert b"PK" not in r.content[:2]


BAD_POSITIONS = ["0", "3", "99", "-1", "+1", "01", "1.0", "abc", "%201", "1%00", "9" * 40]


def test_bad_positions_get_the_answer_of_any_unknown_file(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    assert c.get("/files/package/nope.zip").status_code == 404
    for n in BAD_POSITIONS:
        _same_as_unknown_file(c, f"/files/study/{n}")
    assert not stored.folder(p).exists()  # nothing was built


def test_no_session_or_another_grants_session_gets_nothing(stored: Stored) -> None:
    two = stored.patient()
    one = stored.patient(stored.uids[:1])
    anonymous = stored.rig.client()
    for path in ("/files/study/1", "/files/study/2"):
        r = anonymous.get(path)
        unknown = anonymous.get("/files/package/nope.zip")
        assert r.status_code == unknown.status_code == 401 and b"PK" not in r.content[:2]
    # The single-study patient's session: its own request has no per-study downloads,
    # and positions never reach another request's studies.
    c = stored.signed_in(one)
    for path in ("/files/study/1", "/files/study/2"):
        _same_as_unknown_file(c, path)
    assert not stored.folder(two).exists() and not stored.folder(one).exists()


def test_a_single_study_request_offers_no_per_study_download(stored: Stored) -> None:
    p = stored.patient(stored.uids[1:])
    page = stored.signed_in(p).get("/files").text
    assert 'id="download-all"' in page and "/files/study/" not in page


def test_without_a_content_store_no_per_study_download_is_offered(stored: Stored) -> None:
    p = stored.patient()
    stored.rig.ctx.content = None
    c = stored.signed_in(p)
    assert "/files/study/" not in c.get("/files").text
    _same_as_unknown_file(c, "/files/study/1")


def test_concurrent_first_requests_build_once(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    cookies = dict(c.cookies)
    builds = []
    real = build_package

    def counted(*args: Any, **kw: Any) -> Any:
        builds.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(studyzip, "build_package", counted)
    start = threading.Barrier(5)
    bodies: list[bytes] = []

    def fetch() -> None:
        client = stored.rig.client()
        client.cookies.update(cookies)
        start.wait(30)
        r = client.get("/files/study/2")
        assert r.status_code == 200
        bodies.append(r.content)

    threads = [threading.Thread(target=fetch) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(bodies) == 5 and len(set(bodies)) == 1
    assert len(builds) == 1
    left = [x.name for x in stored.folder(p).rglob("*")]
    assert [x for x in left if x.endswith(".zip")] == [_name(stored, p, 2)]
    assert not [x for x in left if x.endswith(".partial")]
    assert stored.rig.grant(p.grant_id).downloads == 5


def _name(stored: Stored, p: Patient, number: int) -> str:
    with stored.rig.db.sessions() as s:
        package = s.scalars(select(Package).where(Package.request_id == p.request_id)).one()
        target = studyzip.study_zip(stored.rig.ctx, s, package, number)
    assert target is not None
    return target.name


def _delete_a_file(stored: Stored, uid: str) -> None:
    with stored.rig.db.sessions() as s:
        rel = s.scalars(
            select(Instance.path).join(Study).where(Study.study_uid == uid).limit(1)
        ).one()
    stored.content.path(rel).unlink()


def _flag_a_file_missing(stored: Stored, uid: str) -> None:
    with stored.rig.db.sessions() as s, s.begin():
        study_id = s.scalars(select(Study.id).where(Study.study_uid == uid)).one()
        first = s.scalars(select(Instance.id).where(Instance.study_id == study_id)).first()
        s.execute(update(Instance).where(Instance.id == first).values(file_missing=True))


@pytest.mark.parametrize("lose", [_delete_a_file, _flag_a_file_missing])
def test_a_lost_instance_gives_a_clear_page_and_writes_nothing(
    stored: Stored,
    lose: Callable[[Stored, str], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    lose(stored, stored.uids[1])
    caplog.set_level(logging.INFO)
    r = c.get("/files/study/2")
    assert r.status_code == 503 and 'id="study-unavailable"' in r.text
    assert 'id="download-all"' in r.text  # what the patient can do instead
    assert not stored.folder(p).exists()
    assert stored.rig.grant(p.grant_id).downloads == 0
    logged = [x for x in caplog.records if x.name == "courier.portal.download"]
    assert len(logged) == 1
    text = logged[0].getMessage()
    assert f"request {p.request_id}:" in text and stored.uids[1] in text
    for secret in ("Test^Patient", "MRN-000123", "patient@example.org", "SYN0002"):
        assert secret not in text
    assert synthetic.PATIENT_NAME not in text
    assert c.get("/files/study/1").status_code == 200  # the other study is intact


def test_a_link_that_expires_during_the_build_leaves_nothing(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    folder = stored.rig.ctx.package_dir / f"PKG-{p.request_id}"

    def expire_meanwhile(*args: Any, **kw: Any) -> Any:
        # What the batch's expiry does, just as the build starts: mark the row, then
        # delete the folder, which the build then makes again for its ZIP.
        with stored.rig.db.sessions() as s, s.begin():
            s.execute(
                update(Package)
                .where(Package.request_id == p.request_id)
                .values(deleted_at=stored.rig.clock())
            )
        shutil.rmtree(folder)
        return build_package(*args, **kw)

    monkeypatch.setattr(studyzip, "build_package", expire_meanwhile)
    r = c.get("/files/study/1")
    assert r.status_code == 401 and b"PK" not in r.content[:2]  # the link is dead now
    assert not folder.exists()
    assert stored.rig.grant(p.grant_id).downloads == 0


def test_a_rebuilt_package_gets_study_zips_of_its_own(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    assert c.get("/files/study/1").status_code == 200
    first = {x for x in stored.folder(p).rglob("*.zip")}
    with stored.rig.db.sessions() as s, s.begin():
        old = s.scalars(select(Package).where(Package.request_id == p.request_id)).one()
        rebuilt = Package(
            request_id=p.request_id,
            folder=old.folder,
            parts=old.parts,
            studies=old.studies,
            instances=old.instances,
            size_bytes=old.size_bytes,
            built_at=datetime(2026, 3, 3, tzinfo=UTC),
        )
        s.add(rebuilt)
        s.flush()
        grant = s.get(Grant, p.grant_id)
        assert grant is not None
        grant.package_id = rebuilt.id
    assert c.get("/files/study/1").status_code == 200
    now = {x for x in stored.folder(p).rglob("*.zip")}
    assert len(now) == 2 and first < now  # built again, under the new package's folder


def test_the_page_speaks_arabic_right_to_left(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    page = c.get("/files?lang=ar").text
    assert 'dir="rtl"' in page and "تنزيل هذه الدراسة" in page
    _delete_a_file(stored, stored.uids[0])
    r = c.get("/files/study/1")
    assert r.status_code == 503 and "لا يمكن تنزيل هذه الدراسة وحدها الآن" in r.text


def test_every_answer_carries_the_security_headers(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    answers: list[Response] = [
        c.get("/files"),
        c.get("/files/study/1"),
        c.head("/files/study/1"),
        c.get("/files/study/1", headers={"Range": "bytes=0-99"}),
        c.get("/files/study/1", headers={"Range": "bytes=999999999-"}),
        c.get("/files/study/9"),
        c.get("/files/study/abc"),
        stored.rig.client().get("/files/study/1"),
    ]
    _delete_a_file(stored, stored.uids[1])
    answers.append(c.get("/files/study/2"))
    for r in answers:
        for name, value in SECURITY_HEADERS:
            assert r.headers.get(name.decode()) == value.decode(), (r.request.url, name)
        assert r.headers["strict-transport-security"].startswith("max-age=")
    assert [r.status_code for r in answers] == [200, 200, 200, 206, 416, 404, 404, 401, 503]


def test_the_size_shown_is_the_built_files(stored: Stored) -> None:
    p = stored.patient()
    c = stored.signed_in(p)
    body = c.get("/files/study/1").content
    (path,) = stored.folder(p).rglob("*-S1.zip")
    assert path.read_bytes() == body
    shown = c.get("/files").text.split('id="download-study-1"')[1].split("</p>")[0]
    assert f"({human_size(len(body), 'en')}, ZIP)" in shown


def test_a_study_zip_renders_previews_within_the_nodes_limits(stored: Stored) -> None:
    """The per-study ZIP is built with node.yaml's delivery.preview_* limits, like the
    batch's packages: over the pixel budget there is no preview, the manifest says why,
    and the ZIP is built anyway."""
    ctx = stored.rig.ctx
    ctx.delivery = ctx.delivery.model_copy(update={"preview_max_pixels": 16})
    p = stored.patient()
    files = _entries(stored.signed_in(p).get("/files/study/1").content)
    assert not [name for name in files if name.startswith("PREVIEW/")]
    manifest = json.loads(files["MANIFEST.json"])
    assert all(not s["preview"] for s in manifest["series"])
    assert all("over the limit" in s["preview_note"] for s in manifest["series"])
