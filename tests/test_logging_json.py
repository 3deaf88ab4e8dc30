"""``node.log_format: json``: one JSON object per line, from the parent and from every
receiving process, with the fields a log shipper needs, and no patient data."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from node.app import setup_logging
from telemetry.jsonlog import JsonFormatter
from tests import synthetic
from tests.conftest import COURIER, free_port, wait_for_echo, write_config
from tests.scu import send

PATIENT_ID = "JSONLOG-PID-0815"


def _record(msg: str, *args: object, **kw: object) -> logging.LogRecord:
    return logging.LogRecord("courier.test", logging.WARNING, __file__, 1, msg, args, None, **kw)


def test_a_record_is_one_line_with_its_fields() -> None:
    record = _record("stored %d instances\nfrom %s", 3, "PACS1")
    record.calling_ae = "PACS1"  # as logging does with extra={...}
    record.path = Path("/data/x")  # not JSON itself: written as text
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "courier.test"
    assert data["message"] == "stored 3 instances\nfrom PACS1"
    assert data["time"].endswith("+00:00") and "T" in data["time"]
    assert data["calling_ae"] == "PACS1" and data["path"] == "/data/x"
    assert "args" not in data and "msg" not in data


def test_an_exception_is_kept_in_the_line() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad value" in data["exception"]


def test_setup_logging_replaces_its_own_handler_only(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        setup_logging("INFO")
        setup_logging("INFO", "json")
        ours = [h for h in root.handlers if getattr(h, "courier", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert all(h in root.handlers for h in before)  # pytest's handlers stay
    finally:
        for h in [h for h in root.handlers if getattr(h, "courier", False)]:
            root.removeHandler(h)
        root.setLevel(level)


def test_a_served_node_logs_json_lines_without_patient_data(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    config = tmp_path / "node.yaml"
    write_config(
        config,
        tmp_path / "data",
        port,
        extra_scp="workers: 2\nallowed_calling_aes: [ECHOSCU, PYSCU]",
        web_port=web_port,
    )
    text = config.read_text()
    config.write_text(text.replace("node:\n", "node:\n  log_format: json\n", 1))
    log = tmp_path / "node.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(COURIER), "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_echo(port, proc)
        files = synthetic.make_small_instances(
            tmp_path / "in", n=6, n_series=1, rows=8, cols=8, patient_id=PATIENT_ID
        )
        for f in files:  # one association each: both receiving processes log
            assert send(port, [f]) == [0]
        with pytest.raises(ConnectionError):
            send(port, files[:1], calling="STRANGER")
    finally:
        proc.terminate()
        proc.wait(15)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("association rejected") for r in records)
    assert any(r["message"].startswith("node ") and "ready" in r["message"] for r in records)
    assert len({r["process"] for r in records}) >= 2  # the parent and its receivers
    body = log.read_text()
    assert PATIENT_ID not in body and synthetic.PATIENT_NAME not in body
