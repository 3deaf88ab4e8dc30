"""The pull sweep (node.pulls) against Orthanc: retries with backoff, every attempt on the
request's timeline, bounded attempts, permanent failures at once; the moved study then
completes the request through stability and matching (injected clock, no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from node.pulls import PullQueue, Wanted
from release.matching import Matcher
from release.requests import RequestBook
from rules import load_rules_text
from scp import spool
from scp.ingest import Ingest
from scp.pacs import MoveOutcome
from scp.pacs_settings import PacsSettings
from scp.server import start_server
from scp.settings import ScpSettings
from scp.stability import StabilitySweep
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Pull, PullState, ReleaseRequest, RequestState
from tests.conftest import Database, have_orthanc, need
from tests.orthanc import Orthanc
from tests.peers import free_port
from tests.release.helpers import draft
from tests.scp.pacs_peers import (
    N_INSTANCES,
    PATIENT,
    A801MoveScp,
    orthanc_settings,
    pacs_study,
    settings_for,
)

# Release everything; the join finds nothing here, the study UID selection does.
RULES = """\
rules:
  - name: pulled
    action: release
    join: {accession: AccessionNumber}
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _request(db: Database, study_uid: str, clock: Clock) -> ReleaseRequest:
    selection = [{"kind": "study_uid", "value": study_uid, "expected_instances": N_INSTANCES}]
    return RequestBook(db.sessions, clock=clock).create(
        draft(patient_id=PATIENT, selection=selection), "test"
    )


def _timeline(db: Database, request_id: int) -> list[str]:
    return [e.reason for e in RequestBook(db.sessions).timeline(request_id) if e.actor == "pacs"]


def _pull(db: Database) -> Pull:
    with db.sessions() as s:
        rows = list(s.scalars(select(Pull)))
    assert len(rows) == 1
    return rows[0]


def test_a_move_that_fails_is_retried_and_completes_the_request(
    db: Database, tmp_path: Path
) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    scp_port = free_port()  # Courier's SCP is not listening there yet
    clock = Clock()
    with Orthanc({"courier": ("COURIER", "127.0.0.1", scp_port)}, workdir=tmp_path) as o:
        o.upload(files)
        settings = orthanc_settings(o, max_attempts=3, retry_backoff_s=30)
        queue = PullQueue(db.sessions, settings, clock=clock)
        req = _request(db, study_uid, clock)
        assert queue.enqueue(req.id, [Wanted(study_uid, N_INSTANCES)]) == 1
        assert queue.enqueue(req.id, [Wanted(study_uid, N_INSTANCES)]) == 0  # idempotent

        assert queue.sweep() == 1  # attempt 1: Orthanc cannot reach us
        pull = _pull(db)
        assert (pull.state, pull.attempts) == (PullState.QUEUED, 1)
        assert pull.next_attempt_at == clock.now + timedelta(seconds=30)
        assert queue.sweep() == 0  # not due before the backoff ends

        content = ContentStore(tmp_path / "data")
        content.prepare()
        spool.install(content.spool)
        scp = ScpSettings(ae_title="COURIER", host="127.0.0.1")
        server = start_server(scp, Ingest(content, Catalog(db.sessions)), port=scp_port)
        try:
            clock.advance(30)
            assert queue.sweep() == 1  # attempt 2: moved
        finally:
            server.shutdown()
            server.server_close()
    pull = _pull(db)
    assert (pull.state, pull.attempts, pull.last_status) == (PullState.DONE, 2, "0x0000")
    notes = _timeline(db, req.id)
    assert notes[0].startswith(f"pull queued: study {study_uid}")
    assert notes[1].startswith("pull attempt 1/3 failed:") and "Next attempt in 30 s" in notes[1]
    assert notes[2].startswith(f"pull attempt 2/3: study {study_uid} sent by the PACS")
    assert PATIENT not in " ".join(notes)

    # The moved study goes the usual way: stable, matched by its UID, count reached.
    later = datetime.now(UTC) + timedelta(days=1)  # arrivals carry the real time
    stable = StabilitySweep(db.sessions, 1, clock=lambda: later).run()
    assert stable == [study_uid]
    rules = load_rules_text(RULES)
    book = RequestBook(db.sessions)
    assert Matcher(db.sessions, content, lambda: rules, book).on_stable(stable) == [req.reference]
    assert book.get(req.id).state == RequestState.READY


def test_attempts_are_bounded_then_staff_see_the_failure(db: Database, tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    clock = Clock()
    failed: list[int] = []
    with Orthanc({"courier": ("COURIER", "127.0.0.1", free_port())}, workdir=tmp_path) as o:
        o.upload(files)
        settings = orthanc_settings(o, max_attempts=2, retry_backoff_s=5)
        queue = PullQueue(
            db.sessions, settings, clock=clock, on_failed=lambda s, rid: failed.append(rid)
        )
        req = _request(db, study_uid, clock)
        queue.enqueue(req.id, [Wanted(study_uid, N_INSTANCES)])
        for _ in range(5):  # bounded: more rounds than attempts
            queue.sweep()
            clock.advance(3600)
    pull = _pull(db)
    assert (pull.state, pull.attempts) == (PullState.FAILED, 2)
    notes = _timeline(db, req.id)
    assert len(notes) == 3  # queued, attempt 1 failed, attempt 2 failed for good
    assert "FAILED (no attempts left)" in notes[-1] and "staff:" in notes[-1]
    assert failed == [req.id]


def test_a_destination_the_pacs_does_not_know_fails_at_once(db: Database) -> None:
    port = free_port()
    clock = Clock()
    with A801MoveScp(port):
        settings = settings_for(("127.0.0.1", port), "NOWHERE", max_attempts=5)
        queue = PullQueue(db.sessions, settings, clock=clock)
        req = _request(db, "1.2.3.4", clock)
        queue.enqueue(req.id, [Wanted("1.2.3.4", N_INSTANCES)])
        assert queue.sweep() == 1
        clock.advance(3600)
        assert queue.sweep() == 0
    pull = _pull(db)
    assert (pull.state, pull.attempts, pull.last_status) == (PullState.FAILED, 1, "0xA801")
    assert "retrying cannot help" in _timeline(db, req.id)[-1]


def test_a_cancelled_request_is_not_pulled(db: Database) -> None:
    clock = Clock()
    moves: list[str] = []

    def move(settings: PacsSettings, uid: str) -> MoveOutcome:
        moves.append(uid)
        raise AssertionError("must not move")

    queue = PullQueue(db.sessions, settings_for(("127.0.0.1", 1)), move=move, clock=clock)
    req = _request(db, "1.2.3.4", clock)
    queue.enqueue(req.id, [Wanted("1.2.3.4", None)])
    RequestBook(db.sessions).cancel(req.id, "test", "patient withdrew")
    assert queue.sweep() == 1
    assert moves == [] and _pull(db).state == PullState.FAILED


def test_a_sweep_that_died_mid_move_is_taken_over_after_its_lease(db: Database) -> None:
    clock = Clock()
    queue = PullQueue(db.sessions, settings_for(("127.0.0.1", 1)), clock=clock)
    req = _request(db, "1.2.3.4", clock)
    queue.enqueue(req.id, [Wanted("1.2.3.4", None)])
    pull_id = _pull(db).id
    assert queue.claim(pull_id)  # a node took it, then crashed
    assert not queue.claim(pull_id) and queue.due() == []
    clock.advance(24 * 3600)
    assert queue.due() == [pull_id] and queue.claim(pull_id)
    assert _pull(db).attempts == 2
