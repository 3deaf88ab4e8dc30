"""Everything under node.data_dir is the node account's alone (folders 0700, files 0600),
even when whoever starts it has the usual umask 022; `courier doctor` names what is not.

A real node (``courier serve``) receives a study from dcmtk's storescu, then ``courier
request create``, ``deliver --now`` (ZIP package, file outboxes), ``export-iso`` and
``apikey create`` run: not one path under data_dir is open to group or others. The
modules that create files give the modes themselves too, checked in this process with
umask 022 (no ``courier`` umask to hide behind).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from delivery.packaging.zipwriter import PartWriter
from node import doctor
from node.config import load_config
from node.status import StatusFile
from store.content import ContentStore
from store.db import make_engine, migrate
from tests import synthetic
from tests.conftest import have_dcmtk, need
from tests.delivery.test_end_to_end import RULES
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.scu import storescu


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask most shells give; this process's own is back afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _open_paths(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) with any group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            found.append(f"{path.relative_to(root)} {stat.S_IMODE(st.st_mode):o}")
    return found


def test_a_node_and_its_commands_make_everything_owner_only(
    node_factory: Any, tmp_path: Path, umask_022: None
) -> None:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    node = node_factory(
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            # Never open during the test: `deliver --now` packages.
            "delivery:\n  window: '01:00-01:01'\n  timezone: Pacific/Kiritimati\n"
        ),
    )
    ref = create_by_cli(node, "--accession", "ACC0001")
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=3, rows=32, cols=32)
    assert storescu(node.port, ct).returncode == 0
    assert wait_state(node, ref, "ready") == "ready"
    data = node.data_dir
    assert _open_paths(data) == []  # while it runs (SQLite -wal/-shm exist now)
    assert list(data.glob("courier.db-wal")), "expected SQLite's WAL beside the database"
    node.stop()
    report = courier(node, "deliver", "--now")
    assert report is not None and ref in report["notified"]
    courier(node, "export-iso", ref, str(data / "export.iso"))
    courier(node, "apikey", "create", "--label", "modes test")

    made = {p.relative_to(data).parts[0] for p in data.rglob("*")}
    assert {"courier.db", "instances", "packages", "outbox", "export.iso"} <= made, made
    assert list((data / "packages" / ref).glob("*.zip"))
    assert _open_paths(data) == []

    cfg = load_config(node.config)
    finding = doctor.check_modes(cfg, 1)
    assert finding.status == "ok", finding
    # One file opened up by hand: doctor names it (relative to data_dir) and the fix.
    zip_file = next((data / "packages" / ref).glob("*.zip"))
    zip_file.chmod(0o644)
    finding = doctor.check_modes(cfg, 1)
    assert finding.status == "warn"
    assert f"packages/{ref}/{zip_file.name} (644)" in finding.detail
    assert "1 path(s)" in finding.detail and "chmod -R go-rwx" in finding.fix


@pytest.mark.parametrize(
    ("limit", "complete"),
    [(100_000, True), (3, False)],
)
def test_doctor_walk_is_bounded(tmp_path: Path, limit: int, complete: bool) -> None:
    (tmp_path / "node.yaml").write_text(f"node:\n  data_dir: {tmp_path / 'data'}\n")
    cfg = load_config(tmp_path / "node.yaml")
    folder = cfg.data_dir / "instances" / "1.2.3"
    folder.mkdir(parents=True, mode=0o700)
    cfg.data_dir.chmod(0o700)
    (cfg.data_dir / "instances").chmod(0o700)
    for i in range(10):
        path = folder / f"1.2.3.{i}.dcm"
        path.write_bytes(b"x")
        path.chmod(0o600)
    finding = doctor.check_modes(cfg, 1, limit=limit)
    assert finding.status == "ok"
    assert ("stopped there" not in finding.detail) is complete


def test_modules_give_owner_only_modes_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    content = ContentStore(data, "node-a")
    content.prepare()
    spooled = content.spool / "in.dcm"
    spooled.write_bytes(b"DICM")
    spooled.chmod(0o600)  # as the spool writes it (scp.spool: O_CREAT 0600)
    content.place(spooled, content.instance_relpath("1.2.3", "1.2.3.4", "1.2.3.4.5"))
    engine = make_engine(f"sqlite:///{data / 'courier.db'}")
    try:
        migrate(engine)
        with engine.connect() as conn:  # the WAL and shared-memory files exist now
            conn.execute(text("SELECT 1"))
            assert (data / "courier.db-wal").exists()
            StatusFile(data / "status.json").write(scp_port=1)
            (data / "packages").mkdir(mode=0o700)  # delivery.packaging.package makes it so
            writer = PartWriter(data / "packages" / "part.zip", datetime.now(UTC))
            try:
                assert _open_paths(data) == []
            finally:
                writer.abort()
    finally:
        engine.dispose()
