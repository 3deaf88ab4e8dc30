"""What Courier's C-STORE sender takes, built from files: the items and destination of
``scp.storescu.send_instances`` (its ``Item`` and ``Dest`` protocols), for the send tests
and ``bench/send.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom


@dataclass(frozen=True)
class Item:
    """One instance to send: its file and the UIDs the sender needs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Dest:
    """A destination: AE title, host, port and storage commitment (off, required...)."""

    ae_title: str
    host: str
    port: int
    commitment: str = "off"


def items_of(files: list[Path]) -> list[Item]:
    """The items of ``files``, their UIDs read from each header."""
    out = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            Item(
                path,
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
            )
        )
    return out
