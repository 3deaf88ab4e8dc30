"""A DICOM delivery whose sender raises, or cannot read a stored file: the attempt is
recorded through the usual failure path (retry, staff alert), never an exception out of
``deliver`` or the batch. SQLite and PostgreSQL; the clock is injected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from delivery.dicomsend import AttemptReport, Target
from delivery.packaging.package import PackageItem
from scp.storescu import attempt
from store.models import Instance, RequestState
from tests.conftest import Database
from tests.delivery.test_dicomsend import N, Rig, recording_scp
from tests.peers import free_port


def _raising(
    _target: Target, _items: Sequence[PackageItem], _commit_also: Sequence[PackageItem]
) -> AttemptReport:
    raise RuntimeError(
        "The association with a peer SCP must be established prior to sending an N-ACTION request"
    )


def test_a_sender_that_raises_is_a_failed_attempt_then_a_staff_alert(rig: Rig) -> None:
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=free_port())
    dicom = rig.delivery(_raising, max_attempts=2)
    assert dicom.deliver(ref) == "retrying"
    req = rig.book.get(ref)
    assert req.state == RequestState.READY and req.destination is not None
    assert req.destination.attempts == 1
    assert "failed unexpectedly (RuntimeError at " in req.destination.last_error
    assert "sent 0, acknowledged 0" in rig.reasons(ref)[-1]
    assert rig.sends(ref) == [] and not rig.alerts()
    rig.later()
    assert dicom.deliver(ref) == "failed"
    assert rig.book.get(ref).state == RequestState.FAILED
    assert "gave up after 2 attempts" in rig.reasons(ref)[-1]
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]


def test_a_sender_that_raises_does_not_stop_the_batch(db: Database, tmp_path: Path) -> None:
    """The batch goes on to the next request (delivered here) after the failed one."""
    rig = Rig(db, tmp_path)
    first, second, port = rig.two_requests()

    def sender(
        target: Target, items: Sequence[PackageItem], commit_also: Sequence[PackageItem]
    ) -> AttemptReport:
        if not rig.sent:
            rig.sent.append([])
            return _raising(target, items, commit_also)
        return attempt(target, items, settings=rig.settings, commit_also=commit_also)

    batch = rig.batch_with(rig.delivery(sender, max_attempts=4))
    with recording_scp(port):
        report = batch.run(urgent_only=False)
    assert len(report.retrying) == 1 and len(report.delivered) == 1
    assert {*report.retrying, *report.delivered} == {first, second}
    assert rig.book.get(report.retrying[0]).state == RequestState.READY


def test_an_unreadable_stored_file_fails_the_request_with_the_rest_recorded(
    rig: Rig,
) -> None:
    port = free_port()
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=port, commitment="off")
    with rig.world.sessions() as s:
        uid, relpath = s.execute(
            select(Instance.sop_instance_uid, Instance.path).order_by(Instance.id)
        ).first()  # type: ignore[misc]
    rig.world.content.path(relpath).unlink()  # gone, and not yet flagged missing
    with recording_scp(port) as peer:
        assert rig.batch.deliver(ref) == "failed"
    assert len(peer.uids(0)) == N - 1 and uid not in peer.uids(0)
    rows = {r.sop_instance_uid: r.status for r in rig.sends(ref)}
    assert rows[uid] is None and [v for k, v in rows.items() if k != uid] == [0] * (N - 1)
    last = rig.reasons(ref)[-1]
    assert f"sent {N}, acknowledged {N - 1}, failed 1" in last and "unreadable 1" in last
    assert "could not be read" in last
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]
    # Staff resend once the store is fixed: only that one would go (the rest acknowledged).


@pytest.fixture
def rig(db: Database, tmp_path: Path) -> Rig:
    return Rig(db, tmp_path)
