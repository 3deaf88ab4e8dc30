"""Thin DICOM event handlers: each does one thing and answers a named status.

pynetdicom answers 0xC211 and swallows the exception when a handler raises, so the
C-STORE handler catches everything itself, logs without patient data, and answers
0x0110 (processing failure) for the unexpected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pynetdicom import evt

from scp import spool
from scp.ingest import Ingest, Peer, Status
from telemetry import metrics

log = logging.getLogger("courier.scp")


def _peer(event: evt.Event) -> Peer:
    assoc = event.assoc
    return Peer(
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        host=str(assoc.requestor.address),
    )


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: 0x0000 Success (the node is up and accepting associations)."""
    return 0x0000


def handle_store(event: evt.Event, ingest: Ingest) -> int:
    """C-STORE: store durably via ``ingest`` and answer its status."""
    request: Any = event.request
    try:
        path = Path(event.dataset_path)
        spooled = request._dataset_file
        status = int(
            ingest.store(
                spooled if isinstance(spooled, spool.SpoolFile) else None,
                path,
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                _peer(event),
            )
        )
        metrics.instance_answered(
            status, event.context.transfer_syntax, getattr(spooled, "size", 0)
        )
        return status
    except Exception as exc:  # never let pynetdicom answer 0xC211 on its own
        log.error("C-STORE failed unexpectedly (%s); answering 0x0110", type(exc).__name__)
        return int(Status.PROCESSING_FAILURE)


def handle_closed(event: evt.Event) -> None:
    """Connection closed or aborted: delete a dataset that was still arriving."""
    spool.discard_pending(event.assoc)


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
