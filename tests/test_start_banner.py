"""``courier serve`` says once where to go next (staff URL, staff accounts and the
command to add one, AE title and ports, public URL), and its log stays quiet while
nothing happens: no APScheduler "Running job"/"executed successfully" lines, no
uvicorn chatter, however often the jobs run."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from node.app import setup_logging
from node.banner import banner_lines
from node.config import load_config
from tests.conftest import COURIER, start_node, write_config

#: Jobs every 0.2 s: two intervals of each pass within the wait below.
FAST_JOBS = "delivery:\n  urgent_check_s: 0.2\n  sweep_interval_s: 0.2\n"


def _lines(log: Path, words: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if words in line]


def test_the_banner_once_and_no_scheduler_chatter(tmp_path: Path) -> None:
    node = start_node(tmp_path, extra_scp="stability_check_s: 0.2", extra=FAST_JOBS)
    try:
        cfg = load_config(node.config)
        url = cfg.portal.public_url
        for _ in range(100):  # bounded: 100 x 0.1 s; the banner follows the web start
            if _lines(node.log, "staff pages:"):
                break
            time.sleep(0.1)
        # A staff account added while it runs changes nothing in the log (said once).
        subprocess.run(
            [
                str(COURIER),
                "staff",
                "add",
                "alice",
                "--password-file",
                "-",
                "--config",
                str(node.config),
            ],
            input=b"correct horse battery staple\n",
            check=True,
            capture_output=True,
            timeout=60,
        )
        time.sleep(1.0)  # five rounds of each 0.2 s job (a wait, not a measured time)
    finally:
        node.stop()
    log = node.log.read_text(errors="replace")
    assert len(_lines(node.log, "where to go next")) == 1
    [staff] = _lines(node.log, "staff pages:")
    assert f"{url}/staff" in staff
    assert f"`courier staff add USERNAME --config {node.config}`" in staff
    [dicom] = _lines(node.log, "DICOM:")
    assert f"AE title COURIER on port {node.port}" in dicom
    assert f"{url}/d/" in log
    # The jobs ran (the relay and sweeps every 0.2 s) without a line each.
    assert "Running job" not in log and "executed successfully" not in log
    assert "apscheduler" not in log and "uvicorn" not in log


@pytest.mark.parametrize(
    ("role", "accounts", "present", "absent"),
    [
        ("all", 0, ["/staff", "courier staff add USERNAME", "AE title COURIER on port 104"], []),
        (
            "all",
            2,
            ["2 staff account(s) can sign in", "DICOM over TLS on port 2762"],
            ["staff add"],
        ),
        ("all", None, ["staff accounts unknown"], ["staff add"]),
        ("web", 1, ["/staff"], ["DICOM:"]),
        ("scp", None, ["AE title COURIER on port 104"], ["/staff"]),
        ("worker", None, ["where to go next"], ["/staff", "DICOM:"]),
    ],
)
def test_what_each_role_says(
    tmp_path: Path, role: str, accounts: int | None, present: list[str], absent: list[str]
) -> None:
    path = tmp_path / "node.yaml"
    (tmp_path / "tls").mkdir()
    write_config(
        path,
        tmp_path / "data",
        104,
        extra_scp="tls_port: 2762\ntls_cert_file: c.pem\ntls_key_file: k.pem",
        extra_portal="public_url: https://courier.example.org",
    )
    cfg = load_config(path)
    receives = role in ("all", "scp")
    text = "\n".join(banner_lines(cfg, role, 104 if receives else None, accounts))
    assert "https://courier.example.org" in text or role in ("scp", "worker")
    for words in present:
        assert words in text
    for words in absent:
        assert words not in text


def test_a_skipped_overlapping_run_is_not_logged_but_a_missed_one_is() -> None:
    """A job still running at its next tick is not doubled (max_instances=1, by design):
    APScheduler's warning about it is dropped; a run missed past its grace still shows."""
    root = logging.getLogger()
    level = root.level
    setup_logging()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    scheduler = logging.getLogger("apscheduler.scheduler")
    keep = Keep()
    scheduler.addHandler(keep)
    try:
        scheduler.warning(
            'Execution of job "sweep" skipped: maximum number of running instances reached (1)'
        )
        scheduler.warning('Run time of job "nightly" was missed by 2:00:00')
    finally:
        scheduler.removeHandler(keep)
        for h in [h for h in root.handlers if getattr(h, "courier", False)]:
            root.removeHandler(h)  # as it was: other tests see no handler of ours
        root.setLevel(level)
    assert seen == ['Run time of job "nightly" was missed by 2:00:00']
