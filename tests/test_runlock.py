"""One ``courier serve`` per node (node.runlock): a second one stops before it touches
anything of the running node, and the lock goes with the process however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_config
from node.runlock import NodeRunning, lock_path, take
from node.stores import store_url
from tests import synthetic
from tests.conftest import COURIER, spool_leftovers
from tests.scu import send

_HOLD = """
import sys
from pathlib import Path
from node.config import load_config
from node.runlock import take
from node.stores import store_url
cfg = load_config(Path(sys.argv[1]))
take(cfg, store_url(cfg))
print("held", flush=True)
sys.stdin.readline()
"""


def _config(tmp_path: Path, data_dir: str = "data") -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(f"node: {{name: one, data_dir: {data_dir}}}\n")
    return path


def test_a_second_process_is_refused_until_the_holder_dies(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(cfg.source)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(NodeRunning) as refused:
                take(cfg, store_url(cfg))
            assert f"pid {holder.pid}" in str(refused.value) and "stop it first" in str(
                refused.value
            )
            assert refused.value.heading == "not started"
        finally:
            holder.send_signal(signal.SIGKILL)  # however it ends, the lock goes with it
            holder.wait(30)
    fd = take(cfg, store_url(cfg))
    try:
        assert lock_path(cfg, store_url(cfg)).read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)


def test_a_data_directory_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    cfg = load_config(_config(tmp_path))
    with pytest.raises(ConfigError, match="cannot create the node's lock file"):
        take(cfg, store_url(cfg))


def test_a_second_serve_stops_before_touching_the_running_node(
    node_factory: object, tmp_path: Path
) -> None:
    node = node_factory()  # type: ignore[operator]
    metrics = sorted(p.name for p in (node.data_dir / "metrics").iterdir())
    ready = sorted(p.name for p in (node.data_dir / "spool").rglob("*.part"))
    assert ready  # the receiver keeps spool files ready
    second = subprocess.run(
        [COURIER, "serve", "--config", str(node.config)],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 2
    assert "courier: not started:" in second.stderr
    assert f"already running on this data directory (pid {node.proc.pid})" in second.stderr
    # Nothing of the running node was touched: its metrics, its ready spool files.
    assert sorted(p.name for p in (node.data_dir / "metrics").iterdir()) == metrics
    assert set(ready) <= {p.name for p in (node.data_dir / "spool").rglob("*.part")}
    files = synthetic.make_small_instances(tmp_path / "s", n=3)
    assert send(node.port, files) == [0x0000] * 3
    assert spool_leftovers(node.data_dir) == []
    assert node.proc.poll() is None
