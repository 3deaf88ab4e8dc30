"""Each node's own files when nodes share a data directory (and the database): status,
rules record, run lock; one node alone keeps the plain names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.config import load_config
from node.runlock import lock_path
from node.status import StatusFile, read_status
from node.stores import rules_record, status_path

SHARED = "postgresql+psycopg://u@127.0.0.1/test"


def _cfg(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"node: {{name: {name}, data_dir: data}}\n")
    return path


@pytest.mark.parametrize(
    ("where", "alone", "shared"),
    [
        (status_path, "status.json", "status/{name}.json"),
        (rules_record, "rules-accepted.json", "rules-accepted/{name}.json"),
        (lock_path, "node.lock", "node-{name}.lock"),
    ],
    ids=["status", "rules-record", "run-lock"],
)
def test_each_node_has_its_own_file_on_a_shared_data_directory(
    tmp_path: Path, where: object, alone: str, shared: str
) -> None:
    data = tmp_path / "data"
    got = {n: where(load_config(_cfg(tmp_path, n)), SHARED) for n in ("a", "b")}  # type: ignore[operator]
    assert got == {n: data / shared.format(name=n) for n in ("a", "b")}
    one = where(load_config(_cfg(tmp_path, "a")), f"sqlite:///{tmp_path}/x.db")  # type: ignore[operator]
    assert one == data / alone


def test_two_nodes_statuses_do_not_overwrite_each_other(tmp_path: Path) -> None:
    paths = [status_path(load_config(_cfg(tmp_path, n)), SHARED) for n in ("a", "b")]
    StatusFile(paths[0]).write(scp_port=11112, rules_error=None)
    StatusFile(paths[1]).write(scp_port=11113, rules_error="broken")
    docs = [json.loads(p.read_text()) for p in paths]
    assert [d["scp_port"] for d in docs] == [11112, 11113]
    assert paths[0].parent.stat().st_mode & 0o077 == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in paths)


def test_status_reads_the_nodes_own_file(tmp_path: Path, db: object) -> None:
    paths = [status_path(load_config(_cfg(tmp_path, n)), SHARED) for n in ("a", "b")]
    StatusFile(paths[1]).write(scp_port=11113, rules_error="broken")
    a = read_status(paths[0], db.sessions, stale_after_s=30)  # type: ignore[attr-defined]
    b = read_status(paths[1], db.sessions, stale_after_s=30)  # type: ignore[attr-defined]
    assert a["running"] is False and a["rules_error"] is None
    assert b["running"] is True and b["rules_error"] == "broken"
