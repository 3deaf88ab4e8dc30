"""Start-up recovery: spool leftovers go, files without rows are re-indexed, rows
without files are flagged (never dropped) and restored by an identical re-send."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from scp.recovery import recover
from store.models import Instance
from tests import synthetic
from tests.conftest import Database, start_local_scp
from tests.scu import dataset_bytes, send


def test_recovery_makes_disk_and_index_agree(db: Database, tmp_path: Path) -> None:
    files = synthetic.make_small_instances(tmp_path / "s", n=6)
    scp = start_local_scp(db, tmp_path / "data")
    try:
        assert send(scp.port, files[:4]) == [0] * 4
    finally:
        scp.server.shutdown()
        scp.server.server_close()
    content, catalog = scp.content, scp.catalog
    with db.sessions() as s:
        rows = {r.sop_instance_uid: r.path for r in s.scalars(select(Instance))}
    # 1. a row whose file is gone
    lost_uid, lost_path = sorted(rows.items())[0]
    moved = tmp_path / "lost.dcm"
    shutil.move(content.path(lost_path), moved)
    # 2. a durable file whose row was never committed (crash between rename and commit)
    import pydicom

    orphan = files[4]
    ds = pydicom.dcmread(orphan, stop_before_pixels=True)
    rel = content.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    content.path(rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(orphan, content.path(rel))
    # 3. a file that is not DICOM where an instance should be, and a spool leftover
    junk = content.instances / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not dicom")
    (content.spool / "123-0.part").write_bytes(b"\0" * 100)

    report = recover(content, db.sessions, catalog)
    assert (report.spool_removed, report.reindexed, report.unreadable, report.missing_files) == (
        1,
        1,
        1,
        1,
    )
    with db.sessions() as s:
        flags = {r.sop_instance_uid: r.file_missing for r in s.scalars(select(Instance))}
    assert flags[lost_uid] is True
    assert flags[str(ds.SOPInstanceUID)] is False
    assert sum(flags.values()) == 1
    assert junk.exists()  # an unreadable file is reported, never deleted

    # An identical re-send restores the missing file and clears the flag.
    scp = start_local_scp(db, tmp_path / "data")
    try:
        assert send(scp.port, [moved]) == [0]
    finally:
        scp.server.shutdown()
        scp.server.server_close()
    # The same dataset (its file meta names the connection it came on this time).
    assert dataset_bytes(content.path(lost_path)) == dataset_bytes(moved)
    with db.sessions() as s:
        assert not any(s.scalars(select(Instance.file_missing)))
    assert recover(content, db.sessions, catalog).missing_files == 0
