"""store.catalog.Catalog.mark_restored: a restored instance moves its study's and series'
sizes once per change of its row, also when two restores of it run at once (PostgreSQL:
the second waits on the first's row lock and then finds the row restored)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text, update

from store.catalog import Catalog, InstanceRecord
from store.models import Instance, Series, Study
from tests.conftest import Database
from tests.pglocks import wait_until_blocked_on

SIZE = 1000


def _missing(db: Database) -> tuple[Catalog, int]:
    """One indexed instance of SIZE bytes, flagged missing; the catalog and its id."""
    catalog = Catalog(db.sessions)
    catalog.add(
        InstanceRecord(
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            sop_instance_uid="1.2.3.4.5",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            sha256="ab" * 32,
            size_bytes=SIZE,
            path="instances/1.2.3/1.2.3.4/1.2.3.4.5.dcm",
        )
    )
    with db.sessions() as s, s.begin():
        s.execute(update(Instance).values(file_missing=True))
        return catalog, int(s.scalars(select(Instance.id)).one())


def _sizes(db: Database) -> tuple[int, int, int, bool]:
    with db.sessions() as s:
        instance = s.scalars(select(Instance)).one()
        return (
            instance.size_bytes,
            s.scalars(select(Series.size_bytes)).one(),
            s.scalars(select(Study.size_bytes)).one(),
            instance.file_missing,
        )


def test_restores_move_the_totals_once_per_change(db: Database) -> None:
    catalog, iid = _missing(db)
    catalog.mark_restored(iid, SIZE + 20)  # from another sender: a longer file
    assert _sizes(db) == (SIZE + 20, SIZE + 20, SIZE + 20, False)
    catalog.mark_restored(iid, SIZE + 20)  # the same again: nothing changes
    assert _sizes(db) == (SIZE + 20, SIZE + 20, SIZE + 20, False)
    catalog.mark_restored(iid, SIZE)  # placed again by the first sender
    assert _sizes(db) == (SIZE, SIZE, SIZE, False)


# PostgreSQL only: on SQLite one writer at a time holds the database's write lock.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_two_restores_at_once_count_the_size_once(db: Database) -> None:
    catalog, iid = _missing(db)
    other = db.sessions()  # another receiving process's restore, not yet committed
    other.begin()
    other.execute(select(Instance.id).where(Instance.id == iid).with_for_update())
    other.execute(
        update(Instance).values(file_missing=False, size_bytes=SIZE + 20).where(Instance.id == iid)
    )
    other.execute(update(Series).values(size_bytes=Series.size_bytes + 20))
    other.execute(update(Study).values(size_bytes=Study.size_bytes + 20))
    xid = other.scalar(text("SELECT pg_current_xact_id()::text"))
    errors: list[BaseException] = []

    def restore() -> None:
        try:
            catalog.mark_restored(iid, SIZE + 20)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    worker = threading.Thread(target=restore)
    try:
        worker.start()
        wait_until_blocked_on(db.engine, str(xid), worker)  # it waits on the row lock
        other.commit()
    finally:
        other.close()
        worker.join(30)
    assert not worker.is_alive()
    assert errors == []
    assert _sizes(db) == (SIZE + 20, SIZE + 20, SIZE + 20, False)  # +20 once, not twice
