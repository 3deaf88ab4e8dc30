"""``courier pacs find|echo`` and ``courier request create --pull`` end to end: Orthanc
holds a synthetic study, a real ``courier serve`` pulls it (C-MOVE to its own AE) and
the request becomes ready with the PACS's instance count; bad input gets its exit code."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import COURIER, Database, NodeProcess, have_orthanc, need
from tests.orthanc import Orthanc
from tests.peers import free_port
from tests.release.helpers import EMAIL, MOBILE, courier
from tests.scp.pacs_peers import N_INSTANCES, PATIENT, pacs_study

RULES = """\
rules:
  - name: pulled
    action: release
    join: {accession: AccessionNumber}
"""

PULL_ONE = ["request", "create", "--patient-id", "PULL0001"]
PERSON = [
    "--patient-name",
    "Synthetic^Patient",
    "--birth-date",
    "19700131",
    "--email",
    EMAIL,
    "--second-channel",
    f"sms:{MOBILE}",
]


def _pacs_section(port: int, **extra: object) -> str:
    lines = ["pacs:", "  ae_title: ORTHANC", "  host: 127.0.0.1", f"  port: {port}"]
    lines += ["  connect_timeout_s: 5", "  move_timeout_s: 60", "  retry_backoff_s: 1"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _run(config: Path, *argv: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(COURIER), *argv, "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _wait_state(node: NodeProcess, ref: str, want: str, rounds: int = 80) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for _ in range(rounds):  # bounded: rounds x 0.5 s
        shown = courier(node, "request", "show", ref)
        if shown["state"] == want:
            break
        time.sleep(0.5)
    return shown


def test_find_then_pull_makes_the_request_ready(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    (tmp_path / "rules.yaml").write_text(RULES)
    with Orthanc(workdir=tmp_path) as o:
        o.upload(files)
        node = node_factory(
            db,
            extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
            extra=f"rules_file: {tmp_path / 'rules.yaml'}\n" + _pacs_section(o.dicom_port),
        )
        # Orthanc learns Courier (caller and move destination) once its port is known.
        body = {"AET": "COURIER", "Host": "127.0.0.1", "Port": node.port}
        o.request("PUT", "/modalities/courier", json.dumps(body).encode())

        assert courier(node, "pacs", "echo")["ok"] is True
        found = courier(node, "pacs", "find", "--patient-id", PATIENT)
        assert [(s["study_uid"], s["instances"]) for s in found["studies"]] == [
            (study_uid, N_INSTANCES)
        ]
        none = _run(node.config, "pacs", "find", "--patient-id", "NOBODY", env=node.env)
        assert none.returncode == 1 and json.loads(none.stdout)["studies"] == []

        created = courier(
            node,
            "request",
            "create",
            "--patient-id",
            PATIENT,
            *PERSON,
            "--pull",
            "--study-uid",
            study_uid,
        )
        assert created["pulls_queued"] == 1
        assert created["selection"] == [
            {"kind": "study_uid", "value": study_uid, "expected_instances": N_INSTANCES}
        ]
        shown = _wait_state(node, created["reference"], "ready")
    assert shown["state"] == "ready"
    reasons = [e["reason"] for e in shown["timeline"]]
    assert any(r.startswith(f"pull queued: study {study_uid}") for r in reasons)
    assert any(r.startswith("pull attempt 1/5: study") for r in reasons)
    log = node.log.read_text()
    assert PATIENT not in log and "Synthetic" not in log


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["pacs", "find", "--patient-id", PATIENT], 4, "cannot be reached"),
        (["pacs", "echo"], 4, "cannot be reached"),
        (["pacs", "find", "--patient-id", "PAT*"], 2, "wildcards"),
        ([*PULL_ONE, *PERSON, "--pull", "--study-uid", "1.2.3"], 4, "cannot be reached"),
        ([*PULL_ONE, *PERSON, "--pull"], 2, "--study-uid"),
        (
            [*PULL_ONE, *PERSON, "--pull", "--study-uid", "1.2.3", "--expected", "3"],
            2,
            "--expected",
        ),
    ],
)
def test_bad_input_and_a_pacs_that_is_down(
    tmp_path: Path, argv: list[str], status: int, says: str
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node:\n  data_dir: {tmp_path / 'data'}\n" + _pacs_section(free_port(), max_attempts=2)
    )
    out = _run(config, *argv)
    assert out.returncode == status, out.stderr
    assert says in out.stderr
    assert PATIENT not in out.stderr or argv[0] == "pacs"  # only echoed to staff


def test_without_a_pacs_section_pacs_commands_say_what_to_add(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\n")
    for argv in (["pacs", "echo"], [*PULL_ONE, *PERSON, "--pull", "--study-uid", "1.2.3"]):
        out = _run(config, *argv)
        assert out.returncode == 2 and "no pacs: section" in out.stderr
    assert _run(config, "check-config").returncode == 0
    config.write_text(
        f"node:\n  data_dir: {tmp_path / 'data'}\n" + _pacs_section(104, colour="red")
    )
    bad = _run(config, "check-config")
    assert bad.returncode == 2 and "pacs.colour: unknown key" in bad.stderr
