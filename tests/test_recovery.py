"""Start-up recovery: spool leftovers go, files without rows are re-indexed, rows
without files are flagged (never dropped) and restored by an identical re-send."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from scp import spool
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
        # A stopped receiving process deletes its ready spool files (at exit); a crash
        # leaves them, and they are swept with the leftover below.
        spool.shutdown()
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


RULES = """
rules:
  - name: from-modality-a
    when:
      calling_ae: MODALITY_A
      called_ae: COURIER
      peer_host: 127.0.0.1
    action: hold
    reason: checked by staff
  - name: everything-else
    action: hold
    reason: no rule matched
"""


def _lose_every_row(db: Database) -> None:
    """What a power loss does to rows committed without the database's flush."""
    from sqlalchemy import delete

    from store.models import Series, Study, StudyEvent

    with db.sessions() as s, s.begin():
        for model in (Instance, Series, StudyEvent, Study):
            s.execute(delete(model))


@pytest.mark.parametrize(
    ("how", "peer", "rule"),
    [
        ("fast path", ("MODALITY_A", "COURIER", "127.0.0.1"), "from-modality-a"),
        ("pynetdicom path", ("MODALITY_A", "COURIER", "127.0.0.1"), "from-modality-a"),
        ("file of an older version", ("", "", ""), "everything-else"),
    ],
)
def test_recovery_restores_the_sender_from_the_file(
    db: Database, tmp_path: Path, how: str, peer: tuple[str, str, str], rule: str
) -> None:
    """A row lost to a power loss comes back with the peer it was received from (from
    the file meta), so a rule on calling AE, called AE or host decides the same; a file
    written before Courier recorded the sender comes back with an empty peer."""
    import pydicom

    from rules import AssociationFacts, facts_from_dataset, load_rules_text
    from store.models import Study

    files = synthetic.make_small_instances(tmp_path / "s", n=3, n_series=1)
    scp = start_local_scp(db, tmp_path / "data", fast_store=how == "fast path")
    try:
        if how == "file of an older version":
            for f in files:  # placed as an older version stored them: no sender elements
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                rel = scp.content.instance_relpath(
                    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
                )
                scp.content.path(rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, scp.content.path(rel))
        else:
            assert send(scp.port, files, calling="MODALITY_A") == [0] * 3
    finally:
        scp.server.shutdown()
        scp.server.server_close()
    _lose_every_row(db)

    report = recover(scp.content, db.sessions, scp.catalog)

    assert (report.reindexed, report.unreadable) == (3, 0)
    with db.sessions() as s:
        study = s.scalars(select(Study)).one()
        instances = s.scalars(select(Instance)).all()
        assert (study.calling_ae, study.called_ae, study.peer_host) == peer
        assert study.instance_count == 3
        assert {i.calling_ae for i in instances} == {peer[0]}
        path = scp.content.path(instances[0].path)
    ruleset = load_rules_text(RULES, "rules.yaml")
    association = AssociationFacts(study.calling_ae, study.called_ae, study.peer_host)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    decision = ruleset.decide(facts_from_dataset(ds, association, wanted=ruleset.wanted), "stable")
    assert decision.rule == rule
    # An identical re-send of a recovered instance is the same content (no conflict).
    if how != "file of an older version":
        scp = start_local_scp(db, tmp_path / "data")
        try:
            assert send(scp.port, files[:1], calling="ELSEWHERE") == [0]
        finally:
            scp.server.shutdown()
            scp.server.server_close()
        assert not list(scp.content.conflicts.glob("*"))
