"""Benchmark of the portal's image viewer (issue 15 part 1).

1. Server render of one 512x512 CT frame, p50/p95 over ``--renders`` renders:
   - the imaging child alone (:class:`imaging.Renderer`, warm, no cache),
   - through the portal over HTTP with the cache missed (a new window each request),
   - through the portal over HTTP from its disk cache,
   - anchor, same run, same instance: Orthanc's ``GET /instances/{id}/preview``.
2. In Chromium (Debian's, headless), the 300-slice CT, cold cache (a portal process just
   started, no image rendered yet): time from opening the viewer page to the first image
   drawn, and images drawn per second while the arrow key is held (key events at the
   usual 30/s auto-repeat for ``--hold-s`` seconds; an image counts when it is on screen).

Targets: render <= Orthanc's preview; first image <= 1 s; >= 20 images/s held.
Run: ``.venv/bin/python bench/viewer.py`` (SQLite in a temporary folder; synthetic data).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing as mp
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from imaging import Renderer
from portal.settings import PortalSettings
from release.requests import RequestBook
from release.validation import RequestDraft
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.db import make_engine, make_sessions, migrate
from store.models import Package, PortalSession, ReleaseRequest, RequestStudy, Study
from tests import synthetic
from tests.orthanc import Orthanc, have_orthanc
from tests.peers import free_port

SECRET = b"v" * 32
FOLDER = "BENCH-VIEW"


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def setup(root: Path, n_slices: int) -> tuple[str, str, Path]:
    """The CT in a content store, a notified request with its package row and a grant
    session: (database URL, session token, one instance's file)."""
    src = synthetic.make_ct_series(root / "src", n_slices=n_slices, accession="ACCBENCHV")
    content = ContentStore(root / "data")
    content.prepare()
    for path in src:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, content.path(rel))
    url = f"sqlite:///{root / 'index.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    recover(content, sessions, Catalog(sessions))
    draft = RequestDraft.model_validate(
        {
            "patient_id": "BENCH-V",
            "patient_name": "Bench^Viewer",
            "patient_birth_date": "19700131",
            "recipient_email": "patient@example.org",
            "second_channel": "sms:+447911123456",
            "selection": [{"kind": "accession", "value": "ACCBENCHV"}],
            "requested_by": "bench",
        }
    )
    req = RequestBook(sessions).create(draft, "bench")
    now = datetime.now(UTC)
    token = secrets.token_urlsafe(32)
    with sessions() as s, s.begin():
        study = s.query(Study).one()
        s.add(RequestStudy(request_id=req.id, study_id=study.id, matched_at=now))
        pkg = Package(
            request_id=req.id,
            folder=FOLDER,
            parts="[]",
            studies=1,
            instances=n_slices,
            size_bytes=0,
            built_at=now,
        )
        s.add(pkg)
        s.flush()
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        fresh.state = "notified"
        grant = new_grant(s, GrantKeys(SECRET), fresh, package_id=pkg.id, link_days=30, now=now)
        s.add(
            PortalSession(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                kind="grant",
                grant_id=grant.id,
                created_at=now,
                last_seen_at=now + timedelta(hours=2),
            )
        )
    engine.dispose()
    (root / "packages" / FOLDER).mkdir(parents=True)
    middle = sorted((root / "data").rglob("*.dcm"))[0]
    return url, token, middle


def serve(url: str, root: str, port: int) -> None:
    import uvicorn

    from portal.api import create_app
    from portal.context import PortalContext

    sessions = make_sessions(make_engine(url, pool_size=20))
    ctx = PortalContext(
        sessions=sessions,
        keys=GrantKeys(SECRET),
        outbox=Outbox(),
        delivery=DeliverySettings(),
        portal=PortalSettings(rate_limit_per_min=10_000, session_idle_min=24 * 60),
        package_dir=Path(root) / "packages",
        content=ContentStore(Path(root) / "data"),
    )
    app = create_app(sessions, [], portal=ctx)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(url: str, root: Path) -> tuple[mp.process.BaseProcess, int]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=serve, args=(url, str(root), port), daemon=True)
    proc.start()
    for _ in range(400):  # bounded: 400 x 50 ms
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def timed_gets(port: int, paths: list[str], headers: dict[str, str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for path in paths:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        out.append(time.perf_counter() - t0)
        assert resp.status == 200 and body[:2] == b"\xff\xd8", (path, resp.status)
    conn.close()
    return out


def render_figures(
    port: int, token: str, instance: Path, renders: int
) -> dict[str, tuple[float, float]]:
    figures = {}
    with Renderer() as renderer:
        renderer.render(instance, frame=0, max_side=1024)  # warm
        times = []
        for i in range(renders):
            t0 = time.perf_counter()
            renderer.render(instance, frame=0, max_side=1024, window=(40.0 + i, 400.0))
            times.append(time.perf_counter() - t0)
    figures["imaging child (warm, no cache)"] = percentiles(times)
    cookie = {"Cookie": f"__Host-session={token}"}
    timed_gets(port, ["/files/view/1/1/150/image"], cookie)  # the page's child warm
    misses = [f"/files/view/1/1/150/image?c={i}&ww=400" for i in range(renders)]
    figures["portal HTTP, cache missed"] = percentiles(timed_gets(port, misses, cookie))
    hits = ["/files/view/1/1/150/image?c=0&ww=400"] * renders
    figures["portal HTTP, from its cache"] = percentiles(timed_gets(port, hits, cookie))
    if have_orthanc():
        with (
            tempfile.TemporaryDirectory(prefix="bench-viewer-orthanc-") as work,
            Orthanc(workdir=Path(work)) as orthanc,
        ):
            (oid,) = orthanc.upload([instance])
            conn = http.client.HTTPConnection("127.0.0.1", orthanc.http_port, timeout=60)
            times = []
            for i in range(renders + 1):
                t0 = time.perf_counter()
                conn.request("GET", f"/instances/{oid}/preview")
                resp = conn.getresponse()
                resp.read()
                if i:  # the first warms Orthanc's own caches
                    times.append(time.perf_counter() - t0)
                assert resp.status == 200
            conn.close()
            figures["Orthanc /instances/{id}/preview (anchor)"] = percentiles(times)
    return figures


def browser_figures(
    port: int, token: str, hold_s: float, from_files: bool
) -> tuple[float, float, int]:
    """(open -> first image drawn, images drawn per second held, key events sent);
    ``from_files``: the patient is on the files page for 2 s first (as they are before
    pressing View), else the viewer is the process's first page."""
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.add_cookies(
            [
                {
                    "name": "__Host-session",
                    "value": token,
                    "domain": "127.0.0.1",
                    "path": "/",
                    "secure": True,
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )
        page = ctx.new_page()
        if from_files:
            page.goto(base + "/files")
            time.sleep(2.0)
        t0 = time.perf_counter()
        page.goto(base + "/files/view/1/1/1", wait_until="commit")
        page.wait_for_function(
            """() => { const i = document.getElementById("view-image");
                       return i && i.complete && i.naturalWidth > 0; }""",
            timeout=60_000,
        )
        first = time.perf_counter() - t0
        page.wait_for_function("() => !document.getElementById('view-tools').hidden")
        page.evaluate(
            """() => { window.__shown = 0;
              new MutationObserver(() => { window.__shown += 1; })
                .observe(document.getElementById("view-stage"), {childList: true}); }"""
        )
        presses = int(hold_s * 30)
        t1 = time.perf_counter()
        for i in range(presses):  # 30 key events a second, as an auto-repeat sends
            page.keyboard.press("ArrowRight")
            delay = t1 + (i + 1) / 30 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.perf_counter() - t1
        shown = int(page.evaluate("window.__shown"))
        browser.close()
    return first, shown / elapsed, presses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--renders", type=int, default=60)
    parser.add_argument("--hold-s", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        url, token, instance = setup(root, args.slices)
        print(f"setup: {args.slices} slices 512x512 in {time.perf_counter() - t0:.1f} s")
        proc, port = start_server(url, root)
        try:
            figures = render_figures(port, token, instance, args.renders)
            for name, (p50, p95) in figures.items():
                print(f"render 512x512 CT, {name}: p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms")
        finally:
            proc.terminate()
            proc.join(10)
        for from_files in (False, True):
            # Cold: no picture or series index on disk, a portal process just started.
            shutil.rmtree(root / "packages" / FOLDER / "viewer", ignore_errors=True)
            proc, port = start_server(url, root)
            try:
                first, rate, presses = browser_figures(port, token, args.hold_s, from_files)
            finally:
                proc.terminate()
                proc.join(10)
            how = "from the files page" if from_files else "as the process's first page"
            print(f"Chromium, cold cache, {how}: open -> first image drawn {first:.2f} s")
            print(
                f"Chromium, cold cache, arrow key held ({presses} key events at 30/s): "
                f"{rate:.1f} images drawn/s"
            )


if __name__ == "__main__":
    main()
