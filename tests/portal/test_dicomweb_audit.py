"""DICOMweb's audit of a token's first retrieval (and first search) is written once, even
when a viewer's first requests arrive together: parallel threads (one app, or one app
each, as several processes or nodes would be) race into ``audit_once`` at a barrier and
exactly one timeline event and one audit-trail event come out, on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from portal.dicomweb_scope import Scope, _scope, audit_once
from store.models import AuditEvent
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig

rig = patient_rig.rig
built_package = patient_rig.built_package

THREADS = 8


def _app() -> Any:
    """What ``audit_once`` reads of a request: its app's state (a fresh one: no memo)."""
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace()))


def _race(rig: Rig, scope: Scope, study: str | None, *, shared_app: bool) -> None:
    shared = _app()
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def one() -> None:
        request = shared if shared_app else _app()
        try:
            barrier.wait(timeout=30)
            audit_once(rig.ctx, request, scope, study)
        except BaseException as exc:  # reported below, on the test thread
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


@pytest.mark.parametrize("shared_app", [True, False], ids=["one-app", "app-per-thread"])
def test_parallel_first_requests_audit_a_study_once(rig: Rig, shared_app: bool) -> None:
    p = rig.patient()
    scope = _scope(rig.ctx, p.grant_id, "cdw-test", rig.clock())
    assert scope is not None
    (study,) = scope.studies

    _race(rig, scope, study, shared_app=shared_app)
    _race(rig, scope, None, shared_app=shared_app)
    _race(rig, scope, study, shared_app=shared_app)  # again: still once

    reasons = [e.reason for e in rig.events(p.request_id) if "DICOMweb" in e.reason]
    assert sorted(reasons) == [
        "DICOMweb: studies searched with token cdw-test",
        "DICOMweb: study 1 retrieved with token cdw-test",
    ]
    with rig.db.sessions() as s:
        kinds = [a.kind for a in s.scalars(select(AuditEvent)) if "DICOMweb" in a.detail]
    assert sorted(kinds) == ["export", "query"]

    # Another token of the same grant is audited on its own, once.
    other = _scope(rig.ctx, p.grant_id, "cdw-other", rig.clock())
    assert other is not None
    _race(rig, other, study, shared_app=shared_app)
    reasons = [e.reason for e in rig.events(p.request_id) if "cdw-other" in e.reason]
    assert reasons == ["DICOMweb: study 1 retrieved with token cdw-other"]
