"""The Storage SCP: AE, presentation contexts, association policy and bounded sockets.

What pynetdicom leaves to us, and this module adds:

- **Who may associate**: ``scp.allowed_calling_aes`` (optionally pinned to a host) and
  the called AE, rejected with the standard reasons (PS3.8 Table 9-21).
- **Admission** (:mod:`scp.admission`): a per-host connection cap checked in the accept
  loop; the A-ASSOCIATE-RQ read by the connection's thread within ``acse_timeout_s``
  before pynetdicom sees the connection; only established associations count against
  ``max_associations``, with a reserve for host-pinned allowed callers; idle
  associations aborted after ``idle_timeout_s``. Idle or trickling connections therefore
  hold no association slot, and a PACS is never locked out by them.
- **Bounded memory**: pynetdicom reads whatever length a PDU header announces. Our
  socket refuses a PDU longer than we negotiated and gives one PDU ``network_timeout_s``
  to arrive in full, so a peer that claims 4 GB and trickles is dropped, not buffered.
- **No Nagle stalls**: TCP_NODELAY on every accepted socket (a DIMSE response would
  otherwise wait ~40 ms for the peer's delayed ACK).
- **No patient data in logs**: pynetdicom's identifier logging is turned off.
- **A TLS port** (``scp.tls_port``, :mod:`scp.tls`) beside the plain one: same AE,
  policy, association cap and ingest; each handshake runs in the connection's thread
  with the ACSE timeout as its deadline, so a failed or stalled one disturbs no one.
- **Storage commitment** (:mod:`scp.commitment_scp`): the association runs follow-ups
  registered by a handler once its response is queued, so a report sent on the same
  association never overtakes the N-ACTION response.
- **Storage commitment reports for Courier's own sends**: a peer Courier asked to
  commit (``scp.storescu``) may report on a new association to this port, taking the
  SCP role of the Push Model SOP class by role selection. Its N-EVENT-REPORT is
  written to the database (:class:`scp.commitment.ReportBook`) before it is answered,
  since the sender waiting for it runs in another process. The usual association
  policy (``scp.allowed_calling_aes``) applies; this works with
  ``scp.storage_commitment`` off too (an N-ACTION is then refused 0x0122).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from scp import fastpath, handlers
from scp.admission import Admission, Limits, RequestRefused, read_associate_rq
from scp.commitment import ReportBook
from scp.commitment_reports import STORAGE_COMMITMENT
from scp.commitment_scp import StorageCommitmentScp
from scp.ingest import Ingest
from scp.settings import AllowedPeer, ScpSettings
from scp.tls import handshake, server_context
from telemetry import metrics

log = logging.getLogger("courier.scp")

# pynetdicom would otherwise log C-FIND/C-MOVE identifiers: patient data.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user: calling AE not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user: called AE not recognized
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider: local limit exceeded
SOP_CLASS_NOT_SUPPORTED = 0x0122  # N-ACTION: Failure, SOP class not supported (PS3.7 Annex C)

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)

# Room for a large A-ASSOCIATE-RQ (128 contexts, user identity) beyond max_pdu_size.
_CONTROL_PDU_ROOM = 256 * 1024


@dataclass(frozen=True)
class Policy:
    """Association acceptance rules derived from :class:`ScpSettings`."""

    ae_title: str
    allowed: tuple[AllowedPeer, ...]
    check_called_ae: bool

    def check(self, calling: str, called: str, host: str) -> tuple[int, ...]:
        """Return the rejection (result, source, reason), or () to accept."""
        if self.allowed and not any(
            p.ae_title == calling and (p.host is None or p.host == host) for p in self.allowed
        ):
            return REJECT_CALLING_AE
        if self.check_called_ae and called != self.ae_title:
            return REJECT_CALLED_AE
        return ()

    def trusted(self, calling: str, host: str) -> bool:
        """True when an entry pins this calling AE to this host: such callers may use the
        reserved slots (an AE title alone can be claimed from anywhere)."""
        return any(p.ae_title == calling and p.host == host for p in self.allowed)

    @property
    def pins_hosts(self) -> bool:
        """Whether any entry pins a host (otherwise no caller could use a reserve)."""
        return any(p.host is not None for p in self.allowed)


class CourierAE(AE):
    """An AE that carries its acceptance policy, admission counters and read limits."""

    policy: Policy
    admission: Admission
    pdu_timeout: float  # scp.network_timeout_s
    max_associate_rq: int  # scp.max_associate_rq_bytes
    store_hook: fastpath.StoreHook | None  # the C-STORE path (scp.fast_store), or None


class BoundedSocket(AssociationSocket):
    """Refuses oversized PDUs and gives each PDU a deadline to arrive in full.

    ``unread`` holds bytes already read from the socket (the A-ASSOCIATE-RQ, read by
    admission); the DUL gets them first. The DUL (:class:`scp.fastpath.FastDUL`) blocks
    in ``select`` on this socket, so an idle association costs nothing.
    """

    max_read: int = 16 * 1024 * 1024
    pdu_timeout: float = 60.0
    unread: bytes = b""

    @property
    def ready(self) -> bool:
        return bool(self.unread) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if self.unread:
            head, self.unread = self.unread[:nr_bytes], self.unread[nr_bytes:]
            if len(head) == nr_bytes:
                return bytearray(head)
            return bytearray(head) + self._recv(nr_bytes - len(head))
        return self._recv(nr_bytes)

    def _recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if nr_bytes > self.max_read:
            log.warning(
                "peer announced a %d-byte PDU over the %d limit; dropping the connection",
                nr_bytes,
                self.max_read,
            )
            metrics.association_dropped("pdu_too_large")
            return bytearray()  # short read: the DUL closes the connection (Evt17)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        deadline = time.monotonic() + self.pdu_timeout
        try:
            while got < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "a PDU did not arrive within %.0f s; dropping the connection",
                        self.pdu_timeout,
                    )
                    metrics.association_dropped("pdu_timeout")
                    return buf[:got]
                sock.settimeout(remaining)
                n = sock.recv_into(view[got:], nr_bytes - got)
                if n == 0:
                    return buf[:got]
                got += n
                # Re-arm quick ACKs: a sender that keeps Nagle on (pynetdicom, Debian's
                # dcmtk without TCP_NODELAY=1) otherwise waits ~40 ms per small message.
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        finally:
            view.release()
        return buf


class CourierRequestHandler(RequestHandler):
    """pynetdicom's handler, with our socket, our ACSE and TCP_NODELAY.

    Runs in the connection's own thread, counted by admission since the accept loop
    (``ReusePortServer.verify_request``). It reads the whole A-ASSOCIATE-RQ itself, by
    ``acse_timeout_s`` after the connection came, and only then starts the association;
    that association's thread then owns the count and gives it back when it ends.
    """

    server: ReusePortServer

    def handle(self) -> None:
        ae: CourierAE = self.server.ae  # type: ignore[assignment]
        host = str(self.client_address[0])
        handed_over = False
        try:
            deadline = time.monotonic() + float(ae.acse_timeout or 10.0)
            sock = self._secure(deadline)
            if sock is None:
                return
            self.request = sock
            try:
                rq = read_associate_rq(sock, deadline, ae.max_associate_rq)
            except RequestRefused as exc:
                if not exc.quiet:
                    log.warning("connection from host=%s closed: %s", host, exc)
                    metrics.association_dropped(exc.reason)
                return
            assoc = self._create_association()
            socket_: Any = assoc.dul.socket
            socket_.unread = rq
            assoc.on_exit.append(lambda: ae.admission.close_connection(host))
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            handed_over = True
        finally:
            if not handed_over:
                ae.admission.close_connection(host)
                self.server.shutdown_request(self.request)

    def _secure(self, deadline: float) -> socket.socket | None:
        """The socket to speak DICOM on (TLS wraps it here), or None when closed."""
        request: socket.socket = self.request
        return request

    def _create_association(self) -> Any:
        ae: Any = self.server.ae
        request: socket.socket = self.request
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def bounded(assoc: Any) -> BoundedSocket:
            sock = BoundedSocket(assoc, client_socket=request)
            sock.max_read = ae.maximum_pdu_size + _CONTROL_PDU_ROOM
            sock.pdu_timeout = ae.pdu_timeout
            return sock

        assoc = fastpath.new_association(self.server, request, bounded)
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote
        return assoc


class TlsRequestHandler(CourierRequestHandler):
    """The TLS port: handshake first (in this connection's thread), then as plain."""

    def _secure(self, deadline: float) -> socket.socket | None:
        ctx = self.server.tls_context
        assert ctx is not None
        timeout = max(0.001, deadline - time.monotonic())
        return handshake(ctx, self.request, tuple(self.client_address[:2]), timeout)


class ReusePortServer(ThreadedAssociationServer):
    """Several receiving processes may listen on one port (the kernel spreads them).

    The plain server returned by :func:`start_server` also owns the TLS server
    (``tls_server``) and the commitment SCP: shutting it down stops them too.
    """

    reuse_port = False
    daemon_threads = True
    # The kernel's queue of connections not yet accepted (socketserver's default is 5):
    # a burst of hostile connects must not make a PACS's SYN wait for a retransmit.
    request_queue_size = 128
    # The TLS port's context; pynetdicom's own ``ssl_context`` stays None because it
    # would handshake in the accept loop (see TlsRequestHandler).
    tls_context: ssl.SSLContext | None = None
    tls_server: ReusePortServer | None = None
    commitment: StorageCommitmentScp | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admission step 1, in the accept loop: refuse (close) a connection over
        ``max_connections_per_host`` before any thread is started for it."""
        ae: CourierAE = self.ae  # type: ignore[assignment]
        if ae.admission.open_connection(str(client_address[0])):
            return True
        metrics.association_dropped("per_host_limit")
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:
            # No thread took the connection over: give its count back.
            ae: CourierAE = self.ae  # type: ignore[assignment]
            ae.admission.close_connection(str(client_address[0]))
            raise

    def server_bind(self) -> None:
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        if self.tls_server is not None:
            self.tls_server.shutdown()
        if self.commitment is not None:
            self.commitment.close()
        super().shutdown()

    def server_close(self) -> None:
        if self.tls_server is not None:
            self.tls_server.server_close()
        super().server_close()


def storage_contexts(*, commitment: bool = False) -> list[PresentationContext]:
    """Every storage SOP class with every transfer syntax pydicom knows, plus Verification
    (and Storage Commitment Push Model when ``commitment``)."""
    syntaxes: list[str] = [str(uid) for uid in AllTransferSyntaxes]
    contexts = [build_context(Verification)]
    if commitment:
        cx = build_context(STORAGE_COMMITMENT)
        # Accept the roles a requester proposes (PS3.7 D.3.3.4): SCU and SCP, to take
        # our report on its own association; SCP only, to bring us the report of a
        # commitment we asked for (PS3.4 J.3.3.1.3).
        cx.scu_role = True
        cx.scp_role = True
        contexts.append(cx)
    contexts += [build_context(uid, syntaxes) for uid in sorted(_STORAGE_CLASSES.values())]
    return contexts


def build_ae(settings: ScpSettings, workers: int = 1) -> CourierAE:
    """The AE with our timeouts, PDU size, policy and admission (this process's share
    of the limits when ``workers`` processes share the port)."""
    ae = CourierAE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    # pynetdicom's network timeout is its idle timer: no PDU for this long, A-ABORT.
    ae.network_timeout = settings.idle_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.pdu_timeout = settings.network_timeout_s
    ae.max_associate_rq = settings.max_associate_rq_bytes
    ae.policy = Policy(
        ae_title=settings.ae_title,
        allowed=tuple(settings.allowed_calling_aes),
        check_called_ae=settings.check_called_ae,
    )
    limits = Limits(
        max_associations=settings.max_associations,
        reserved_for_allowed=settings.reserved_for_allowed,
        max_connections_per_host=settings.max_connections_per_host,
    ).per_process(workers)
    ae.admission = Admission(limits, reserve_held=ae.policy.pins_hosts)
    # Admission enforces the cap with the standard reason, counting established
    # associations only; pynetdicom's own count (every association thread, rejected
    # ones included) must never trigger first.
    ae.maximum_associations = 1_000_000
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.store_hook = None
    return ae


def start_server(
    settings: ScpSettings,
    ingest: Ingest,
    *,
    workers: int = 1,
    port: int | None = None,
    on_stored: Callable[[], None] | None = None,
    tls_port: int | None = None,
    data_dir: Path | None = None,
    commitment: StorageCommitmentScp | None = None,
    reports: ReportBook | None = None,
) -> ReusePortServer:
    """Start listening (non-blocking); returns the plain server (``shutdown()`` stops all).

    With ``settings.tls_port`` a TLS server starts first on that port (or ``tls_port``;
    0 picks a free one), reachable as ``server.tls_server``; relative certificate paths
    are resolved against ``data_dir`` (default: the working directory). Raises
    :class:`scp.tls.TlsSetupError` when its files cannot be used. ``commitment``, when
    given and ``settings.storage_commitment`` is on, answers storage commitment.
    ``reports`` records the storage commitment reports peers send for Courier's own
    sends (default: a :class:`~scp.commitment.ReportBook` on ``commitment``'s
    sessions; without either, N-EVENT-REPORTs are not accepted).
    """
    if reports is None and commitment is not None:
        reports = ReportBook(commitment.sessions)
    ae = build_ae(settings, workers)
    if settings.fast_store:
        ae.store_hook = handlers.fast_store_hook(ingest)
    evt_handlers: list[Any] = [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [ingest]),
        (evt.EVT_CONN_CLOSE, handlers.handle_closed),
        (evt.EVT_ABORTED, handlers.handle_closed),
        (evt.EVT_ABORTED, lambda _event: metrics.association_dropped("aborted")),
        (evt.EVT_REJECTED, handlers.handle_rejected),
        (evt.EVT_ACCEPTED, handlers.handle_accepted),
    ]
    if commitment is not None and not settings.storage_commitment:
        commitment = None
    if commitment is not None:
        evt_handlers.append((evt.EVT_N_ACTION, commitment.handle_n_action))
    elif reports is not None:
        evt_handlers.append((evt.EVT_N_ACTION, _refuse_n_action))
    if reports is not None:
        evt_handlers.append((evt.EVT_N_EVENT_REPORT, reports.handle))
    contexts = storage_contexts(commitment=commitment is not None or reports is not None)
    tls_context = server_context(settings, data_dir or Path.cwd())
    ReusePortServer.reuse_port = workers > 1
    tls_server = None
    if tls_context is not None:
        # First, so that once the plain port answers, the TLS port does too.
        tls_server = ReusePortServer(
            ae,
            (settings.host, int(settings.tls_port or 0) if tls_port is None else tls_port),
            settings.ae_title,
            contexts,
            None,
            evt_handlers=evt_handlers,
            request_handler=TlsRequestHandler,
        )
        tls_server.tls_context = tls_context
        _serve(tls_server, "courier-scp-tls")
    server = ReusePortServer(
        ae,
        (settings.host, settings.port if port is None else port),
        settings.ae_title,
        contexts,
        None,
        evt_handlers=evt_handlers,
        request_handler=CourierRequestHandler,
    )
    server.tls_server = tls_server
    server.commitment = commitment
    _serve(server, "courier-scp")
    log.info(
        "DICOM storage SCP listening ae=%s port=%d tls_port=%s commitment=%s reports=%s",
        settings.ae_title,
        server.server_address[1],
        tls_server.server_address[1] if tls_server is not None else "-",
        "on" if commitment is not None else "off",
        "on" if reports is not None else "off",
    )
    return server


def _refuse_n_action(_event: evt.Event) -> tuple[int, None]:
    """N-ACTION while ``scp.storage_commitment`` is off (the SOP class is accepted for
    the reports of Courier's own sends only)."""
    return SOP_CLASS_NOT_SUPPORTED, None  # Failure: SOP class not supported


def _serve(server: ReusePortServer, name: str) -> None:
    server.ae._servers.append(server)
    thread = threading.Thread(target=make_target(server.serve_forever), name=name, daemon=True)
    thread.start()
