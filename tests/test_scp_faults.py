"""Injected faults: kill -9 mid-push, a full disk, a locked or unreachable database.

What must hold: every instance the sender saw acknowledged with 0x0000 has a
byte-identical file and a row; no row points at a missing file; nothing partial is
left; the node recovers (without a restart where the fault is transient).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, select, text

from store.db import make_engine, make_sessions, migrate
from store.models import Instance, Study
from tests import synthetic
from tests.conftest import (
    PG_URL,
    Database,
    echo_ok,
    free_port,
    have_postgres,
    need,
    spool_leftovers,
    start_local_scp,
)
from tests.scu import dataset_bytes, send

KILL_ROUNDS = 20 if os.environ.get("COURIER_SLOW") == "1" else 3


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _check_consistent(
    db: Database, data_dir: Path, acked: dict[str, Path], peer: tuple[str, str, str] | None = None
) -> None:
    with db.sessions() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        studies = s.execute(select(Study.calling_ae, Study.called_ae, Study.peer_host)).all()
    if peer is not None:
        # Rows start-up recovery re-created from files name the same sender.
        assert {i.calling_ae for i in rows.values()} <= {peer[0]}
        assert {tuple(row) for row in studies} <= {peer}
    for uid, src in acked.items():
        assert uid in rows, "an acknowledged instance has no row"
        stored = data_dir / rows[uid].path
        assert dataset_bytes(stored) == dataset_bytes(src)
    for row in rows.values():
        assert not row.file_missing
        assert (data_dir / row.path).is_file(), "a row points at a missing file"


# pynetdicom leaks its client socket when a connect is refused (the node is being
# killed); the object is not ours to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_kill_9_during_a_1000_instance_push(
    node_factory: object, db: Database, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "push", n=1000)
    uids = {f: _uid(f) for f in files}
    rng = random.Random(1234)
    acked: dict[str, Path] = {}
    node = None
    for _round in range(KILL_ROUNDS):
        node = node_factory(db)  # type: ignore[operator]
        statuses: list[int | None] = []

        def push(port: int = node.port, statuses: list[int | None] = statuses) -> None:
            with contextlib.suppress(ConnectionError):
                statuses.extend(send(port, files, timeout=3))

        sender = threading.Thread(target=push)
        sender.start()
        time.sleep(rng.uniform(0.3, 2.5))
        node.kill9()
        sender.join(60)
        assert not sender.is_alive()
        for f, status in zip(files, statuses, strict=False):
            if status == 0x0000:
                acked[uids[f]] = f
        node.stop()
        # Restart: recovery runs, then the disk and the index must agree.
        node = node_factory(db)  # type: ignore[operator]
        _check_consistent(db, node.data_dir, acked, ("PYSCU", "COURIER", "127.0.0.1"))
        assert spool_leftovers(node.data_dir) == []
        node.stop()
    assert acked, "the pushes were killed before anything was acknowledged"
    node = node_factory(db)  # type: ignore[operator]
    assert send(node.port, files) == [0x0000] * len(files)  # a re-push completes the study
    _check_consistent(db, node.data_dir, {uids[f]: f for f in files})
    with db.sessions() as s:
        assert len(s.scalars(select(Instance.id)).all()) == len(files)
    gc.collect()  # let pynetdicom's leaked sockets go here, under this test's filter


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(target)], capture_output=True
    )
    return result.returncode == 0


def test_disk_full_answers_a700_and_recovers_without_restart(db: Database, tmp_path: Path) -> None:
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=3)  # ~0.5 MB each
    root = tmp_path / "small-disk"
    mounted = _can_mount_tmpfs(root)
    fail = {"on": False}

    def injected(_nbytes: int) -> None:
        if fail["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")

    scp = start_local_scp(db, root / "data", spool_fault=None if mounted else injected)
    try:
        filler = root / "filler"
        if mounted:
            # Leave less room than one instance needs.
            free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
            filler.write_bytes(b"\0" * max(0, free - 200_000))
        else:
            fail["on"] = True
        assert send(scp.port, [ct[0]]) == [0xA700]
        assert scp.rows() == 0
        assert list(scp.content.iter_instances()) == []
        assert scp.spool_files() == []
        # Space comes back: the very next store works, no restart.
        if mounted:
            filler.unlink()
        else:
            fail["on"] = False
        assert send(scp.port, ct) == [0x0000] * 3
        assert scp.rows() == 3
    finally:
        scp.server.shutdown()
        scp.server.server_close()
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)


def test_locked_sqlite_answers_a701_then_recovers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    engine = make_engine(url, busy_timeout_s=1)
    migrate(engine)
    db = Database("sqlite", url, None, engine, make_sessions(engine))
    scp = start_local_scp(db, tmp_path / "data", dimse_timeout_s=10)
    files = synthetic.make_small_instances(tmp_path / "s", n=2)
    try:
        import sqlite3

        holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        statuses = send(scp.port, [files[0]])
        holder.execute("ROLLBACK")
        holder.close()
        assert statuses == [0xA701]  # an answer, not a DIMSE timeout
        assert list(scp.content.iter_instances()) == []  # the placed file was taken back
        assert scp.spool_files() == []
        assert send(scp.port, files) == [0x0000, 0x0000]
        assert scp.rows() == 2
    finally:
        scp.server.shutdown()
        scp.server.server_close()
        engine.dispose()


def test_locked_postgresql_table_answers_a701(tmp_path: Path) -> None:
    need("postgresql", have_postgres())
    import uuid

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, busy_timeout_s=1, schema=schema)
    migrate(engine)
    db = Database("postgresql", PG_URL, schema, engine, make_sessions(engine))
    scp = start_local_scp(db, tmp_path / "data", dimse_timeout_s=10)
    files = synthetic.make_small_instances(tmp_path / "s", n=2)
    locker_engine = create_engine(PG_URL)
    locker = locker_engine.connect()
    try:
        tx = locker.begin()
        locker.execute(text(f'LOCK TABLE "{schema}".studies IN ACCESS EXCLUSIVE MODE'))
        statuses = send(scp.port, [files[0]])
        tx.rollback()
        assert statuses == [0xA701]
        assert list(scp.content.iter_instances()) == []
        assert send(scp.port, files) == [0x0000, 0x0000]
    finally:
        locker.close()
        locker_engine.dispose()
        scp.server.shutdown()
        scp.server.server_close()
        engine.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_unreachable_database_answers_a701(tmp_path: Path) -> None:
    # Nothing listens on this port: every connection attempt is refused at once.
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    engine = make_engine(url, busy_timeout_s=1)
    db = Database("postgresql", url, None, engine, make_sessions(engine))
    scp = start_local_scp(db, tmp_path / "data", dimse_timeout_s=10)
    try:
        f = synthetic.make_small_instances(tmp_path / "s", n=1)
        assert send(scp.port, f) == [0xA701]
        assert list(scp.content.iter_instances()) == []
        assert scp.spool_files() == []
        assert echo_ok(scp.port)  # C-ECHO does not need the database
    finally:
        scp.server.shutdown()
        scp.server.server_close()
        engine.dispose()
