"""scp.ingest: one descriptor per store. The spooled file is opened once: the header is
read through that descriptor, and the file is flushed (fdatasync) through it before it
is linked into place; callers without one (recovery, a takeover) open it by path.
SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from scp.header import read_header
from scp.ingest import Ingest, Peer, Status
from store import content as content_module
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Instance
from tests import synthetic
from tests.conftest import Database

PEER = Peer("MODALITY_A", "COURIER", "127.0.0.1")


def test_a_header_read_through_an_open_descriptor_is_the_same(tmp_path: Path) -> None:
    path = synthetic.make_small_instances(tmp_path, n=1)[0]
    fd = os.open(path, os.O_RDONLY)
    try:
        through_fd = read_header(path, (fd, os.fstat(fd).st_size))
        os.fstat(fd)  # still open: the caller's to close
    finally:
        os.close(fd)
    assert through_fd == read_header(path)


def test_a_store_opens_the_spooled_file_once_and_flushes_it_through_that_descriptor(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    spooled = content.spool / "1-0.part"
    spooled.write_bytes(src.read_bytes())
    ds = pydicom.dcmread(spooled)
    opens: list[str] = []
    flushed: list[tuple[int, int]] = []
    real_open, real_datasync = os.open, content_module._datasync

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opens.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def recording_datasync(fd: int) -> None:
        st = os.fstat(fd)
        flushed.append((st.st_dev, st.st_ino))
        real_datasync(fd)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(content_module, "_datasync", recording_datasync)
    status = Ingest(content, Catalog(db.sessions)).store(
        None, spooled, str(ds.SOPClassUID), str(ds.SOPInstanceUID), PEER
    )
    monkeypatch.undo()
    assert status == Status.SUCCESS
    assert opens.count(str(spooled)) == 1  # header and flush share one descriptor
    with db.sessions() as s:
        row = s.scalars(select(Instance)).one()
    stored = content.path(row.path)
    assert stored.read_bytes() == src.read_bytes()
    st = stored.stat()
    assert flushed == [(st.st_dev, st.st_ino)]  # the placed file, flushed before its link
    assert row.size_bytes == st.st_size
    assert not spooled.exists()


def test_placing_without_a_descriptor_opens_the_file_by_path(tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    spooled = content.spool / "1-0.part"
    spooled.write_bytes(b"x" * 100)
    content.place(spooled, "instances/1/2/3.dcm")
    assert content.path("instances/1/2/3.dcm").read_bytes() == b"x" * 100
