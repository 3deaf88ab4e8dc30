"""Admission: which connections the SCP keeps, and which associations get a slot.

pynetdicom alone starts an association thread for every TCP connection and counts it
against ``maximum_associations`` while it still waits for the A-ASSOCIATE-RQ, before
anyone knows who is calling; it also trusts the length a PDU header announces. Sixteen
idle connections therefore locked every PACS out. Courier admits in four steps, each
bounded by a setting of ``scp:``:

1. **Connection** (the accept thread, :meth:`Admission.open_connection`): at most
   ``max_connections_per_host`` open connections per IP address, negotiating or
   associated. The next one is closed at once, before any thread is started for it.
2. **Request** (the connection's own thread, :func:`read_associate_rq`): the first PDU
   must be an A-ASSOCIATE-RQ of at most ``max_associate_rq_bytes``, complete within
   ``acse_timeout_s`` of the connection (a TLS handshake included). Anything else
   (silence, a trickle, a 4 GB announcement, another PDU type) is closed, with no
   association thread and no slot ever taken.
3. **Slot** (:meth:`Admission.take_slot`, once the AE titles are known and the calling
   AE passed ``allowed_calling_aes``): only established associations count against
   ``max_associations``. The last ``reserved_for_allowed`` slots go only to *trusted*
   callers: an ``allowed_calling_aes`` entry that pins a host, called from that host (an
   AE title alone can be claimed by anyone). Beyond: A-ASSOCIATE-RJ transient, local
   limit exceeded, so a real PACS retries.
4. **Idle** (pynetdicom's network timeout, set to ``idle_timeout_s``): an association
   that sends no PDU for that long is aborted, which frees its slot.

With several receiving processes (``workers``) each process gets its share of every
limit (:meth:`Limits.per_process`), since the kernel spreads connections among them.
Nothing here logs more than an address and a count.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("courier.scp")

A_ASSOCIATE_RQ = 0x01  # PDU type, PS3.8 Table 9-11


class RequestRefused(Exception):
    """A connection did not deliver an acceptable A-ASSOCIATE-RQ; it must be closed.

    ``reason`` is the metric label (``telemetry.metrics.DROP_REASONS``); ``quiet`` is True
    when the peer merely closed (a port check), which is not worth a warning.
    """

    def __init__(self, message: str, reason: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.quiet = quiet


@dataclass(frozen=True)
class Limits:
    """The admission limits of one receiving process."""

    max_associations: int
    reserved_for_allowed: int
    max_connections_per_host: int

    def per_process(self, workers: int) -> Limits:
        """This process's share when ``workers`` processes listen on one port (rounded up,
        so no limit drops to zero; the reserve always leaves one general slot)."""
        share = max(1, -(-self.max_associations // workers))
        return Limits(
            max_associations=share,
            reserved_for_allowed=min(-(-self.reserved_for_allowed // workers), share - 1),
            max_connections_per_host=max(1, -(-self.max_connections_per_host // workers)),
        )


class Admission:
    """Counts open connections per host and established associations; thread-safe.

    Every successful :meth:`open_connection` must be matched by one
    :meth:`close_connection`, and every successful :meth:`take_slot` by one
    :meth:`release_slot` (the server does both when the connection's thread ends).
    """

    def __init__(self, limits: Limits, *, reserve_held: bool) -> None:
        self.limits = limits
        # Without a host-pinned entry nobody could use the reserve: all slots are general.
        self.reserved = limits.reserved_for_allowed if reserve_held else 0
        self._lock = threading.Lock()
        self._per_host: dict[str, int] = {}
        self._full_hosts: set[str] = set()  # logged once per episode, not per connection
        self._slots = 0

    def open_connection(self, host: str) -> bool:
        """Count a new connection from ``host``; False (and nothing counted) over the cap."""
        with self._lock:
            n = self._per_host.get(host, 0)
            if n >= self.limits.max_connections_per_host:
                if host not in self._full_hosts:
                    self._full_hosts.add(host)
                    log.warning(
                        "host=%s has %d connections open (scp.max_connections_per_host); "
                        "closing further ones at once",
                        host,
                        n,
                    )
                return False
            self._per_host[host] = n + 1
            return True

    def close_connection(self, host: str) -> None:
        """A connection counted by :meth:`open_connection` has ended."""
        with self._lock:
            n = self._per_host.get(host, 0) - 1
            if n > 0:
                self._per_host[host] = n
            else:
                self._per_host.pop(host, None)
            if n < self.limits.max_connections_per_host:
                self._full_hosts.discard(host)

    def take_slot(self, *, trusted: bool) -> bool:
        """Take an association slot; False when none is left for this kind of caller."""
        with self._lock:
            ceiling = self.limits.max_associations - (0 if trusted else self.reserved)
            if self._slots >= ceiling:
                return False
            self._slots += 1
            return True

    def release_slot(self) -> None:
        """An association that held a slot has ended."""
        with self._lock:
            self._slots = max(0, self._slots - 1)

    def counts(self) -> tuple[int, dict[str, int]]:
        """(established associations, open connections per host): for tests and logs."""
        with self._lock:
            return self._slots, dict(self._per_host)


def read_associate_rq(sock: socket.socket, deadline: float, max_bytes: int) -> bytes:
    """Read the first PDU from ``sock``: a whole A-ASSOCIATE-RQ by ``deadline``
    (``time.monotonic()``), at most ``max_bytes`` long. Returns its bytes (header
    included); raises :class:`RequestRefused` otherwise. Leaves ``sock`` blocking."""
    try:
        header = _read_exactly(sock, 6, deadline)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != A_ASSOCIATE_RQ:
            raise RequestRefused(
                f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ", "other"
            )
        if length > max_bytes:
            # Refused on the header: nothing near the announced size is ever buffered.
            raise RequestRefused(
                f"A-ASSOCIATE-RQ announces {length} bytes, over the {max_bytes} limit "
                "(scp.max_associate_rq_bytes)",
                "pdu_too_large",
            )
        return header + _read_exactly(sock, length, deadline)
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestRefused(
                    "no whole A-ASSOCIATE-RQ within scp.acse_timeout_s", "pdu_timeout"
                )
            try:
                sock.settimeout(remaining)
                k = sock.recv_into(view[got:], n - got)
            except TimeoutError:
                continue  # the deadline check above ends it
            except OSError as exc:
                raise RequestRefused(
                    f"connection failed before the A-ASSOCIATE-RQ ({type(exc).__name__})",
                    "other",
                    quiet=True,
                ) from None
            if k == 0:
                raise RequestRefused(
                    "connection closed before a whole A-ASSOCIATE-RQ", "other", quiet=True
                )
            got += k
    finally:
        view.release()
    return bytes(buf)
