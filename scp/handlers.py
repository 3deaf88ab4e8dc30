"""Thin DICOM event handlers: each does one thing and answers a named status.

pynetdicom answers 0xC211 and swallows the exception when a handler raises, so the
C-STORE handler catches everything itself, logs without patient data, and answers
0x0110 (processing failure) for the unexpected.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, cast

from pynetdicom import evt

from scp import spool
from scp.ingest import Ingest, Peer, Status
from telemetry import metrics

log = logging.getLogger("courier.scp")


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: 0x0000 Success (the node is up and accepting associations)."""
    return 0x0000


def handle_store(event: evt.Event, ingest: Ingest) -> int:
    """C-STORE (pynetdicom's path): store durably via ``ingest`` and answer its status."""
    request: Any = event.request
    try:
        spooled = request._dataset_file
        return store_spooled(
            ingest,
            event.assoc,
            spooled if isinstance(spooled, spool.SpoolFile) else None,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            Path(event.dataset_path),
        )
    except Exception as exc:  # never let pynetdicom answer 0xC211 on its own
        log.error("C-STORE failed unexpectedly (%s); answering 0x0110", type(exc).__name__)
        return int(Status.PROCESSING_FAILURE)


def store_spooled(
    ingest: Ingest,
    assoc: Any,
    spooled: spool.SpoolFile | None,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    path: Path | None = None,
) -> int:
    """Store one spooled C-STORE dataset (either receive path); the status to answer.

    Never raises: the unexpected is logged (no patient data) and answered 0x0110.
    """
    try:
        if path is None:
            assert spooled is not None
            path = Path(spooled.name)
        status = int(ingest.store(spooled, path, sop_class, sop_instance, _peer(assoc)))
        metrics.instance_answered(status, transfer_syntax, getattr(spooled, "size", 0))
        return status
    except Exception as exc:
        log.error("C-STORE failed unexpectedly (%s); answering 0x0110", type(exc).__name__)
        return int(Status.PROCESSING_FAILURE)


def _peer(assoc: Any) -> Peer:
    """Who is on the other end of ``assoc``: read once per association (the AE titles
    and address are fixed once it is established), not once per instance."""
    peer = getattr(assoc, "courier_peer", None)
    if peer is None:
        peer = Peer(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            host=str(assoc.requestor.address),
        )
        assoc.courier_peer = peer
    return cast(Peer, peer)


def fast_store_hook(ingest: Ingest) -> Any:
    """The C-STORE hook of :mod:`scp.fastpath`, bound to ``ingest``."""

    def hook(
        assoc: Any, spooled: spool.SpoolFile, sop_class: str, sop_instance: str, ts: str
    ) -> int:
        return store_spooled(ingest, assoc, spooled, sop_class, sop_instance, ts)

    return hook


def handle_closed(event: evt.Event) -> None:
    """Connection closed or aborted: delete a dataset that was still arriving."""
    spool.discard_pending(event.assoc)
    dul: Any = getattr(event.assoc, "dul", None)
    # The fast path's file is the socket thread's own: only it may delete it (it also
    # does when it ends).
    if dul is threading.current_thread() and hasattr(dul, "discard_pending"):
        dul.discard_pending()


def handle_rejected(event: evt.Event) -> None:
    """Log a rejected association (AE titles and host only)."""
    assoc = event.assoc
    log.warning(
        "association rejected calling=%s called=%s host=%s",
        str(assoc.requestor.ae_title).strip(),
        str(assoc.acceptor.ae_title).strip(),
        assoc.requestor.address,
    )


def handle_accepted(event: evt.Event) -> None:
    """Log an accepted association."""
    assoc = event.assoc
    log.info(
        "association accepted calling=%s host=%s contexts=%d",
        str(assoc.requestor.ae_title).strip(),
        assoc.requestor.address,
        len(assoc.accepted_contexts),
    )
