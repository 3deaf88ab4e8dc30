"""A request whose study's rule no longer exists is held as its own kind, ``rule_missing``
(not ``staff``, which a staff member sets): staff are alerted with the reason and what to
do next, not with the report wait's words.

The node's own delivery service over node.yaml (SQLite and PostgreSQL), on an injected
clock; the alert rendered in every language.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from delivery.messages import staff_alert
from node.config import load_config
from node.delivery import DeliveryService
from release.embargo import RULE_MISSING
from store.content import ContentStore
from store.models import Notification
from tests.conftest import Database
from tests.release.test_cli_requests import config as config
from tests.release.test_embargo import World

LANGUAGES = ["en", "ar", "zh-Hans"]


def test_the_node_alerts_staff_that_a_rule_is_missing(
    db: Database, config: Path, tmp_path: Path
) -> None:
    world = World(db, tmp_path)
    service = DeliveryService(
        load_config(config), db.sessions, ContentStore(tmp_path / "data"), clock=world.clock
    )
    ref = world.ready("renamed-since")  # the node's rules have no such rule
    assert service.keeper.sweep() == [ref]
    assert world.row(ref).hold_kind == RULE_MISSING
    assert service.keeper.sweep() == []  # held until staff act: no second alert
    with db.sessions() as s:
        kinds = list(s.scalars(select(Notification.kind)))
    assert kinds == ["alert_release_rule_missing"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_staff_alert_says_the_rule_is_missing(language: str) -> None:
    msg = staff_alert(
        to="staff@example.org",
        kind="release_rule_missing",
        reference="CR-7KQ4-M2XD-9",
        message_id="abc@example.org",
        language=language,
    )
    assert "CR-7KQ4-M2XD-9" in msg.subject and "CR-7KQ4-M2XD-9" in msg.text
    assert "{{" not in msg.text and "%(" not in msg.text
    if language == "en":
        assert "rule" in msg.subject and "final report" not in msg.subject
        assert "release it on the request's staff page" in msg.text
    else:
        assert "rule" not in msg.subject and "rule" not in msg.text  # translated
