"""``courier report``: the same figures as :mod:`release.report`, as JSON and as text.

A short history a few days old (the command reads the real clock) on SQLite and
PostgreSQL; the exact numbers per day are in ``tests/release/test_report.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node.cli import main
from release.report import CAUSES, OUTCOMES
from tests.conftest import Database, write_config
from tests.peers import free_port
from tests.release.test_report import Past, write


@pytest.fixture
def config(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    url = db.url if not db.schema else f"{db.url}?options=-csearch_path%3D{db.schema}"
    monkeypatch.setenv("COURIER_TEST_DB_URL", url)
    path = tmp_path / "node.yaml"
    write_config(path, tmp_path / "data", free_port(), db)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    created, opened = today - timedelta(days=3), today - timedelta(days=3, hours=-30)
    history = {
        "CLI-DL": Past(created, [("notified", "downloaded", opened)]),  # 30 h
        "CLI-FAIL": Past(created, [("packaging", "failed", created + timedelta(hours=1))]),
        "CLI-OLD": Past(  # 400 days ago: in neither period
            today - timedelta(days=401), [("notified", "downloaded", today - timedelta(days=400))]
        ),
    }
    with db.sessions() as s, s.begin():
        for n, (ref, past) in enumerate(history.items()):
            write(s, ref, past, n)
    return path


@pytest.mark.parametrize("days", [30, 365])
def test_json_gives_the_figures(
    config: Path, days: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["report", "--json", "--config", str(config)]
    assert main([*args, "--days", str(days)] if days != 30 else args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["days"] == days and len(data["per_day"]) == days
    assert data["totals"] == {**dict.fromkeys(OUTCOMES, 0), "downloaded": 1, "failed": 1}
    assert data["failures"] == {**dict.fromkeys(CAUSES, 0), "packaging": 1}
    busy = [d for d in data["per_day"] if any(d[k] for k in OUTCOMES)]
    assert [(d["downloaded"], d["failed"]) for d in busy] == [(0, 1), (1, 0)]
    weeks = [w for w in data["time_to_download"] if w["downloads"]]
    assert [(w["downloads"], w["median_h"], w["p90_h"], w["under_2_days"]) for w in weeks] == [
        (1, 30.0, 30.0, 1)
    ]


def test_text_lists_totals_weeks_causes_and_busy_days(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "(30 days)" in out
    assert any(
        line.split()[:1] == ["Downloaded"] and line.split()[-1] == "1" for line in out.splitlines()
    )
    assert "30.0" in out  # the week's median and 90th percentile
    assert sum(1 for line in out.splitlines() if line.startswith("  20") and "-W" not in line) == 2


@pytest.mark.parametrize("days", ["7", "0", "x"])
def test_only_30_or_365_days(days: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["report", "--days", days, "--config", str(tmp_path / "none.yaml")])
    assert stop.value.code == 2
    assert "--days" in capsys.readouterr().err
