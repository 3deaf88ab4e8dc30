"""Scale-out benchmark: the same nightly batch on one worker and on two, against PostgreSQL.

Usage::

    .venv/bin/python bench/scale.py [--requests 1000] [--url postgresql+psycopg://...]
                                    [--profile] [--json OUT]

Data (synthetic, made fast through the models rather than pushed): ``--requests`` small
studies (2 CT slices of 32x32, stored through the real ingest) in a PostgreSQL schema of
their own, one ready request attached to each. Then, twice from the same state:

- one worker process, then two worker processes started together, each running
  :meth:`delivery.batch.DeliveryBatch.run` over the same schema and data directory
  (claims: ``FOR UPDATE SKIP LOCKED`` + the conditional move, :mod:`store.claims`);
- measured from the first worker's start to the last one's end (imports and engine
  set-up excluded: the workers wait at a shared start time), as requests/minute;
- between the runs the packages, grants and link emails are deleted and the requests
  put back to ``ready``.

Checks that every request was packaged exactly once in each run (the workers' reports
do not overlap and cover all of them). With ``--profile`` (or when the ratio is below
1.7x) one worker of a two-worker run is profiled and the top functions printed.

What bounds the ratio on a 2-core machine: two worker processes plus the PostgreSQL
backends serving them share the two cores. Per request the batch makes ~6 short
transactions (claim, package items, the notify transaction with its package row,
grant, event, outbox row and audit event) and one fsync'ed ZIP with its DICOMDIR; the
database's commits (WAL fsync) and the backends' CPU are not free cores, so two
workers cannot reach 2x; see the printed profile for where a worker's time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from sqlalchemy import create_engine, text, update  # noqa: E402

from delivery.batch import DeliveryBatch  # noqa: E402
from delivery.grants import GrantKeys, load_secret  # noqa: E402
from delivery.outbox import Outbox  # noqa: E402
from release.requests import RequestBook  # noqa: E402
from release.validation import RequestDraft  # noqa: E402
from scp.ingest import Ingest, Peer, Status  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.content import ContentStore  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from store.models import ReleaseRequest, RequestStudy, Study, utcnow  # noqa: E402
from tests import synthetic  # noqa: E402

PG_URL = os.environ.get("COURIER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _setup(url: str, schema: str, data: Path, n: int) -> None:
    """``n`` ready requests, each with its own small stored study."""
    engine = make_engine(url, schema=schema)
    migrate(engine)
    sessions = make_sessions(engine)
    content = ContentStore(data)
    content.prepare()
    ingest = Ingest(content, Catalog(sessions))
    book = RequestBook(sessions)
    peer = Peer("BENCH", "COURIER", "127.0.0.1")
    for i in range(n):
        acc = f"ACCS{i:05d}"
        paths = synthetic.make_ct_series(
            data.parent / "src" / str(i), n_slices=2, rows=32, cols=32, seed=i, accession=acc
        )
        for path in paths:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            spooled = content.spool / f"{i}-{path.name}"
            shutil.move(path, spooled)
            status = ingest.store(None, spooled, header.SOPClassUID, header.SOPInstanceUID, peer)
            assert status == Status.SUCCESS, status
        draft = RequestDraft.model_validate(
            {
                "patient_id": "SYN0001",
                "patient_name": "Synthetic^Patient",
                "patient_birth_date": "19700131",
                "recipient_email": "patient@example.org",
                "second_channel": "sms:+447911123456",
                "selection": [{"kind": "accession", "value": acc}],
                "requested_by": "bench",
            }
        )
        req = book.create(draft, "bench")
        with sessions() as s, s.begin():
            study_id = s.scalar(
                text("SELECT id FROM studies WHERE accession_number = :a"), {"a": acc}
            )
            s.add(RequestStudy(request_id=req.id, study_id=study_id, matched_at=utcnow()))
            s.execute(
                update(ReleaseRequest).where(ReleaseRequest.id == req.id).values(state="ready")
            )
    with sessions() as s:
        assert s.scalar(text("SELECT count(*) FROM studies")) == n
    assert Study.__tablename__ == "studies"
    engine.dispose()


def _reset(url: str, schema: str, data: Path) -> None:
    """Back to n ready requests: no package, grant or link email."""
    engine = make_engine(url, schema=schema)
    with engine.begin() as c:
        for table in ("notification_attempts", "notifications", "grants", "packages"):
            c.execute(text(f"DELETE FROM {table}"))
        c.execute(text("DELETE FROM request_events WHERE to_state IN ('packaging', 'notified')"))
        c.execute(text("UPDATE release_requests SET state = 'ready'"))
    engine.dispose()
    shutil.rmtree(data / "packages", ignore_errors=True)


def worker(url: str, schema: str, data: Path, start_at: float, profile: bool) -> None:
    """One worker process: wait for ``start_at``, run the batch, print a JSON report."""
    engine = make_engine(url, schema=schema)
    sessions = make_sessions(engine)
    content = ContentStore(data)
    book = RequestBook(sessions)
    batch = DeliveryBatch(
        sessions,
        content,
        book,
        Outbox(),
        GrantKeys(load_secret(data / "secret.key")),
        data / "packages",
    )
    with sessions() as s:  # warm the pool and the mappers before the clock starts
        s.execute(text("SELECT 1"))
    time.sleep(max(0.0, start_at - time.time()))
    prof = cProfile.Profile() if profile else None
    started = time.time()
    if prof is not None:
        prof.enable()
    report = batch.run(job="batch")
    if prof is not None:
        prof.disable()
    ended = time.time()
    top = ""
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        top = out.getvalue()
    print(
        json.dumps(
            {"started": started, "ended": ended, "notified": report.notified, "profile": top}
        )
    )
    engine.dispose()


def _run(url: str, schema: str, data: Path, n_workers: int, profile: bool) -> dict[str, object]:
    start_at = time.time() + 3.0  # every worker imported and connected by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--url",
                url,
                "--schema",
                schema,
                "--data",
                str(data),
                "--start-at",
                str(start_at),
                *(["--profile"] if profile and i == 0 else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n_workers)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        assert p.returncode == 0, f"worker exited {p.returncode}"
        reports.append(json.loads(out))
    done = [r for rep in reports for r in rep["notified"]]
    assert len(done) == len(set(done)), "a request was packaged twice"
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {
        "workers": n_workers,
        "requests": len(done),
        "per_worker": [len(r["notified"]) for r in reports],
        "seconds": round(wall, 2),
        "requests_per_minute": round(len(done) / wall * 60, 1),
        "profile": next((r["profile"] for r in reports if r["profile"]), ""),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--url", default=PG_URL)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--schema", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.url, args.schema, args.data, args.start_at, args.profile)
        return 0
    schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="courier-scale-") as tmp:
            data = Path(tmp) / "data"
            t0 = time.perf_counter()
            _setup(args.url, schema, data, args.requests)
            print(f"setup: {args.requests} ready requests in {time.perf_counter() - t0:.1f} s")
            one = _run(args.url, schema, data, 1, False)
            _reset(args.url, schema, data)
            two = _run(args.url, schema, data, 2, args.profile)
            ratio = two["requests_per_minute"] / one["requests_per_minute"]  # type: ignore[operator]
            if ratio < 1.7 and not two["profile"]:
                _reset(args.url, schema, data)
                two["profile"] = _run(args.url, schema, data, 2, True)["profile"]
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    for r in (one, two):
        print(
            f"{r['workers']} worker(s): {r['requests']} requests in {r['seconds']} s = "
            f"{r['requests_per_minute']} requests/min (per worker {r['per_worker']})"
        )
    print(f"ratio two/one: {ratio:.2f}x (target >= 1.7x)")
    if two["profile"]:
        print("profile of one of the two workers (cumulative):")
        print(two["profile"])
    if args.json:
        result = {"one": one, "two": two, "ratio": round(ratio, 2), "cores": os.cpu_count()}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
