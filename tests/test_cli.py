"""`courier studies list|show`, `version`: what arrived, as text and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import main
from store.db import make_engine, make_sessions, migrate
from tests import synthetic
from tests.conftest import Database, LocalScp, start_local_scp
from tests.scu import send


@pytest.fixture
def local_scp(tmp_path: Path) -> Iterator[LocalScp]:
    """An in-process SCP on a SQLite file that the CLI then reads."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = make_engine(url)
    migrate(engine)
    scp = start_local_scp(
        Database("sqlite", url, None, engine, make_sessions(engine)), tmp_path / "data"
    )
    yield scp
    scp.server.shutdown()
    scp.server.server_close()
    engine.dispose()


@pytest.fixture
def config(local_scp: LocalScp, tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(
        f"node:\n  data_dir: {local_scp.content.root}\nstore:\n  database_url: {local_scp.db.url}\n"
    )
    return path


def test_studies_list_and_show(
    local_scp: LocalScp, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = synthetic.make_small_instances(tmp_path / "s", n=8, n_series=2)
    assert send(local_scp.port, files, calling="MODALITY1") == [0] * 8
    capsys.readouterr()
    assert main(["studies", "list", "--json", "--config", str(config)]) == 0
    studies = json.loads(capsys.readouterr().out)
    assert len(studies) == 1
    study = studies[0]
    assert (study["instances"], study["state"], study["calling_ae"]) == (
        8,
        "receiving",
        "MODALITY1",
    )
    assert study["size_bytes"] > 0 and study["first_received_at"] <= study["last_received_at"]
    assert main(["studies", "list", "--state", "stable", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["studies", "show", study["study_uid"], "--json", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["instances"] for s in shown["series"]] == [4, 4]
    assert shown["events"][0]["to"] == "receiving"
    assert (shown["missing_files"], shown["conflicts"]) == (0, 0)
    assert main(["studies", "list", "--config", str(config)]) == 0
    assert study["study_uid"] in capsys.readouterr().out


def test_unknown_study_and_bad_config(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["studies", "show", "1.2.3.4", "--config", str(config)]) == 1
    assert "no study 1.2.3.4" in capsys.readouterr().err
    assert main(["studies", "list", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"]


def test_unreachable_database_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    path = tmp_path / "node.yaml"
    path.write_text(
        f"node:\n  data_dir: {tmp_path / 'd'}\nstore:\n"
        f"  database_url: postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x\n"
        "  busy_timeout_s: 1\n"
    )
    assert main(["studies", "list", "--config", str(path)]) == 3
    assert "cannot open the index database" in capsys.readouterr().err
