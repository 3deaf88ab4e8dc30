"""Test-side senders: pynetdicom as a second SCU, dcmtk's storescu, and dataset comparison."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom.filewriter import dcmwrite
from pynetdicom import AE, _config

from tests import dcmtk
from tests.pynetdicom_peers import park_reactor

VERIFICATION = "1.2.840.10008.1.1"


def close_socket(assoc: object) -> None:
    """pynetdicom leaves a client socket open after a refused or broken association."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if sock is not None and getattr(sock, "socket", None) is not None:
        sock.socket.close()


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part-10 file (everything after the file meta group)."""
    from scp.header import check_structure

    _ts, offset = check_structure(path)
    return path.read_bytes()[offset:]


def send(
    port: int,
    files: Sequence[Path],
    *,
    calling: str = "PYSCU",
    called: str = "COURIER",
    contexts: Iterable[tuple[str, str]] | None = None,
    timeout: float = 30,
) -> list[int | None]:
    """Send ``files`` as-is (bytes, not re-encoded) on one association; return statuses.

    ``None`` marks an instance the association died on. Contexts default to each file's
    own SOP class and transfer syntax (from its file meta).
    """
    from pydicom.filereader import read_file_meta_info

    metas = [read_file_meta_info(f) for f in files]
    if contexts is None:
        contexts = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, ts in sorted(set(contexts)):
        ae.add_requested_context(sop_class, ts)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes exactly
    statuses: list[int | None] = []
    assoc = None
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            raise ConnectionError("association refused")
        for f in files:
            if not assoc.is_established:
                statuses.append(None)
                continue
            park_reactor(assoc)
            try:
                rsp = assoc.send_c_store(f)
            except RuntimeError:  # the association ended while the reactor was parked
                if assoc.is_established:
                    raise
                statuses.append(None)
                continue
            statuses.append(int(rsp.Status) if rsp and "Status" in rsp else None)
        if assoc.is_established:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        close_socket(assoc)
    return statuses


def storescu(
    port: int,
    files: Sequence[Path] | Path,
    *extra: str,
    calling: str = "STORESCU",
    called: str = "COURIER",
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu to Courier on loopback: :func:`tests.dcmtk.storescu` (which sets
    TCP_NODELAY=1, as Debian's dcmtk keeps Nagle on otherwise), with ``extra`` options."""
    return dcmtk.storescu("127.0.0.1", port, files, calling, called, extra, timeout=timeout)


def rewrite(src: Path, out: Path, **changes: object) -> Path:
    """Copy ``src`` with dataset attributes changed (keeps its transfer syntax)."""
    import warnings

    from pydicom import dcmread

    ds = dcmread(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # we write invalid values on purpose
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        dcmwrite(out, ds, enforce_file_format=False)
    return out


def with_meta_uid(src: Path, out: Path, sop_instance: str) -> Path:
    """Copy ``src`` with only the file meta's SOP Instance UID changed (command != dataset)."""
    from pydicom import dcmread

    ds = dcmread(src)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    dcmwrite(out, ds, enforce_file_format=False)
    return out
