"""Store: migrations, durability settings, paths from UIDs only, catalog, stability, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from scp.stability import StabilitySweep
from store.catalog import Catalog, DuplicateRace, InstanceRecord
from store.content import ContentStore, check_uid
from store.db import migrate
from store.errors import InvalidUID
from store.models import Study, StudyEvent, StudyState
from tests.conftest import Database


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(cfg).get_current_head())


def test_migrations_are_idempotent_and_sqlite_is_durable(db: Database) -> None:
    migrate(db.engine)  # a second run changes nothing
    with db.engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
        if db.kind == "sqlite":
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


@pytest.mark.parametrize(
    "value",
    [
        "../../etc",
        "1.2.3/../4",
        "1.2.\x003",
        "",
        "1..2",
        ".1.2",
        "1.2.",
        "a.b",
        "1" * 65,
        "/abs",
        "1.2 ",
        None,
        123,
    ],
)
def test_paths_come_from_valid_uids_only(tmp_path: Path, value: object) -> None:
    with pytest.raises(InvalidUID) as err:
        check_uid(value)
    assert str(value) not in str(err.value) or value in ("", None)
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidUID):
        store.instance_relpath("1.2", "1.3", value)  # type: ignore[arg-type]


def _rec(
    sop: str, study: str = "1.2.3", series: str = "1.2.3.1", sha: str = "a" * 64, **kw: str
) -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256=sha,
        size_bytes=100,
        path=f"instances/{study}/{series}/{sop}.dcm",
        modality=kw.get("modality", "CT"),
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_catalog_counts_and_refuses_duplicate_uids(db: Database) -> None:
    clock = Clock()
    cat = Catalog(db.sessions, clock)
    cat.add(_rec("1.2.3.1.1"))
    cat.add(_rec("1.2.3.1.2", modality="CT"))
    cat.add(_rec("1.2.3.2.1", series="1.2.3.2", modality="SR"))
    with pytest.raises(DuplicateRace):
        cat.add(_rec("1.2.3.1.1"))
    with db.sessions() as s:
        st = s.scalars(select(Study)).one()
        assert (st.instance_count, st.size_bytes, st.modalities) == (3, 300, "CT\\SR")
        assert [se.instance_count for se in st.series] == [2, 1]
    known = cat.lookup("1.2.3.1.1")
    assert known is not None and known.sha256 == "a" * 64
    assert cat.lookup("9.9") is None


def test_study_becomes_stable_and_back_when_more_arrives(db: Database) -> None:
    clock = Clock()
    cat = Catalog(db.sessions, clock)
    sweep = StabilitySweep(db.sessions, stable_after_s=60, clock=clock)
    cat.add(_rec("1.2.3.1.1"))
    clock.now += timedelta(seconds=59)
    assert sweep.run() == []
    clock.now += timedelta(seconds=2)
    assert sweep.run() == ["1.2.3"]
    assert sweep.run() == []  # recorded once
    clock.now += timedelta(minutes=5)
    cat.add(_rec("1.2.3.1.9"))
    with db.sessions() as s:
        assert s.scalars(select(Study.state)).one() == StudyState.RECEIVING
    clock.now += timedelta(seconds=61)
    assert sweep.run() == ["1.2.3"]
    with db.sessions() as s:
        events = [
            (e.from_state, e.to_state)
            for e in s.scalars(select(StudyEvent).order_by(StudyEvent.id))
        ]
    assert events == [
        ("", "receiving"),
        ("receiving", "stable"),
        ("stable", "receiving"),
        ("receiving", "stable"),
    ]


def test_two_sweepers_record_each_transition_once(db: Database) -> None:
    clock = Clock()
    Catalog(db.sessions, clock).add(_rec("1.2.3.1.1"))
    clock.now += timedelta(hours=1)
    a = StabilitySweep(db.sessions, 60, clock)
    b = StabilitySweep(db.sessions, 60, clock)
    assert a.run() + b.run() == ["1.2.3"]


def test_a_node_may_have_a_spool_of_its_own(tmp_path: Path) -> None:
    """Nodes sharing a data directory each receive into spool/<node.name>."""
    content = ContentStore(tmp_path, "node-a")
    content.prepare()
    assert content.spool == tmp_path / "spool" / "node-a" and content.spool.is_dir()
    assert ContentStore(tmp_path).spool == tmp_path / "spool"
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError, match="spool"):
            ContentStore(tmp_path, bad)
