"""Benchmark of the portal's DICOMweb (``/dicomweb``) against Orthanc's REST API.

A synthetic CT series (``--slices`` 512x512 16-bit instances, Explicit VR Little
Endian) is indexed into a fresh SQLite database and content store, attached to a
notified request with a package and a patient grant, and served by the portal
(uvicorn, its own process, as ``courier serve`` does) with a DICOMweb token for that
grant. The same files are uploaded to Orthanc (``/instances``), the anchor, in the same
run. Each figure is a loop of plain HTTP GETs over one keep-alive connection
(``requests``), the way a viewer loads a study:

1. one frame per instance, in order (Courier: WADO-RS ``…/frames/1``; Orthanc:
   ``/instances/{id}/frames/0/raw``): p50, p95 per frame, frames per second;
2. the whole series' files (Courier: WADO-RS ``/studies/{uid}`` as one
   multipart/related answer; Orthanc: ``/instances/{id}/file`` one by one): MB/s;
3. the series' metadata (Courier: WADO-RS ``…/series/{uid}/metadata``, DICOM JSON of
   every header; Orthanc: ``/series/{id}/instances-tags``): seconds, the first call
   (Courier makes and keeps each instance's JSON: :mod:`portal.dicomweb_metadata`) and
   the median of the next five (Courier answers from what it kept).

Every request of Courier's also checks the token and the grant in the database, as in
production. Run: ``.venv/bin/python bench/dicomweb.py [--slices 300]``. No timing is
asserted anywhere; the figures go in the README by hand.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom
import requests

from delivery.grants import GrantKeys, new_grant
from portal.dicomweb_token import issue
from release.requests import RequestBook
from release.validation import RequestDraft
from scp.recovery import recover
from store.catalog import Catalog
from store.content import ContentStore
from store.db import make_engine, make_sessions, migrate
from store.models import Package, ReleaseRequest, RequestStudy, Study
from tests import synthetic
from tests.orthanc import Orthanc
from tests.peers import free_port

SECRET = b"d" * 32
MB = 1e6


def setup(root: Path, slices: int) -> tuple[str, str, list[Path], str, list[str], str]:
    """The database, the store, the request, package and grant; a token for it."""
    src = synthetic.make_small_instances(
        root / "src", n=slices, n_series=1, rows=512, cols=512, accession="ACCBENCH"
    )
    content = ContentStore(root / "data")
    content.prepare()
    (root / "packages" / "BENCH").mkdir(parents=True)  # the package's folder: its cache
    for path in src:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, content.path(rel))
    url = f"sqlite:///{root / 'index.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    recover(content, sessions, Catalog(sessions))
    draft = RequestDraft.model_validate(
        {
            "patient_id": "SYN0002",
            "patient_name": "Bench^Patient",
            "patient_birth_date": "19700131",
            "recipient_email": "patient@example.org",
            "second_channel": "sms:+447911123456",
            "selection": [{"kind": "accession", "value": "ACCBENCH"}],
            "requested_by": "bench",
        }
    )
    req = RequestBook(sessions).create(draft, "bench")
    keys = GrantKeys(SECRET)
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        study = s.query(Study).one()
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        fresh.state = "notified"
        s.add(RequestStudy(request_id=req.id, study_id=study.id, matched_at=now))
        pkg = Package(
            request_id=req.id,
            folder="BENCH",
            parts="[]",
            studies=1,
            instances=slices,
            size_bytes=0,
            built_at=now,
        )
        s.add(pkg)
        s.flush()
        grant = new_grant(s, keys, fresh, package_id=pkg.id, link_days=30, now=now)
        token, _ = issue(keys, grant, now, 4)
        study_uid = study.study_uid
    with sessions() as s:
        from store.models import Instance, Series

        rows = s.query(Instance.sop_instance_uid, Series.series_uid).join(
            Series, Series.id == Instance.series_id
        )
        pairs = sorted(rows.all())
    engine.dispose()
    series_uid = pairs[0][1]
    return url, str(root), src, study_uid, [p[0] for p in pairs], f"{series_uid}|{token}"


def serve(url: str, root: str, port: int) -> None:
    import uvicorn

    from delivery.outbox import Outbox
    from delivery.settings import DeliverySettings
    from portal.api import create_app
    from portal.context import PortalContext
    from portal.settings import PortalSettings

    sessions = make_sessions(make_engine(url, pool_size=20))
    ctx = PortalContext(
        sessions=sessions,
        keys=GrantKeys(SECRET),
        outbox=Outbox(),
        delivery=DeliverySettings(),
        portal=PortalSettings(dicomweb_requests_per_min=100_000),
        package_dir=Path(root) / "packages",
        content=ContentStore(Path(root) / "data"),
    )
    app = create_app(sessions, [], portal=ctx)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(url: str, root: str) -> tuple[mp.process.BaseProcess, int]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=serve, args=(url, root, port), daemon=True)
    proc.start()
    for _ in range(200):  # bounded: 200 x 50 ms
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def timed_gets(session: requests.Session, urls: list[str], **kw: object) -> tuple[list[float], int]:
    """Each URL once, in order: the seconds each took, and the bytes received."""
    lat, total = [], 0
    for u in urls:
        t0 = time.perf_counter()
        r = session.get(u, **kw)  # type: ignore[arg-type]
        r.raise_for_status()
        total += len(r.content)
        lat.append(time.perf_counter() - t0)
    return lat, total


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def pct(lat: list[float], q: float) -> float:
    return sorted(lat)[min(len(lat) - 1, int(q * len(lat)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="courier-bench-dicomweb-"))
    try:
        url, root, src, study, sops, rest = setup(tmp, args.slices)
        series, token = rest.split("|")
        proc, port = start(url, root)
        base = f"http://127.0.0.1:{port}/dicomweb"
        web = requests.Session()
        web.trust_env = False
        web.headers["Authorization"] = f"Bearer {token}"
        web.headers["Accept-Encoding"] = "identity"
        with Orthanc() as orthanc:
            ids = orthanc.upload(src)
            series_id = orthanc.get(f"/instances/{ids[0]}/series")["ID"]
            anchor = requests.Session()
            anchor.trust_env = False
            # requests asks for gzip by default, and Orthanc then compresses every answer
            # on the fly (HttpCompressionEnabled): 150 ms a frame instead of ~1. Neither
            # side compresses here, as a viewer fetching pixels would not want.
            anchor.headers["Accept-Encoding"] = "identity"
            o = orthanc.url
            frames = [
                f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1" for sop in sops
            ]
            timed_gets(web, frames[:10])  # warm-up: connection, caches
            timed_gets(anchor, [f"{o}/instances/{i}/frames/0/raw" for i in ids[:10]])
            c_lat, _ = timed_gets(web, frames)
            o_lat, _ = timed_gets(anchor, [f"{o}/instances/{i}/frames/0/raw" for i in ids])
            t0 = time.perf_counter()
            _, c_bytes = timed_gets(web, [f"{base}/studies/{study}"])
            c_study = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, o_bytes = timed_gets(anchor, [f"{o}/instances/{i}/file" for i in ids])
            o_study = time.perf_counter() - t0
            c_meta, _ = timed_gets(web, [f"{base}/studies/{study}/series/{series}/metadata"] * 6)
            o_meta, _ = timed_gets(anchor, [f"{o}/series/{series_id}/instances-tags"] * 6)
        proc.terminate()
        proc.join(10)
        n = len(sops)
        print(f"{n} instances of 512x512x16 bit ({c_bytes / MB:.0f} MB)")
        print(
            f"frames    courier p50 {pct(c_lat, 0.5):.1f} ms p95 {pct(c_lat, 0.95):.1f} ms "
            f"{n / sum(c_lat):.0f}/s | orthanc p50 {pct(o_lat, 0.5):.1f} ms "
            f"p95 {pct(o_lat, 0.95):.1f} ms {n / sum(o_lat):.0f}/s | "
            f"ratio (courier/orthanc, p50) {pct(c_lat, 0.5) / pct(o_lat, 0.5):.2f}"
        )
        print(
            f"study     courier {c_bytes / MB / c_study:.0f} MB/s ({c_study:.2f} s, one answer) | "
            f"orthanc {o_bytes / MB / o_study:.0f} MB/s ({o_study:.2f} s, file by file)"
        )
        print(
            f"metadata  courier first {c_meta[0]:.2f} s, then {_median(c_meta[1:]):.3f} s | "
            f"orthanc instances-tags first {o_meta[0]:.2f} s, then {_median(o_meta[1:]):.3f} s | "
            f"ratio (courier/orthanc, then) {_median(c_meta[1:]) / _median(o_meta[1:]):.2f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
