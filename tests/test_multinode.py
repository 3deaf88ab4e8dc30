"""Two nodes sharing one PostgreSQL schema and one data directory.

Both receive pushes at the same time (20 studies, split over their two DICOM ports, on
concurrent associations); then both run ``courier deliver --now`` at the same moment
while their own relays poll the outbox too. Every request is packaged once (one package
row, one grant, one link email, one .eml file in the shared file outbox), every
instance acknowledged is indexed once with its file, and every message is sent once.
Loopback only; bounded waits; no timing assertions.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from release.requests import RequestBook
from store.models import (
    Grant,
    Instance,
    Notification,
    NotificationState,
    Package,
    ReleaseRequest,
    RequestEvent,
)
from tests import synthetic
from tests.conftest import (
    COURIER,
    Database,
    NodeProcess,
    free_port,
    start_shared_node,
    write_config,
)
from tests.release.helpers import draft
from tests.scu import send

N = 20
RULES = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
"""
# Stable quickly; a delivery window never open during the test (only `deliver --now`
# and the start-up catch-up deliver); the default file outboxes (shared data_dir).
EXTRA_SCP = "stable_after_s: 1\nstability_check_s: 0.3"


def _extra(tmp: Path) -> str:
    return (
        f"rules_file: {tmp / 'rules.yaml'}\n"
        "delivery:\n  window: '01:00-01:01'\n  timezone: Pacific/Kiritimati\n"
    )


def _states(db: Database) -> Counter[str]:
    with db.sessions() as s:
        return Counter(s.scalars(select(ReleaseRequest.state)))


def _deliver(node: NodeProcess) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(COURIER), "deliver", "--now", "--json", "--config", str(node.config)],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def two_nodes(db: Database, tmp_path: Path) -> Any:
    assert db.kind == "postgresql"  # several nodes share PostgreSQL; SQLite is one node
    (tmp_path / "rules.yaml").write_text(RULES)
    shared = tmp_path / "shared-data"
    nodes: list[NodeProcess] = []
    try:
        for name in ("node-a", "node-b"):
            nodes.append(
                start_shared_node(
                    tmp_path,
                    db,
                    shared,
                    name,
                    extra_scp=EXTRA_SCP,
                    extra=_extra(tmp_path),
                )
            )
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # PostgreSQL only
def test_two_nodes_receive_and_deliver_each_request_once(
    two_nodes: list[NodeProcess], db: Database, tmp_path: Path
) -> None:
    a, b = two_nodes
    book = RequestBook(db.sessions)
    refs = [
        book.create(
            # The synthetic studies' patient: the identity check holds anyone else's.
            draft(patient_id="SYN0001", selection=[{"kind": "accession", "value": f"ACCM{i:04d}"}]),
            "test",
        ).reference
        for i in range(N)
    ]
    studies = [
        synthetic.make_ct_series(
            tmp_path / "studies" / str(i),
            n_slices=3,
            rows=16,
            cols=16,
            seed=i,
            accession=f"ACCM{i:04d}",
        )
        for i in range(N)
    ]
    ports = [a.port if i % 2 == 0 else b.port for i in range(N)]
    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent associations on both
        statuses = list(pool.map(send, ports, studies))
    assert all(st == [0, 0, 0] for st in statuses), statuses

    for _ in range(240):  # bounded: 240 x 0.25 s for stability and matching
        if _states(db)["ready"] == N:
            break
        time.sleep(0.25)
    assert _states(db)["ready"] == N, _states(db)

    procs = [_deliver(a), _deliver(b)]  # both batches at the same moment
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        reports.append(json.loads(out))
    notified = [r for rep in reports for r in rep["notified"]]
    assert sorted(notified) == sorted(refs)  # each request by exactly one of them

    outbox = a.data_dir / "outbox"
    with db.sessions() as s:
        for _ in range(120):  # bounded: the nodes' relays poll every second
            queued = s.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.state != NotificationState.SENT)
            )
            s.rollback()
            if not queued:
                break
            time.sleep(0.5)
        per_request = Counter(s.scalars(select(Package.request_id)))
        assert len(per_request) == N and set(per_request.values()) == {1}
        grants = Counter(s.scalars(select(Grant.request_id)))
        assert len(grants) == N and set(grants.values()) == {1}
        links = list(s.scalars(select(Notification).where(Notification.kind == "link_email")))
        assert len(links) == N and len({n.request_id for n in links}) == N
        assert {n.state for n in links} == {NotificationState.SENT}
        assert {n.attempts for n in links} == {1}  # never claimed twice
        packaging_claims = s.scalar(
            select(func.count())
            .select_from(RequestEvent)
            .where(RequestEvent.to_state == "packaging")
        )
        assert packaging_claims == N
        instances = list(s.execute(select(Instance.sop_instance_uid, Instance.path)))
    assert len(instances) == 3 * N
    assert len({uid for uid, _ in instances}) == 3 * N  # each indexed once
    assert all((a.data_dir / path).is_file() for _, path in instances)
    emails = sorted(outbox.glob("*.eml"))
    assert len(emails) == N  # one link email file per request, none twice


def test_a_role_other_than_all_is_refused_on_sqlite(tmp_path: Path) -> None:
    """SQLite is one node: `serve --role worker` says so and exits before listening."""
    config = tmp_path / "node.yaml"
    write_config(config, tmp_path / "data", free_port())
    out = subprocess.run(
        [str(COURIER), "serve", "--role", "worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "needs a PostgreSQL database" in out.stderr
