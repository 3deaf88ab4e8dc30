"""A served node audits its start, each study it received (pushed with pynetdicom) and its
stop, exports them as JSON lines, and ``courier audit`` lists and filters them. Nothing
in the trail or its copy names the patient."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom

from tests import synthetic
from tests.conftest import COURIER, Database, NodeProcess
from tests.release.helpers import courier
from tests.scu import send

AUDIT = "audit:\n  ship_interval_s: 0.2\n  jsonl:\n    path: audit.jsonl\n"


def _wait_for(node: NodeProcess, *argv: str, rounds: int = 150) -> list[Any]:
    for _ in range(rounds):
        rows = courier(node, "audit", *argv)
        if rows:
            return list(rows)
        time.sleep(0.2)
    raise AssertionError(f"no audit event for {argv}")


def test_a_served_node_audits_start_stored_and_stop(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    node = node_factory(db, extra_scp="stable_after_s: 1\nstability_check_s: 0.2", extra=AUDIT)
    files = synthetic.make_small_instances(tmp_path / "src", n=3, n_series=1, patient_id="PAUD1")
    assert send(node.port, files, calling="MODALITY1") == [0, 0, 0]
    [stored] = _wait_for(node, "--type", "instances-stored")
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert (stored["actor"], stored["host"], stored["studies"]) == (
        "scp:MODALITY1",
        "127.0.0.1",
        [uid],
    )
    assert stored["event_id"]["code"] == "110104" and "3 instance(s)" in stored["detail"]
    node.stop()
    assert node.proc.returncode == 0

    everything = courier(node, "audit")
    assert [r["type"] for r in everything] == [
        "application-start",
        "instances-stored",
        "application-stop",
    ]
    assert courier(node, "audit", "--type", "purge") == []
    assert courier(node, "audit", "--request", "CR-2222-2222-2") == []
    assert courier(node, "audit", "--since", "2999-01-01") == []
    assert len(courier(node, "audit", "--since", "2000-01-01T00:00:00Z")) == 3
    text = subprocess.run(
        [str(COURIER), "audit", "--config", str(node.config)],
        capture_output=True,
        text=True,
        env=node.env,
        timeout=120,
        check=True,
    ).stdout
    assert "instances-stored" in text and f"study {uid}" in text
    bad = subprocess.run(
        [str(COURIER), "audit", "--since", "yesterday", "--config", str(node.config)],
        capture_output=True,
        text=True,
        env=node.env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr

    # The stop event was exported on the way out: the copy is whole.
    lines = (node.data_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    shipped = [json.loads(line) for line in lines]
    assert [r["id"] for r in shipped] == [r["id"] for r in everything]
    for blob in (json.dumps(everything), "\n".join(lines), text):
        assert "PAUD1" not in blob and synthetic.PATIENT_NAME not in blob
        assert "SYNTHETIC" not in blob
