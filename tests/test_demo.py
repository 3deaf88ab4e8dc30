"""``courier demo push``: what it sends, and a clear exit 4 when the node cannot take it.

The whole five-minute journey (push, request, link, code, ZIP) is
``tests/test_quickstart.py``; here the command's own edges against a real node on
loopback: an AE the node does not allow, nobody listening, and ``--json``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.demo import DEMO_BIRTH_DATE, DEMO_PATIENT_NAME
from tests.conftest import COURIER, NodeProcess, free_port, write_config


def demo_push(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COURIER), "demo", "push", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def node(node_factory: Any) -> NodeProcess:
    started: NodeProcess = node_factory(extra_scp="allowed_calling_aes: [ECHOSCU, PACS1]")
    return started


def test_push_to_the_node_in_config_prints_what_it_sent(node: NodeProcess) -> None:
    done = demo_push(
        node.config, "--calling-aet", "PACS1", "--instances", "2", "--accession", "DEMO42", "--json"
    )
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert (sent["instances"], sent["acknowledged"]) == (2, 2)
    assert (sent["accession"], sent["patient_name"]) == ("DEMO42", DEMO_PATIENT_NAME)
    assert sent["to"] == f"COURIER@127.0.0.1:{node.port}"
    shown = subprocess.run(
        [
            str(COURIER),
            "studies",
            "show",
            sent["study_uid"],
            "--json",
            "--config",
            str(node.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert DEMO_PATIENT_NAME in shown.stdout and DEMO_BIRTH_DATE not in sent["patient_id"]
    # The same patient and accession again: an identical re-send, acknowledged, one copy.
    again = demo_push(
        node.config, "--calling-aet", "PACS1", "--instances", "2", "--accession", "DEMO42"
    )
    assert again.returncode == 0, again.stderr
    assert "sent 2 of 2 instances" in again.stdout


def test_push_to_a_node_that_refuses_our_ae_exits_4_saying_what_to_change(
    node: NodeProcess,
) -> None:
    done = demo_push(node.config, "--instances", "1")  # COURIER_DEMO is not allowed there
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for word in (f"COURIER@127.0.0.1:{node.port}", "refused", "allowed_calling_aes"):
        assert word in done.stderr, done.stderr


def test_push_with_nobody_listening_exits_4_saying_where(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    port = free_port()
    write_config(config, tmp_path / "node-data", port)
    done = demo_push(config, "--instances", "1")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert f"COURIER@127.0.0.1:{port}" in done.stderr, done.stderr
