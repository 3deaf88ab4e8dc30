"""Rules in the node: validated with node.yaml, `reject` refuses at C-STORE, hot reload
keeps the running rules when the new ones are invalid, `courier rules test` explains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from node.cli import main
from node.config import ConfigError, load_config
from tests import synthetic
from tests.conftest import COURIER, spool_leftovers
from tests.scu import rewrite, send

REJECT_SR_AND_STRANGERS = """\
rules:
  - name: no-sr
    when: {Modality: SR}
    action: reject
    reason: structured reports are not released
  - name: not-from-test-ae
    when: {calling_ae: {one_of: [TESTAE]}}
    action: reject
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
"""


def test_node_yaml_rules_errors_carry_node_yaml_lines(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "scp:\n  port: 11112\nrules:\n  - name: a\n    action: hold\n"
        "  - name: b\n    when: {Modalty: CT}\n    action: reject\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:7:" in text and "[rule b]" in text and "Modalty" in text


def test_rules_and_rules_file_are_exclusive_and_relative(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(REJECT_SR_AND_STRANGERS)
    path = tmp_path / "node.yaml"
    path.write_text("rules_file: rules.yaml\n")
    assert len(load_config(path).ruleset) == 4
    path.write_text("rules_file: rules.yaml\nrules: []\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config(path)
    path.write_text("rules_file: missing.yaml\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_reject_rules_refuse_at_c_store(node_factory: object, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(REJECT_SR_AND_STRANGERS)
    node = node_factory(extra=f"rules_file: {tmp_path / 'rules.yaml'}\n")  # type: ignore[operator]
    files = synthetic.make_small_instances(tmp_path / "s", n=3)
    sr = rewrite(files[0], tmp_path / "sr.dcm", Modality="SR")
    assert send(node.port, [sr, files[1]]) == [0x0124, 0x0000]
    assert send(node.port, [files[2]], calling="TESTAE") == [0x0124]
    stored = list((node.data_dir / "instances").rglob("*.dcm"))
    assert len(stored) == 1
    assert spool_leftovers(node.data_dir) == []
    assert "refused by rule no-sr" in node.log.read_text()


def test_hot_reload_and_a_failed_reload_keeps_running_rules(
    node_factory: object, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: everything\n    action: hold\n")
    node = node_factory(extra=f"rules_file: {rules}\n")  # type: ignore[operator]
    files = synthetic.make_small_instances(tmp_path / "s", n=4)
    assert send(node.port, [files[0]], calling="TESTAE") == [0x0000]
    rules.write_text(REJECT_SR_AND_STRANGERS)
    status = None
    for _ in range(50):  # the file is polled about once a second
        time.sleep(0.2)
        status = send(node.port, [files[1]], calling="TESTAE")[0]
        if status == 0x0124:
            break
    assert status == 0x0124
    rules.write_text("rules:\n  - name: broken\n    action: explode\n")
    os.kill(node.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "rules reload failed" not in node.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = node.log.read_text()
    assert "rules reload failed; the running rules stay in force" in log
    assert "explode" in log
    assert send(node.port, [files[2]], calling="TESTAE") == [0x0124]  # still the old rules
    assert send(node.port, [files[3]], calling="OTHER") == [0x0000]

    # `courier status` says so (exit 1), and is healthy again once the file is fixed.
    code, status_doc = _status(node)
    assert code == 1 and status_doc["running"] is True
    assert "explode" in status_doc["rules_error"] and status_doc["node"]["rules_count"] == 4
    rules.write_text(REJECT_SR_AND_STRANGERS)
    os.kill(node.proc.pid, signal.SIGHUP)
    code, status_doc = _status(node, until_healthy=True)
    assert code == 0 and status_doc["rules_error"] is None
    assert sum(status_doc["studies"].values()) == 1  # type: ignore[attr-defined]
    node.stop()
    code, status_doc = _status(node)
    assert code == 1 and status_doc["running"] is False and status_doc["node"]["stopped_at"]
    text = subprocess.run(
        [COURIER, "status", "--config", str(node.config)],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "node stopped at" in text
    # Staff were alerted once (held: this node has no delivery.staff_email).
    outbox = subprocess.run(
        [COURIER, "outbox", "list", "--json", "--config", str(node.config)],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    alerts = [n for n in json.loads(outbox) if n["kind"] == "alert_rules_reload_failed"]
    assert [a["state"] for a in alerts] == ["held"]


def _status(node: object, until_healthy: bool = False) -> tuple[int, dict[str, object]]:
    """``courier status --json`` (polled: the node rewrites its status every sweep)."""
    deadline = time.monotonic() + 15
    while True:
        done = subprocess.run(
            [COURIER, "status", "--json", "--config", str(node.config)],  # type: ignore[attr-defined]
            env=node.env,  # type: ignore[attr-defined]
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        doc = json.loads(done.stdout)
        settled = doc["healthy"] if until_healthy else doc["rules_error"] or not doc["running"]
        if settled or time.monotonic() > deadline:
            return done.returncode, doc
        time.sleep(0.3)


def test_rules_test_explains_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(REJECT_SR_AND_STRANGERS)
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=2, rows=32, cols=32)
    (tmp_path / "sr").mkdir()
    sr = rewrite(ct[0], tmp_path / "sr" / "sr.dcm", Modality="SR")
    (tmp_path / "notdicom.txt").write_text("hello")
    code = main(
        [
            "rules",
            "test",
            "--rules",
            str(rules),
            "--json",
            "--calling-ae",
            "PACS",
            str(tmp_path / "ct"),
            str(sr),
            str(tmp_path / "notdicom.txt"),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (study,) = out["studies"]  # the SR copy shares the CT's study
    assert (study["instances"], study["rejected_instances"]) == (3, 1)
    assert study["at_store"]["rule"] == "no-sr"
    assert study["when_stable"]["rule"] == "by-accession"
    assert study["when_stable"]["join"] == {"accession": "ACC0001"}
    assert out["skipped"] == [str(tmp_path / "notdicom.txt")]
    assert main(["rules", "test", "--rules", str(tmp_path / "missing.yaml"), str(sr)]) == 2


def test_rules_test_cli_text_output(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(REJECT_SR_AND_STRANGERS)
    f = synthetic.make_small_instances(tmp_path / "s", n=1)[0]
    out = subprocess.run(
        [str(COURIER), "rules", "test", "--rules", str(rules), "--calling-ae", "TESTAE", str(f)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout and "not-from-test-ae" in out.stdout
