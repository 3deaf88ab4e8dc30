"""A failed report update logs the exception's type, never its text: an SQLAlchemy
error carries the statement's parameters (the patient's email)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from delivery.report_updates import ReportUpdates
from store.content import ContentStore
from tests.conftest import Database

EMAIL = "synthetic.patient@example.org"


class _Failing(ReportUpdates):
    def candidates(self, s: Session, limit: int = 1000, after: int = 0) -> list[int]:
        return [7]

    def update(self, request_id: int) -> str | None:
        raise RuntimeError(f"INSERT ... parameters: ('{EMAIL}',)")


def test_a_failed_update_logs_no_exception_text(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox: Any = None
    updates = _Failing(
        db.sessions,
        ContentStore(tmp_path / "data"),
        outbox,
        tmp_path / "packages",
        report_studies=lambda s, rid: ["1.2.3"],
    )
    with caplog.at_level(logging.DEBUG):
        assert updates.sweep() == []
    assert "RuntimeError" in caplog.text
    assert EMAIL not in caplog.text
