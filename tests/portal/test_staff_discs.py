"""The CD burn queue on the staff pages: mark for CD, the dashboard's burn queue, write
the disc image (synthetic studies stored by the real ingest), download it, mark it
burned (audited), cancel it; bad input refused with nothing written. Both databases,
over TestClient (loopback, no network)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from release.requests import RequestBook
from store.content import ContentStore
from store.models import AuditEvent, DiscJob, ReleaseRequest, RequestState, RequestStudy, Study
from tests import synthetic
from tests.conftest import Database
from tests.delivery.test_disc import store
from tests.portal.test_staff import Site, make_request, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes  # autouse fixture


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    """The staff site with a content store under ``tmp_path/data``; alice signed in."""
    content = ContentStore(tmp_path / "data")
    content.prepare()
    for s in open_site(db, tmp_path, content=content):
        assert s.login().status_code == 303
        yield s


def with_studies(site: Site, tmp_path: Path) -> str:
    """An overdue request with three synthetic instances stored and attached."""
    assert site.ctx.content is not None
    paths = synthetic.make_small_instances(tmp_path / "small", n=3, n_series=1)
    store(site.db, site.ctx.content, paths)
    ref = make_request(site, RequestState.OVERDUE)
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    with site.db.sessions() as s, s.begin():
        study = s.scalars(select(Study).where(Study.study_uid == uid)).one()
        rid = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
        assert rid is not None
        s.add(RequestStudy(request_id=rid, study_id=study.id, matched_at=site.clock()))
    return ref


def jobs(site: Site, ref: str) -> list[DiscJob]:
    with site.db.sessions() as s:
        return list(
            s.scalars(
                select(DiscJob)
                .join(ReleaseRequest, ReleaseRequest.id == DiscJob.request_id)
                .where(ReleaseRequest.reference == ref)
                .order_by(DiscJob.id)
            )
        )


def audits(site: Site) -> list[tuple[str, str, str, str]]:
    """The export events (sign-ins are audited too)."""
    with site.db.sessions() as s:
        return [
            (a.kind, a.actor, a.request_ref, a.detail)
            for a in s.scalars(
                select(AuditEvent).where(AuditEvent.kind == "export").order_by(AuditEvent.id)
            )
        ]


def reasons(site: Site, ref: str) -> list[tuple[str, str]]:
    return [(e.actor, e.reason) for e in RequestBook(site.db.sessions).timeline(ref)]


def test_mark_for_cd_queues_a_staff_job_shown_on_the_dashboard(site: Site) -> None:
    ref = make_request(site, RequestState.OVERDUE)
    assert 'id="burn-queue"' not in site.client.get("/staff").text
    r = site.post(f"/staff/requests/{ref}/cd")
    assert (r.status_code, r.headers["location"]) == (303, f"/staff/requests/{ref}?done=cd")
    [job] = jobs(site, ref)
    assert (job.why, job.queued_by, job.written_at) == ("staff", "staff:alice", None)
    assert reasons(site, ref)[-1] == ("staff:alice", "marked for CD")
    board = site.client.get("/staff").text
    queue = board.split('id="burn-queue"', 1)[1].split("</section>", 1)[0]
    assert f'href="/staff/requests/{ref}"' in queue
    assert "marked by staff" in queue and "not written" in queue
    page = site.client.get(f"/staff/requests/{ref}").text
    for needle in ('id="cd-marked"', 'id="action-disc-image"', 'id="action-disc-burned"'):
        assert needle in page
    assert 'id="action-cd"' not in page and 'id="disc-download"' not in page
    r = site.post(f"/staff/requests/{ref}/cd")
    assert r.status_code == 409 and "already in the CD burn queue" in r.text
    assert len(jobs(site, ref)) == 1


def test_write_download_and_burn(site: Site, tmp_path: Path) -> None:
    ref = with_studies(site, tmp_path)
    site.post(f"/staff/requests/{ref}/cd")
    r = site.post(f"/staff/requests/{ref}/disc-image")
    assert (r.status_code, r.headers["location"]) == (
        303,
        f"/staff/requests/{ref}?done=disc-image",
    )
    [job] = jobs(site, ref)
    iso = tmp_path / "data" / "discs" / f"{ref}.iso"
    assert job.image_path == f"discs/{ref}.iso" and iso.is_file()
    assert job.image_sha256 == hashlib.sha256(iso.read_bytes()).hexdigest()
    assert job.image_size == iso.stat().st_size and job.written_at == site.clock()
    assert job.writing_since is None
    assert reasons(site, ref)[-1] == ("staff:alice", "disc image written (3 instances)")
    board = site.client.get("/staff").text.split('id="burn-queue"', 1)[1]
    assert "written" in board.split("</tr>", 2)[1]
    # Written once: a second click does not write it again.
    again = site.post(f"/staff/requests/{ref}/disc-image")
    assert again.status_code == 409 and "already written" in again.text
    # Download: the same bytes, never cached.
    page = site.client.get(f"/staff/requests/{ref}").text
    assert f'href="/staff/requests/{ref}/disc.iso"' in page
    got = site.client.get(f"/staff/requests/{ref}/disc.iso")
    assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
    assert hashlib.sha256(got.content).hexdigest() == job.image_sha256
    assert f'filename="{ref}.iso"' in got.headers["content-disposition"]
    # Burned: audited as an export by staff:alice, on the timeline, out of the queue.
    r = site.post(f"/staff/requests/{ref}/disc-burned")
    assert r.status_code == 303
    [job] = jobs(site, ref)
    assert (job.burned_at, job.burned_by) == (site.clock(), "staff:alice")
    assert reasons(site, ref)[-1][0] == "staff:alice"
    assert reasons(site, ref)[-1][1].startswith("disc burned")
    assert audits(site) == [
        ("export", "staff:alice", ref, "disc image written (3 instances) for a CD/DVD"),
        ("export", "staff:alice", ref, "disc image downloaded"),
        ("export", "staff:alice", ref, "disc burned"),
    ]
    with site.db.sessions() as s:
        burned = s.scalars(select(AuditEvent).where(AuditEvent.detail == "disc burned")).one()
        assert burned.study_uids.strip()  # the studies that left on the disc
    assert 'id="burn-queue"' not in site.client.get("/staff").text
    # Burned twice: refused, nothing more recorded.
    r = site.post(f"/staff/requests/{ref}/disc-burned")
    assert r.status_code == 409 and "already marked burned" in r.text
    assert len(audits(site)) == 3
    assert site.client.get(f"/staff/requests/{ref}/disc.iso").status_code == 404
    # The request can be queued again (another copy).
    assert site.post(f"/staff/requests/{ref}/cd").status_code == 303


def test_cancel_disc_deletes_the_image(site: Site, tmp_path: Path) -> None:
    ref = with_studies(site, tmp_path)
    site.post(f"/staff/requests/{ref}/cd")
    site.post(f"/staff/requests/{ref}/disc-image")
    iso = tmp_path / "data" / "discs" / f"{ref}.iso"
    assert iso.is_file()
    r = site.post(f"/staff/requests/{ref}/disc-cancel")
    assert (r.status_code, r.headers["location"]) == (
        303,
        f"/staff/requests/{ref}?done=disc-cancel",
    )
    [job] = jobs(site, ref)
    assert (job.cancelled_at, job.cancelled_by, job.burned_at) == (
        site.clock(),
        "staff:alice",
        None,
    )
    assert not iso.exists()
    assert reasons(site, ref)[-1] == ("staff:alice", "CD cancelled")
    r = site.post(f"/staff/requests/{ref}/disc-cancel")
    assert r.status_code == 409 and "not in the CD burn queue" in r.text
    assert 'id="action-cd"' in site.client.get(f"/staff/requests/{ref}").text


def test_cancelling_the_request_cancels_its_disc(site: Site) -> None:
    ref = make_request(site, RequestState.OVERDUE)
    site.post(f"/staff/requests/{ref}/cd")
    assert site.post(f"/staff/requests/{ref}/cancel", {"reason": "x"}).status_code == 303
    [job] = jobs(site, ref)
    assert job.cancelled_by == "staff:alice"
    assert [r for _, r in reasons(site, ref)][-2:] == ["CD cancelled", "x"]


def test_bad_input_is_refused_and_writes_nothing(site: Site, tmp_path: Path) -> None:
    discs = tmp_path / "data" / "discs"
    # No stored instance: a clear message, no file, the job free for the next try.
    empty = make_request(site, RequestState.OVERDUE)
    r = site.post(f"/staff/requests/{empty}/disc-image")
    assert r.status_code == 409 and "Mark for CD" in r.text  # not queued yet
    site.post(f"/staff/requests/{empty}/cd")
    r = site.post(f"/staff/requests/{empty}/disc-image")
    assert r.status_code == 409 and "no stored instance for this request" in r.text
    assert not discs.exists() or list(discs.iterdir()) == []
    [job] = jobs(site, empty)
    assert job.writing_since is None and job.image_path is None
    assert audits(site) == []
    # Not queued: nothing to burn, cancel or download.
    other = make_request(site, RequestState.OVERDUE)
    for action in ("disc-burned", "disc-cancel"):
        r = site.post(f"/staff/requests/{other}/{action}")
        assert r.status_code == 409 and "not in the CD burn queue" in r.text
    assert site.client.get(f"/staff/requests/{other}/disc.iso").status_code == 404
    # Unknown request.
    for action in ("disc-image", "disc-burned", "disc-cancel"):
        assert site.post(f"/staff/requests/CR-2222-2222-3/{action}").status_code == 404
    assert site.client.get("/staff/requests/CR-2222-2222-3/disc.iso").status_code == 404
    assert jobs(site, other) == []


@pytest.mark.parametrize("action", ["disc-image", "disc-burned", "disc-cancel"])
def test_disc_forms_need_the_csrf_token(site: Site, action: str) -> None:
    ref = make_request(site, RequestState.OVERDUE)
    site.post(f"/staff/requests/{ref}/cd")
    r = site.client.post(f"/staff/requests/{ref}/{action}", data={}, follow_redirects=False)
    assert r.status_code == 403
    [job] = jobs(site, ref)
    assert (job.burned_at, job.cancelled_at, job.written_at) == (None, None, None)


def test_disc_pages_need_a_session(site: Site) -> None:
    ref = make_request(site, RequestState.OVERDUE)
    site.client.cookies.clear()
    r = site.client.get(f"/staff/requests/{ref}/disc.iso", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/staff/login")
