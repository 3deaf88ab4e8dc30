"""End to end with dcmtk's storescu: a request by accession, and one by a reference in a
RIS-filled tag, become ready once their studies are stable; an unmatched study is held
and its decision recorded; a shortfall is never released; an overdue request is moved
(injected clock)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from release.matching import Matcher
from release.requests import RequestBook
from release.validation import RequestDraft
from rules import RuleSet
from store.content import ContentStore
from store.models import RequestState, StudyDecision
from tests import synthetic
from tests.conftest import Database, have_dcmtk, need
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.scu import rewrite, storescu

RULES = """\
rules:
  - name: no-sr
    when: {Modality: SR}
    action: reject
  - name: by-reference
    when: {RequestedProcedureDescription: {regex: 'CR-'}}
    action: release
    join:
      reference: {from: RequestedProcedureDescription, pattern: '(?P<reference>CR-[0-9A-Z-]+)'}
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
    reason: no request; staff decide
"""


def test_requests_become_ready_when_their_studies_are_stable(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    node = node_factory(
        db,
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=f"rules_file: {tmp_path / 'rules.yaml'}\n",
    )
    by_acc = create_by_cli(node, "--accession", "ACC0001", "--expected", "6")
    by_ref = create_by_cli(node, "--by-reference")
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=6, rows=32, cols=32)
    # First 4 of 6: stable, matched, but short of the expected count: not released.
    assert storescu(node.port, ct[:4]).returncode == 0
    assert wait_state(node, by_acc, "receiving") == "receiving"
    time.sleep(2)
    assert courier(node, "request", "show", by_acc)["state"] == "receiving"
    assert storescu(node.port, ct[4:]).returncode == 0
    assert wait_state(node, by_acc, "ready") == "ready"
    # The RIS put the reference in Requested Procedure Description.
    tagged_dir = tmp_path / "tagged"
    tagged_dir.mkdir()
    # The request's patient (create_by_cli): the identity check holds anyone else's.
    small = synthetic.make_small_instances(
        tmp_path / "s", n=3, accession="OTHER", patient_id="SYN0001"
    )
    tagged = [
        rewrite(f, tagged_dir / f.name, RequestedProcedureDescription=f"CT {by_ref}") for f in small
    ]
    assert storescu(node.port, tagged).returncode == 0
    assert wait_state(node, by_ref, "ready") == "ready"
    # A study nobody asked for is held, and the decision says which rule and why.
    stray = synthetic.make_small_instances(
        tmp_path / "stray", n=2, seed=7, accession="NOBODY", patient_id="SYN0099"
    )
    assert storescu(node.port, stray).returncode == 0
    decisions: list[StudyDecision] = []
    for _ in range(40):
        with db.sessions() as s:
            decisions = list(s.scalars(select(StudyDecision)))
        if len(decisions) >= 4:
            break
        time.sleep(0.5)
    actions = sorted((d.action, d.rule) for d in decisions)
    assert ("release", "by-accession") in actions and ("release", "by-reference") in actions
    held = [d for d in decisions if d.action == "hold"]
    assert len(held) == 1 and held[0].rule == "by-accession"
    assert "no pending request" in held[0].reason
    timeline = courier(node, "request", "show", by_acc)
    assert [e["to"] for e in timeline["timeline"]][-2:] == ["receiving", "ready"]


def test_overdue_with_an_injected_clock(db: Database, tmp_path: Path) -> None:
    now = [datetime(2026, 3, 1, 9, 0, tzinfo=UTC)]
    book = RequestBook(db.sessions, clock=lambda: now[0])
    draft = RequestDraft.model_validate(
        {
            "patient_id": "SYN1",
            "patient_name": "Synthetic^Patient",
            "patient_birth_date": "19700131",
            "recipient_email": "p@example.org",
            "second_channel": "sms:+447911123456",
            "requested_by": "staff",
            "selection": [{"kind": "accession", "value": "ACC9"}],
        }
    )
    req = book.create(draft, "test")
    matcher = Matcher(
        db.sessions, ContentStore(tmp_path), lambda: RuleSet([]), book, clock=lambda: now[0]
    )
    now[0] += timedelta(hours=71)
    assert matcher.sweep_overdue(72) == []
    now[0] += timedelta(hours=2)
    assert matcher.sweep_overdue(72) == [req.reference]
    assert matcher.sweep_overdue(72) == []  # moved once
    assert book.get(req.reference).state == RequestState.OVERDUE
    assert "staff alerted" in book.timeline(req.reference)[-1].reason
