"""The spool file (scp/spool.py): durability on its own descriptor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scp import spool


def test_datasync_syncs_the_open_file_and_refuses_once_closed(tmp_path: Path) -> None:
    spooled = spool.SpoolFile(tmp_path)
    spooled.write(b"DICM" * 256)
    spooled.datasync()  # on the file's own descriptor: nothing to reopen
    assert os.path.getsize(spooled.name) == 1024
    spooled.close()
    with pytest.raises(ValueError):
        spooled.datasync()
    spooled.discard()
    assert list(tmp_path.iterdir()) == []


def test_datasync_raises_the_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spooled = spool.SpoolFile(tmp_path)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError) as caught:
        spooled.datasync()
    assert caught.value.errno == 5
    spooled.discard()
