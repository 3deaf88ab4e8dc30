"""A study that a request names by its Study Instance UID (staff picked it, or pulled it
from the PACS) joins that request when the rules hold it (a hold rule, or no rule at
all), never when they discard it; join keys are still needed for everything else."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from release.matching import Matcher
from rules import load_rules_text
from store.models import RequestState, Study, StudyDecision
from tests.conftest import Database
from tests.release.helpers import draft
from tests.release.test_purge import World

NO_RULES = "rules: []\n"
HOLD_ALL = """\
rules:
  - name: everything-else
    action: hold
"""
DISCARD_ALL = """\
rules:
  - name: junk
    action: discard
    retention_days: 2
"""
BY_ACCESSION = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
"""


def _world(db: Database, root: Path, rules_text: str) -> World:
    world = World(db, root)
    rules = load_rules_text(rules_text)
    world.matcher = Matcher(
        db.sessions, world.content, lambda: rules, world.book, clock=world.clock
    )
    return world


def _decision(world: World, uid: str) -> tuple[str, str]:
    with world.sessions() as s:
        row = s.execute(
            select(StudyDecision.action, StudyDecision.reason)
            .join(Study, Study.id == StudyDecision.study_id)
            .where(Study.study_uid == uid)
            .order_by(StudyDecision.id.desc())
        ).first()
        assert row is not None
        return row[0], row[1]


@pytest.mark.parametrize(
    ("rules_text", "by", "state", "action", "why"),
    [
        (NO_RULES, "study_uid", RequestState.READY, "release", "held by no rule"),
        (HOLD_ALL, "study_uid", RequestState.READY, "release", "held by rule everything-else"),
        (BY_ACCESSION, "study_uid", RequestState.READY, "release", ""),
        (DISCARD_ALL, "study_uid", RequestState.PENDING, "discard", ""),
        (NO_RULES, "accession", RequestState.PENDING, "hold", "no rule matched"),
        (HOLD_ALL, "accession", RequestState.PENDING, "hold", ""),
        (BY_ACCESSION, "accession", RequestState.READY, "release", ""),
    ],
)
@pytest.mark.parametrize("request_first", [True, False])
def test_named_studies_join_when_held(
    db: Database,
    tmp_path: Path,
    rules_text: str,
    by: str,
    state: RequestState,
    action: str,
    why: str,
    request_first: bool,
) -> None:
    world = _world(db, tmp_path, rules_text)
    uid = ""

    def ask() -> str:
        value = uid if by == "study_uid" else "ACC77"
        selection = [{"kind": by, "value": value, "expected_instances": 3}]
        return world.book.create(draft(selection=selection), "test").reference

    if request_first:
        # The UID must be known to name it: a pull knows it from C-FIND before the move.
        uid = world.receive("named", 3, accession="ACC77")  # received, not yet stable
        ref = ask()
        world.settle()
    else:
        uid = world.receive("named", 3, accession="ACC77")
        world.settle()
        world.clock.now += timedelta(minutes=5)  # staff ask later
        ref = ask()
        world.matcher.sweep_new_requests()
    assert world.book.get(ref).state == state
    got_action, reason = _decision(world, uid)
    assert got_action == action
    assert why in reason
