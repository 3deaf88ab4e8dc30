"""DICOMweb for the recipient's own viewer, driven by the real ``dicomweb-client``
against the portal served by uvicorn on loopback: a signed-in patient (or clinician)
asks for a token on the files page; with it a viewer searches (QIDO-RS) and retrieves
(WADO-RS: instances byte for byte, metadata, frames, renderings) that grant's study and
nothing else; another grant's, a forged, an expired or a revoked token is refused; the
access log names no UID; each study is audited once per token."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from sqlalchemy import select, update

from portal import dicomweb_metadata, viewer_render
from portal.dicomweb_token import base_url, check, issue
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.models import AuditEvent, Grant, Instance, Package, Series, Study
from tests import synthetic
from tests.peers import free_port
from tests.portal import patient_rig
from tests.portal.patient_rig import Patient, Rig, post, sign_in

rig = patient_rig.rig
built_package = patient_rig.built_package

ACCESSIONS = ("ACCDW01", "ACCDW02")


@dataclass
class Served:
    """The rig's app on a real port, with two stored studies of two patients."""

    rig: Rig
    content: ContentStore
    uids: list[str]  # one study per accession
    port: int

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def patient(self, k: int) -> Patient:
        with self.rig.db.sessions() as s:
            study_id = s.scalars(select(Study.id).where(Study.study_uid == self.uids[k])).one()
        return self.rig.patient(study_ids=[study_id])

    def token(self, p: Patient) -> str:
        """Sign in as ``p`` and ask the files page for a token."""
        c = self.rig.client()
        sign_in(self.rig, c, p.token)
        return ask(c)

    def files(self, uid: str) -> dict[str, bytes]:
        with self.rig.db.sessions() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.path)
                .join(Study, Study.id == Instance.study_id)
                .where(Study.study_uid == uid)
            ).all()
        return {sop: self.content.path(rel).read_bytes() for sop, rel in rows}

    def client(self, token: str | None) -> DICOMwebClient:
        session = requests.Session()
        session.trust_env = False  # loopback: no proxy from the environment
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return DICOMwebClient(self.root, session=session, headers=headers)

    def get(self, path: str, token: str | None, **headers: str) -> requests.Response:
        session = requests.Session()
        session.trust_env = False
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return session.get(self.root + path, headers=headers, timeout=30)


def ask(c: object) -> str:
    """POST the "Open in your own viewer" form; the token the page shows."""
    r = post(c, "/files/dicomweb")  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert 'id="dicomweb-url"' in r.text
    match = re.search(r'id="dicomweb-token">([^<]+)<', r.text)
    assert match is not None
    return match.group(1)


@pytest.fixture
def served(rig: Rig, tmp_path: Path) -> Iterator[Served]:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    for k, accession in enumerate(ACCESSIONS):
        paths = synthetic.make_small_instances(
            tmp_path / "src" / accession,
            n=4,
            n_series=2,
            accession=accession,
            patient_id=f"SYNDW{k}",
        )
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = content.instance_relpath(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            content.path(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, content.path(rel))
    recover(content, rig.db.sessions, Catalog(rig.db.sessions, clock=rig.clock))
    with rig.db.sessions() as s:
        uids = [
            s.scalars(select(Study.study_uid).where(Study.accession_number == a)).one()
            for a in ACCESSIONS
        ]
    rig.ctx.content = content
    # A package folder of the test's own: the metadata cache is written into it.
    packages = tmp_path / "packages"
    shutil.copytree(rig.package.root / rig.package.folder, packages / rig.package.folder)
    rig.ctx.package_dir = packages
    port = free_port()
    config = uvicorn.Config(
        rig.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):  # bounded: 400 x 25 ms
        if server.started:
            break
        time.sleep(0.025)
    assert server.started, "uvicorn did not start"
    try:
        yield Served(rig, content, uids, port)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer, as sent."""
    boundary = re.search(r"boundary=([^;\s]+)", response.headers["content-type"])
    assert boundary is not None
    marker = b"--" + boundary.group(1).strip('"').encode()
    out = []
    for chunk in response.content.split(marker)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type:" in head
        out.append(body.removesuffix(b"\r\n"))
    return out


def test_a_viewer_searches_and_retrieves_the_grant_study(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="courier.portal")
    p = served.patient(0)
    token = served.token(p)
    uid = served.uids[0]
    expected = served.files(uid)
    client = served.client(token)

    studies = client.search_for_studies()
    assert [s["0020000D"]["Value"] for s in studies] == [[uid]]
    assert studies[0]["00080050"]["Value"] == [ACCESSIONS[0]]
    assert studies[0]["00201208"]["Value"] == [4]
    assert client.search_for_studies(search_filters={"AccessionNumber": ACCESSIONS[1]}) == []
    series = client.search_for_series(uid)
    assert len(series) == 2
    series_uid = series[0]["0020000E"]["Value"][0]
    found = client.search_for_instances(uid, series_uid)
    assert len(found) == 2
    sop = found[0]["00080018"]["Value"][0]

    # The study, byte for byte: through the client, and as sent on the wire.
    datasets = client.retrieve_study(uid)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(expected)
    r = served.get(f"/studies/{uid}", token, Accept='multipart/related; type="application/dicom"')
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert sorted(_parts(r)) == sorted(expected.values())

    metadata = client.retrieve_study_metadata(uid)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(expected)
    assert all("7FE00010" not in m for m in metadata)
    one = client.retrieve_instance_metadata(uid, series_uid, sop)
    assert one["00280010"]["Value"] == [64]

    pixels = pydicom.dcmread(io.BytesIO(expected[sop])).PixelData
    (frame,) = client.retrieve_instance_frames(uid, series_uid, sop, [1])
    assert frame == pixels
    picture = client.retrieve_instance_rendered(uid, series_uid, sop, media_types=("image/jpeg",))
    with Image.open(io.BytesIO(picture)) as img:
        assert img.format == "JPEG" and img.size == (64, 64)

    # Nothing outside the grant: the other patient's study is unknown here.
    other = served.uids[1]
    assert served.get(f"/studies/{other}", token).status_code == 404
    assert served.get(f"/studies/{other}/metadata", token).status_code == 404
    assert served.get(f"/studies/{other}/series", token).status_code == 404
    assert (
        served.get(f"/studies/{uid}/series/{series_uid}/instances/{other}", token).status_code
        == 404
    )
    assert client.search_for_studies(search_filters={"StudyInstanceUID": other}) == []
    assert (
        served.get(
            f"/studies/{uid}/series/{series_uid}/instances/{sop}/frames/9", token
        ).status_code
        == 404
    )

    # Read-only: a STOW-RS is refused.
    session = requests.Session()
    session.trust_env = False
    r = session.post(
        f"{served.root}/studies", data=b"x", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 405

    # Audited once for the study (however many frames), once for the searches; the
    # token itself is in no event and no log line, nor is any UID.
    events = [e.reason for e in served.rig.events(p.request_id) if "DICOMweb" in e.reason]
    assert len([e for e in events if "issued" in e]) == 1
    assert len([e for e in events if "study 1 retrieved" in e]) == 1
    assert len([e for e in events if "searched" in e]) == 1
    assert all(token not in e for e in events)
    with served.rig.db.sessions() as s:
        kinds = [a.kind for a in s.scalars(select(AuditEvent)) if "DICOMweb" in a.detail]
    assert sorted(kinds) == ["export", "query"]
    logged = caplog.text
    assert "/dicomweb/studies/{uid}/series/{uid}/instances/{uid}/frames/1" in logged
    for secret in (uid, other, series_uid, sop, token):
        assert secret not in logged


def test_each_patient_sees_only_their_own_study(served: Served) -> None:
    tokens = [served.token(served.patient(k)) for k in (0, 1)]
    for k, token in enumerate(tokens):
        studies = served.client(token).search_for_studies()
        assert [s["0020000D"]["Value"][0] for s in studies] == [served.uids[k]]
        assert len(served.client(token).search_for_series()) == 2
        assert len(served.client(token).search_for_instances()) == 4
        theirs = served.uids[1 - k]
        assert served.get(f"/studies/{theirs}", token).status_code == 404


def test_wrong_expired_and_revoked_tokens_are_refused(served: Served) -> None:
    p = served.patient(0)
    token = served.token(p)
    uid = served.uids[0]
    assert served.get("/studies", token).status_code == 200

    r = served.get("/studies", None)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    # A session cookie is no way in: only the bearer token counts.
    assert served.get("/studies", None, Cookie="__Host-session=anything").status_code == 401
    assert served.get("/studies", "cdw1.1.2.nonsense").status_code == 401
    # Another grant's id with this token's signature: forged, 401.
    prefix, grant_id, expires, mac = token.split(".")
    forged = f"{prefix}.{int(grant_id) + 1}.{expires}.{mac}"
    assert served.get("/studies", forged).status_code == 401
    assert served.get(f"/studies/{uid}", forged).status_code == 401
    longer = f"{prefix}.{grant_id}.{int(expires) + 3600}.{mac}"
    assert served.get("/studies", longer).status_code == 401

    # Expired: after portal.dicomweb_token_h hours.
    rig = served.rig
    rig.clock.advance(hours=rig.ctx.portal.dicomweb_token_h, seconds=1)
    r = served.get("/studies", token)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    rig.clock.advance(hours=-rig.ctx.portal.dicomweb_token_h, seconds=-1)
    assert served.get("/studies", token).status_code == 200

    # Revoked with the grant: 403 at once.
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Grant).where(Grant.id == p.grant_id).values(revoked_at=rig.clock()))
    assert served.get("/studies", token).status_code == 403
    assert served.get(f"/studies/{uid}/metadata", token).status_code == 403


def test_a_clinicians_token_ends_when_the_patient_stops_the_share(served: Served) -> None:
    rig = served.rig
    p = served.patient(0)
    patient = rig.client()
    sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    code = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert code is not None
    with rig.db.sessions() as s:
        child = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
        link = rig.keys.token(child)
    gp = rig.client()
    assert gp.get(f"/d/{link}").status_code == 303
    r = post(gp, "/access/verify", code=code.group(1))
    assert r.status_code == 303
    token = ask(gp)
    assert check(rig.keys, token, rig.clock()).grant_id == child.id
    studies = served.client(token).search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [served.uids[0]]
    assert post(patient, f"/files/share/{child.id}/revoke").status_code == 303
    assert served.get("/studies", token).status_code == 403
    # The patient's own token still works.
    assert served.get("/studies", ask(patient)).status_code == 200


def test_cors_preflight_and_answers_for_a_viewer_on_another_origin(served: Served) -> None:
    token = served.token(served.patient(0))
    session = requests.Session()
    session.trust_env = False
    r = session.options(
        f"{served.root}/studies",
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    r = served.get("/studies", token, Origin="https://viewer.example")
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["content-type"].startswith("application/dicom+json")
    assert served.get("/studies", None).headers["access-control-allow-origin"] == "*"


def test_tokens_are_derived_bound_to_grant_and_time(served: Served) -> None:
    rig = served.rig
    p = served.patient(0)
    grant = rig.grant(p.grant_id)
    now = rig.clock()
    token, ends = issue(rig.keys, grant, now, 4)
    assert ends == now + timedelta(hours=4)
    assert check(rig.keys, token, now).status == "ok"
    assert check(rig.keys, token, ends).status == "expired"
    # Never past the grant's own expiry.
    _, capped = issue(rig.keys, grant, grant.expires_at - timedelta(minutes=5), 4)
    assert capped <= grant.expires_at
    # Nothing of the token is stored: no column holds it.
    with rig.db.sessions() as s:
        row = s.get(Grant, p.grant_id)
        assert row is not None
        assert token not in repr(vars(row))


# -- metadata kept on disk -----------------------------------------------------------


def _reference(served: Served, uid: str, series_uid: str) -> list[dict[str, Any]]:
    """The series' metadata as made straight from the files (what every answer equals)."""
    out = []
    for sop, data in served.files(uid).items():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if ds.SeriesInstanceUID != series_uid:
            continue
        url = f"{base_url(served.rig.ctx)}/studies/{uid}/series/{series_uid}/instances/{sop}"
        doc = ds.to_json_dict(
            bulk_data_threshold=64 * 1024,
            bulk_data_element_handler=lambda _e, url=url: url,
            suppress_invalid_tags=True,
        )
        doc["00083002"] = {"vr": "UI", "Value": [ds.file_meta.TransferSyntaxUID]}
        out.append(doc)
    return sorted(out, key=lambda d: d["00080018"]["Value"][0])


def _by_sop(answer: requests.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    return sorted(answer.json(), key=lambda d: d["00080018"]["Value"][0])


def _cache(served: Served, p: Patient) -> Path:
    with served.rig.db.sessions() as s:
        package = s.scalars(select(Package).where(Package.request_id == p.request_id)).one()
        return served.rig.ctx.package_dir / package.folder / "viewer" / str(package.id)


def test_metadata_is_kept_per_instance_and_never_stale(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = served.patient(0)
    token = served.token(p)
    uid = served.uids[0]
    series_uid = served.client(token).search_for_series(uid)[0]["0020000E"]["Value"][0]
    path = f"/studies/{uid}/series/{series_uid}/metadata"

    first = served.get(path, token)
    assert _by_sop(first) == _reference(served, uid, series_uid)
    cache = _cache(served, p)
    kept = sorted(cache.glob("meta-*.meta"))
    assert len(kept) == 2  # one per instance of the series, named by its SHA-256
    assert all(f.stat().st_mode & 0o077 == 0 for f in kept)
    assert all(uid not in f.name and series_uid not in f.name for f in kept)

    # Kept: the second answer is the same bytes, no header read.
    def unread(*_a: object) -> bytes:
        raise AssertionError("the header was read again")

    with monkeypatch.context() as m:
        m.setattr(dicomweb_metadata, "instance_json", unread)
        assert served.get(path, token).content == first.content

    # An instance sent again changed (a new SHA-256 in the index): its new header is
    # served, with a BulkDataURI to it for a large binary value.
    with served.rig.db.sessions() as s, s.begin():
        inst = s.scalars(
            select(Instance)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.series_uid == series_uid)
            .order_by(Instance.id)
        ).first()
        assert inst is not None
        file = served.content.path(inst.path)
        ds = pydicom.dcmread(file)
        ds.SeriesDescription = "CHANGED"
        ds.add_new(0x00091000, "LO", "COURIER TEST")
        ds.add_new(0x00091010, "OB", bytes(70_000))
        ds.save_as(file, enforce_file_format=True)
        inst.sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
        inst.size_bytes = file.stat().st_size  # as the index holds it (else: 206)
        sop = inst.sop_instance_uid
    changed = _by_sop(served.get(path, token))
    assert changed == _reference(served, uid, series_uid)
    doc = next(d for d in changed if d["00080018"]["Value"] == [sop])
    assert doc["0008103E"]["Value"] == ["CHANGED"]
    assert doc["00091010"]["BulkDataURI"] == (
        f"{base_url(served.rig.ctx)}/studies/{uid}/series/{series_uid}/instances/{sop}"
    )
    assert len(list(cache.glob("meta-*.meta"))) == 3  # the old one waits for the trim

    # The package purged: answered all the same, nothing written again.
    shutil.rmtree(
        served.rig.ctx.package_dir / cache.relative_to(served.rig.ctx.package_dir).parts[0]
    )
    assert _by_sop(served.get(path, token)) == changed
    assert not cache.exists()


def test_kept_metadata_counts_against_the_viewer_cache_budget(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = served.patient(0)
    token = served.token(p)
    uid = served.uids[0]
    rig = served.rig
    rig.ctx.portal = rig.ctx.portal.model_copy(update={"viewer_cache_mb": 1})
    cache = _cache(served, p)
    cache.mkdir(parents=True, exist_ok=True)
    for i in range(30):  # older files of the cache: 3 MB, past the 1 MB budget
        filler = cache / (f"filler-{i}.meta" if i % 2 else f"filler-{i}.jpg")
        filler.write_bytes(b"\0" * 100_000)
        os.utime(filler, (1_000_000 + i, 1_000_000 + i))
    monkeypatch.setattr(viewer_render, "_sizes", viewer_render._Sizes())  # counts again
    assert served.get(f"/studies/{uid}/metadata", token).status_code == 200
    held = [f for f in cache.iterdir() if f.name.endswith((".jpg", ".meta"))]
    assert sum(f.stat().st_size for f in held) <= 1_000_000
    assert len(list(cache.glob("meta-*.meta"))) == 4  # the newest: the study's 4 instances
