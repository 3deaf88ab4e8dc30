"""Which studies' reports go out: node.yaml's ``delivery.reports``, a release rule's own
``reports:`` for the studies it attached (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from release.reports import studies_with_reports
from release.requests import RequestBook
from rules import RuleSyntaxError, load_rules_text
from store.models import RequestStudy, Study
from tests.conftest import Database
from tests.release.helpers import draft

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULES = """\
rules:
  - name: with-reports
    when: {Modality: CT}
    action: release
    join: {accession: AccessionNumber}
    reports: with_images
  - name: without
    when: {Modality: MR}
    action: release
    join: {accession: AccessionNumber}
    reports: never
  - name: site-default
    action: release
    join: {accession: AccessionNumber}
"""


def test_reports_key_only_on_release_rules() -> None:
    assert load_rules_text(RULES).rule("with-reports").reports == "with_images"  # type: ignore[union-attr]
    with pytest.raises(RuleSyntaxError, match="reports: applies to release rules only"):
        load_rules_text("rules:\n  - name: h\n    action: hold\n    reports: with_images\n")
    with pytest.raises(RuleSyntaxError):
        load_rules_text(RULES.replace("reports: never", "reports: sometimes"))


def test_each_study_follows_the_rule_that_attached_it(db: Database) -> None:
    rules = load_rules_text(RULES)
    req = RequestBook(db.sessions).create(draft(), "test")
    with db.sessions() as s, s.begin():
        for n, rule in enumerate(["with-reports", "without", "site-default", ""], start=1):
            study = Study(study_uid=f"1.2.3.{n}", first_received_at=T0, last_received_at=T0)
            s.add(study)
            s.flush()
            s.add(RequestStudy(request_id=req.id, study_id=study.id, rule=rule, matched_at=T0))
    with db.sessions() as s:
        assert studies_with_reports(s, req.id, rules, "never") == ["1.2.3.1"]
        assert studies_with_reports(s, req.id, rules, "with_images") == [
            "1.2.3.1",
            "1.2.3.3",
            "1.2.3.4",  # attached by staff: the site default
        ]
        assert studies_with_reports(s, req.id, None, "with_images") == [
            "1.2.3.1",
            "1.2.3.2",
            "1.2.3.3",
            "1.2.3.4",
        ]
