"""Matching benchmark: one stable study against 100, 1,000 and 10,000 pending requests.

Usage::

    .venv/bin/python bench/rules.py [--pending 100,1000,10000] [--instances 100000]
                                    [--studies 60] [--db sqlite|postgresql]

For each size, a fresh database holds ``--instances`` indexed instances (spread over
one study per request) and that many pending requests, each selecting its own
accession number. Then ``--studies`` stable studies, each with one representative file
on disk, go through ``release.matching.Matcher.on_stable`` one at a time (rules: release
by accession): decide from the header, find the request by an indexed look-up, attach,
check completeness, move the request to ``ready``. Prints the median and p90 per study
and the growth from the smallest to the largest size. Synthetic data only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from release.matching import Matcher  # noqa: E402
from release.requests import RequestBook  # noqa: E402
from rules import load_rules_text  # noqa: E402
from store.content import ContentStore  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from store.models import (  # noqa: E402
    Instance,
    ReleaseRequest,
    RequestSelection,
    Series,
    Study,
)
from tests import synthetic  # noqa: E402

RULES = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
"""
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _populate(
    sessions: object, engine: object, root: Path, pending: int, instances: int, studies: int
) -> list[str]:
    """Bulk-load studies/instances and pending requests; return the studies to match."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    template = synthetic.make_small_instances(root / "template", n=1)[0]
    content = ContentStore(root / "data")
    content.prepare()
    # Every pending request has a study of its own; the instances are spread over them.
    n_studies = max(pending, studies, 1)
    per_study = max(1, instances // n_studies)
    study_rows, series_rows, inst_rows = [], [], []
    for i in range(n_studies):
        study_rows.append(
            {
                "id": i + 1,
                "study_uid": f"2.25.{i + 1}",
                "patient_id": f"P{i}",
                "patient_name": "SYNTHETIC^PATIENT",
                "patient_birth_date": "19700101",
                "accession_number": f"A{i:07d}",
                "study_date": "20260101",
                "study_description": "",
                "modalities": "CT",
                "state": "stable",
                "instance_count": per_study,
                "size_bytes": per_study * 10_000,
                "calling_ae": "PACS",
                "called_ae": "COURIER",
                "peer_host": "127.0.0.1",
                "first_received_at": now,
                "last_received_at": now,
                "stable_at": now,
            }
        )
        series_rows.append(
            {
                "id": i + 1,
                "study_id": i + 1,
                "series_uid": f"2.25.{i + 1}.1",
                "modality": "CT",
                "series_number": "1",
                "series_description": "",
                "instance_count": per_study,
                "size_bytes": per_study * 10_000,
            }
        )
        for j in range(per_study):
            inst_rows.append(
                {
                    "study_id": i + 1,
                    "series_id": i + 1,
                    "sop_instance_uid": f"2.25.{i + 1}.1.{j}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "instance_number": str(j),
                    "size_bytes": 10_000,
                    "sha256": "0" * 64,
                    "path": f"instances/2.25.{i + 1}/2.25.{i + 1}.1/2.25.{i + 1}.1.{j}.dcm",
                    "calling_ae": "PACS",
                    "received_at": now,
                    "file_missing": False,
                }
            )
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(insert(Study), study_rows)
        conn.execute(insert(Series), series_rows)
        for k in range(0, len(inst_rows), 10_000):
            conn.execute(insert(Instance), inst_rows[k : k + 10_000])
        req_rows, sel_rows = [], []
        for r in range(pending):
            req_rows.append(
                {
                    "id": r + 1,
                    "reference": f"BENCH-{r:06d}",
                    "state": "pending",
                    "patient_id": f"P{r}",
                    "patient_name": "SYNTHETIC^PATIENT",
                    "patient_birth_date": "19700101",
                    "recipient_email": "p@example.org",
                    "second_channel": "sms:+447911123456",
                    "language": "en",
                    "urgency": "overnight",
                    "link_days": 30,
                    "note": "",
                    "requested_by": "bench",
                    "idempotency_key": None,
                    "created_at": now,
                    "updated_at": now,
                    "due_by": None,
                }
            )
            sel_rows.append(
                {
                    "request_id": r + 1,
                    "kind": "accession",
                    "value": f"A{r:07d}",
                    "expected_instances": None,
                }
            )
        conn.execute(insert(ReleaseRequest), req_rows)
        conn.execute(insert(RequestSelection), sel_rows)
    # One representative file per measured study (the matcher reads its header).
    measured = []
    ds = pydicom.dcmread(template)
    for i in range(studies):
        target = pending - 1 - i * max(1, pending // studies)  # spread over the table
        target = max(target, 0)
        ds.AccessionNumber = f"A{target:07d}"
        path = content.path(
            f"instances/2.25.{target + 1}/2.25.{target + 1}.1/2.25.{target + 1}.1.0.dcm"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        measured.append(f"2.25.{target + 1}")
    return measured


def run(pending: int, instances: int, studies: int, db: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        schema = None
        if db == "sqlite":
            url = f"sqlite:///{root / 'bench.db'}"
            engine = make_engine(url)
        else:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = make_engine(PG_URL)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            engine = make_engine(PG_URL, schema=schema)
        migrate(engine)
        sessions = make_sessions(engine)
        measured = _populate(sessions, engine, root, pending, instances, studies)
        ruleset = load_rules_text(RULES)
        clock = [datetime(2026, 1, 2, tzinfo=UTC)]

        def tick() -> datetime:
            clock[0] += timedelta(milliseconds=1)
            return clock[0]

        matcher = Matcher(
            sessions,
            ContentStore(root / "data"),
            lambda: ruleset,
            RequestBook(sessions, clock=tick),
            clock=tick,
        )
        times = []
        for uid in measured:
            t = time.perf_counter()
            matcher.on_stable([uid])
            times.append((time.perf_counter() - t) * 1000)
        engine.dispose()
        if schema:
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pending", default="100,1000,10000")
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--studies", type=int, default=60)
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = p.parse_args()
    sizes = [int(x) for x in args.pending.split(",")]
    medians = {}
    print("| pending requests | stored instances | median ms/study | p90 ms | db |")
    print("|---:|---:|---:|---:|---|")
    for n in sizes:
        times = run(n, args.instances, min(args.studies, n), args.db)
        med = statistics.median(times)
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        medians[n] = med
        print(f"| {n} | {args.instances} | {med:.2f} | {p90:.2f} | {args.db} |", flush=True)
    print(f"\ngrowth {sizes[0]} -> {sizes[-1]}: {medians[sizes[-1]] / medians[sizes[0]]:.2f}x")


if __name__ == "__main__":
    main()
