"""One way to open, use and close an association as an SCU (:mod:`scp.pacs`,
:mod:`scp.storescu`).

- :func:`unreachable` tries a plain TCP connection first and says why it failed (or
  None): pynetdicom drops the socket of a refused connection without closing it (a
  leaked descriptor per failed attempt in a long-running node), and connecting
  ourselves also names the reason (refused, timed out, no such host).
- :func:`opened` sets the AE's timeouts, associates with TCP_NODELAY on the socket
  (pynetdicom leaves Nagle's algorithm on: with it, the last PDU of each message
  waits for the peer's delayed ACK, and a C-STORE of a CT slice took 25 ms instead
  of 4), yields the association (rejected, unanswered or established: the caller
  checks and raises its own errors), releases it when the block ends normally, aborts
  it otherwise, and always closes the socket (pynetdicom leaves the client socket
  open after a refused or broken association).
- :func:`rejection_result` is the A-ASSOCIATE-RJ result of a rejected association.

Nothing here logs or raises errors of its own: the callers' messages say what to do.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association

# A-ASSOCIATE-RJ results (PS3.8 9.3.4).
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02


def unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s``, else
    the reason (the OS's words, e.g. "Connection refused")."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _no_delay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN``: TCP_NODELAY on the association's socket (see the docstring)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def opened(
    ae: AE,
    host: str,
    port: int,
    called_ae: str,
    *,
    connect_timeout_s: float,
    dimse_timeout_s: float,
    network_timeout_s: float,
    evt_handlers: Sequence[tuple[Any, Any]] = (),
) -> Iterator[Association]:
    """Associate ``ae`` with ``called_ae`` at ``host:port`` and yield the association,
    whatever came of it (check ``is_rejected`` / ``is_established``).

    ``connect_timeout_s`` bounds the TCP connection and the answer to the
    A-ASSOCIATE-RQ; ``dimse_timeout_s`` each DIMSE response; ``network_timeout_s``
    silence on an established association. On leaving the block normally an
    established association is released; on an exception it is aborted; the socket
    is closed either way.
    """
    ae.acse_timeout = connect_timeout_s
    ae.connection_timeout = connect_timeout_s
    ae.network_timeout = network_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, _no_delay), *evt_handlers]
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=handlers)
    try:
        yield assoc
        if assoc.is_established:
            assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        close(assoc)


def close(assoc: Association) -> None:
    """Close the association's socket (pynetdicom leaves the client socket open after
    a refused or broken association)."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    inner = getattr(sock, "socket", None)
    if inner is not None:
        inner.close()


def rejection_result(assoc: Association) -> int | None:
    """The A-ASSOCIATE-RJ result (:data:`REJECTED_PERMANENT`,
    :data:`REJECTED_TRANSIENT`) of a rejected association, None when unknown."""
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    result = getattr(primitive, "result", None)
    return int(result) if isinstance(result, int) else None
