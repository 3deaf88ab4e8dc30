"""A DICOM delivery guarded end to end: a stored file that is not the size the index
recorded is not sent (reported unreadable, the rest delivered byte-identical), and an
unexpected exception in building the items or in recording the attempt is a failed
attempt (retry, then ``failed`` and a staff alert), never an exception out of
``deliver`` or the batch. Real pynetdicom peer on loopback; SQLite and PostgreSQL; the
clock is injected.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from delivery import dicomsend
from delivery.batch import DeliveryBatch
from delivery.dicomsend import AttemptReport, DicomDelivery, Target
from delivery.packaging.items import package_items
from delivery.packaging.package import PackageItem
from scp.storescu import attempt
from store.models import Instance, RequestState
from tests.conftest import Database
from tests.delivery.test_dicomsend import N, Rig, recording_scp
from tests.peers import free_port

CUT = 64  # bytes cut from the end of a file: inside its pixel data (the last element)


def _first_instance(rig: Rig) -> tuple[str, Path]:
    with rig.world.sessions() as s:
        uid, relpath = s.execute(
            select(Instance.sop_instance_uid, Instance.path).order_by(Instance.id)
        ).first()  # type: ignore[misc]
    return str(uid), rig.world.content.path(relpath)


def test_a_file_cut_short_after_it_was_indexed_is_not_sent(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=port, commitment="off")
    uid, path = _first_instance(rig)
    stored = rig.stored()
    os.truncate(path, path.stat().st_size - CUT)  # its meta and header still parse
    with caplog.at_level(logging.INFO), recording_scp(port) as peer:
        assert rig.batch.deliver(ref) == "failed"
    assert sorted(peer.uids(0)) == sorted(u for u in stored if u != uid)
    # The others went out byte-identical (the peer's dataset is the stored one).
    assert peer.received == {u: b for u, b in stored.items() if u != uid}
    rows = {r.sop_instance_uid: r.status for r in rig.sends(ref)}
    assert rows[uid] is None and [v for k, v in rows.items() if k != uid] == [0] * (N - 1)
    last = rig.reasons(ref)[-1]
    assert f"sent {N}, acknowledged {N - 1}, failed 1" in last and "unreadable 1" in last
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]
    said = [r.getMessage() for r in caplog.records]
    assert any(uid in m and "size differs from the index" in m for m in said)
    assert not any(str(path.parent) in m or path.name in m for m in said)  # no path


def _batch(rig: Rig, max_attempts: int) -> DeliveryBatch:
    def sender(
        target: Target, items: Sequence[PackageItem], commit_also: Sequence[PackageItem]
    ) -> AttemptReport:
        rig.sent.append([i.sop_instance_uid for i in items])
        return attempt(target, items, settings=rig.settings, commit_also=commit_also)

    return rig.batch_with(rig.delivery(sender, max_attempts=max_attempts))


class Boom(RuntimeError):
    """An unexpected error whose message must not reach the log or the timeline."""

    SECRET = "/data/store/DOE^JANE/1.2.3.dcm"

    def __init__(self) -> None:
        super().__init__(self.SECRET)


def _raise_once(real: Any, calls: list[int]) -> Any:
    """``real``, raising :class:`Boom` on its first call."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise Boom()
        return real(*args, **kwargs)

    return wrapped


STEPS = [
    pytest.param("items", id="building-the-items-raises"),
    pytest.param("record", id="recording-raises"),
]


def _break(monkeypatch: pytest.MonkeyPatch, step: str, calls: list[int]) -> None:
    if step == "items":
        monkeypatch.setattr(dicomsend, "package_items", _raise_once(package_items, calls))
    else:
        real = DicomDelivery._record
        monkeypatch.setattr(DicomDelivery, "_record", _raise_once(real, calls))


@pytest.mark.parametrize("step", STEPS)
def test_a_step_that_raises_is_a_failed_attempt_and_the_batch_goes_on(
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    rig = Rig(db, tmp_path)
    first, second, port = rig.two_requests()
    batch = _batch(rig, max_attempts=4)
    calls: list[int] = []
    _break(monkeypatch, step, calls)
    with caplog.at_level(logging.INFO), recording_scp(port) as peer:
        report = batch.run(urgent_only=False)
    assert len(report.retrying) == 1 and len(report.delivered) == 1
    broken, ok = report.retrying[0], report.delivered[0]
    assert {broken, ok} == {first, second}
    req = rig.book.get(broken)
    assert req.state == RequestState.READY and req.destination is not None
    assert req.destination.attempts == 1 and req.destination.next_attempt_at is not None
    assert "failed unexpectedly (Boom at " in req.destination.last_error
    assert "next attempt in" in rig.reasons(broken)[-1]
    # Nothing of the broken attempt is recorded (sent again next time); the other's is.
    assert rig.sends(broken) == []
    assert [r.status for r in rig.sends(ok)] == [0] * N
    assert rig.book.get(ok).state == RequestState.DELIVERED
    assert not rig.alerts()
    everything = [r.getMessage() for r in caplog.records] + rig.reasons(broken)
    assert not any(Boom.SECRET in m for m in everything)  # type and file:line only
    assert any("raised Boom at " in r.getMessage() for r in caplog.records)
    # The next attempt of the broken one sends every instance once more and records
    # each once.
    rig.later()
    with recording_scp(port) as peer:
        assert batch.deliver(broken) == "delivered"
    assert len(peer.uids(0)) == N
    assert [(r.attempt, r.status) for r in rig.sends(broken)] == [(2, 0)] * N


@pytest.mark.parametrize("step", STEPS)
def test_a_step_that_raises_at_the_last_attempt_fails_with_a_staff_alert(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    port = free_port()
    ref = rig.request(ae_title="HOSP2", host="127.0.0.1", port=port, commitment="off")
    dicom = rig.delivery(rig._send, max_attempts=1)
    calls: list[int] = []
    _break(monkeypatch, step, calls)
    with recording_scp(port):
        assert dicom.deliver(ref) == "failed"
    assert rig.book.get(ref).state == RequestState.FAILED
    assert "gave up after 1 attempts" in rig.reasons(ref)[-1]
    assert rig.sends(ref) == []
    assert [a.params for a in rig.alerts()] == [json.dumps({"alert": "failed", "reference": ref})]


@pytest.fixture
def rig(db: Database, tmp_path: Path) -> Rig:
    return Rig(db, tmp_path)
