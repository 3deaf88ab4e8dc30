"""The receiving processes (node.receiver) import only what receiving needs, and the node
process none of the SCP's server side; a receiver that cannot listen stops the node.

The import graph is checked on ``sys.modules``, not on memory figures (bench/ingest.py
measures those): a fresh interpreter runs the receiver's start-up exactly as
``python -m node.receiver`` does, takes a push, and reports the packages it loaded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import load_config
from node.rulebook import Rulebook
from node.stores import open_store, rules_record, store_url
from tests import synthetic
from tests.conftest import COURIER, free_port, start_node, write_config
from tests.scu import send

#: Never in a receiving process (what each is for in the node, and who imported it before).
NOT_IN_A_RECEIVER = (
    "numpy",  # pixel decoding: pydicom imported it, the header walk never decodes
    "PIL",  # pixel decoding and previews (pydicom, imaging.renderer)
    "requests",  # pydicom's test-data download, Twilio
    "pylibjpeg",  # pydicom's decoder plugins
    "fastapi",  # the web app
    "starlette",
    "uvicorn",
    "jinja2",  # emails and package pages
    "twilio",  # SMS
    "aiosmtplib",  # email
    "apscheduler",  # the delivery scheduler
    "alembic",  # migrations: the node process runs them before receivers start
    # The index database's other dialect (this test's is SQLite): store.models names it
    # for a partial index's WHERE (node.receiver._the_other_dialect_unloaded).
    "sqlalchemy.dialects.postgresql",
    "phonenumbers",
    "imaging.render",  # imaging: the declared size only
    "imaging.renderer",
    "node.app",  # the composition root
    "node.delivery",
    "node.web",
    "delivery.batch",
    "portal.app",
    "release.matching",
    "ris.server",
)
#: Never imported by the node process's start-up (``courier serve``): the SCP's server
#: side lives in the receivers, pixels are decoded in imaging's children, Twilio only
#: when ``sms`` is configured.
NOT_IN_THE_NODE = (
    *("scp.server", "scp.fastpath", "scp.handlers", "scp.commitment_scp"),
    *("numpy", "pylibjpeg", "imaging.render", "twilio", "requests"),
)

_RECEIVER = """
import json, sys
from pathlib import Path
from node.receiver import import_pydicom_without_pixels, start
import_pydicom_without_pixels()
from node.config import load_config
server, _rulebook = start(load_config(Path(sys.argv[1])))
print("listening", flush=True)
sys.stdin.readline()  # the test has pushed
server.shutdown()
server.server_close()
loaded = sorted(sys.modules)
import numpy  # the refusal lasted pydicom's import only
print(json.dumps(loaded))
"""


def _config(tmp_path: Path, extra_scp: str = "") -> Path:
    config = tmp_path / "node.yaml"
    write_config(config, tmp_path / "data", free_port(), extra_scp=extra_scp)
    cfg = load_config(config)
    engine, _sessions, _content = open_store(cfg)  # migrated, as serve does
    engine.dispose()
    Rulebook(cfg, record=rules_record(cfg, store_url(cfg)))  # recorded, as serve does
    return config


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


@pytest.mark.parametrize("fast_store", ["true", "false"])
def test_a_receiving_process_imports_only_what_receiving_needs(
    tmp_path: Path, fast_store: str
) -> None:
    config = _config(tmp_path, f"fast_store: {fast_store}")
    files = synthetic.make_small_instances(tmp_path / "in", n=3)
    with subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as probe:
        assert probe.stdout is not None and probe.stdin is not None
        try:
            assert probe.stdout.readline() == "listening\n", probe.stderr
            assert send(load_config(config).scp.port, files) == [0x0000] * 3
            probe.stdin.write("done\n")
            probe.stdin.flush()
            out, err = probe.communicate(timeout=60)
        finally:
            if probe.poll() is None:
                probe.kill()
    assert probe.returncode == 0, err
    modules = json.loads(out.strip().splitlines()[-1])
    assert "pydicom" in modules and "pynetdicom" in modules and "sqlalchemy" in modules
    assert _loaded(modules, NOT_IN_A_RECEIVER) == []


def test_the_status_tables_keep_their_items_once_shared() -> None:
    from pynetdicom import status

    from node.receiver import share_status_tables

    tables = {n: t for n, t in vars(status).items() if n.endswith("_STATUS")}
    before = {n: list(t.items()) for n, t in tables.items()}
    share_status_tables()
    assert {n: list(t.items()) for n, t in vars(status).items() if n.endswith("_STATUS")} == before
    assert all(vars(status)[n] is t for n, t in tables.items())  # refilled in place
    values = [v for t in tables.values() for v in t.values()]
    assert len({id(v) for v in values}) == len(set(values))  # one object per value


def test_the_node_process_does_not_import_the_scp_server_side() -> None:
    probe = (
        "import json, sys, node.cli\n"
        "from imaging.nopixels import import_pydicom_without_pixels\n"
        "import_pydicom_without_pixels()  # as node.cli does for serve\n"
        "import node.app\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert _loaded(json.loads(done.stdout), NOT_IN_THE_NODE) == []


def test_serve_stops_with_a_clear_message_when_a_receiver_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:  # another program holds scp.port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "node.yaml"
        write_config(config, tmp_path / "data", taken.getsockname()[1])
        done = subprocess.run(
            [str(COURIER), "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "receiving process cannot start: Address already in use" in done.stderr
    assert "before it listened on scp.port" in done.stderr
    assert "Traceback" not in done.stderr


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the node's receiving processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _receivers(node_pid: int) -> list[int]:
    return [
        p
        for p in _children(node_pid)
        if b"node.receiver" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]


def test_sighup_is_harmless_and_a_dead_receiver_stops_the_node_with_status_1(
    tmp_path: Path,
) -> None:
    node = start_node(tmp_path)
    try:
        (receiver,) = _receivers(node.proc.pid)
        # A SIGHUP to the node (it reloads) or to a receiver (it looks for the version
        # the node accepted; the node sends one when there is a new version) kills none.
        node.proc.send_signal(signal.SIGHUP)
        os.kill(receiver, signal.SIGHUP)
        files = synthetic.make_small_instances(tmp_path / "in", n=2)
        assert send(node.port, files) == [0x0000] * 2
        assert node.proc.poll() is None
        assert _receivers(node.proc.pid) == [receiver]
        # A receiver that dies (OOM killer, a crash) is not a clean stop: exit 1, so a
        # supervisor starts the node again and start-up recovery runs.
        os.kill(receiver, signal.SIGKILL)
        assert node.proc.wait(30) == 1
        assert f"receiving process {receiver} exited" in node.log.read_text()
    finally:
        node.stop()
