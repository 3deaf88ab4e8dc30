"""The C-STORE receive path, and every use of pynetdicom's private API in Courier's SCP.

pynetdicom negotiates associations and serves C-ECHO, storage commitment and anything
rare. A C-STORE, the message that comes thousands of times a night, takes this path
instead, in the association's socket thread (the DUL):

- the command set is parsed from bytes (a few fixed tags of group 0000, Implicit VR
  Little Endian), not decoded into a pydicom Dataset;
- the dataset PDVs are written to the spool file (:class:`scp.spool.SpoolFile`) as they
  arrive, after the File Meta Information encoded from bytes;
- once the last fragment is in, :func:`scp.handlers.store_spooled` runs the same ingest
  and answers the same status as the pynetdicom handler would, and the C-STORE-RSP is
  encoded from bytes and sent.

Anything else (another DIMSE message, a C-STORE on a context that is not a storage SOP
class, a command set we cannot read) is handed to pynetdicom unchanged, PDV by PDV, so
its behaviour (statuses, aborts) is what it was.

Neither thread of an association polls: the DUL blocks in ``select`` on its socket and
an eventfd that is written when the association thread queues a PDU to send; the
association thread waits on an event the DUL sets after each state-machine step. An idle
association wakes twice a second per thread to check its timers.

Per C-STORE the DUL makes few system calls: once ``select`` has seen data it reads
without asking again, and on a plain socket it reads what has arrived (up to
:data:`READ_AHEAD`) in one call into the socket's ``unread`` bytes, where the PDU
header, its body and often the next PDU are then taken from; the socket's limits
(PDU size, the deadline for the rest) still apply.

Everything here relies on pynetdicom internals (``DULServiceProvider`` queues, timers
and reactor, ``Association._run_reactor`` and ``_serve_request``, ``ACSE`` negotiation).
``tests/scp/test_fastpath.py::test_pynetdicom_internals_are_what_the_fast_path_expects``
fails loudly when a pynetdicom upgrade changes any of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.sop_class import _STORAGE_CLASSES

from scp import spool
from telemetry import metrics

log = logging.getLogger("courier.scp")

# The pynetdicom versions whose internals this module was written against.
PYNETDICOM_VERSIONS = ("3.0.",)

STORAGE_UIDS = frozenset(str(uid) for uid in _STORAGE_CLASSES.values())

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101

# How long a quiet association's threads sleep between timer checks (the idle timeout
# is at least 1 s, so it fires at most this much late).
_TIMER_CHECK = 0.5

# (result, source, reason) for A-ASSOCIATE-RJ, checked by PolicyACSE.
Reject = tuple[int, ...]

# Runs one spooled C-STORE: (association, spool file, SOP class, SOP instance, transfer
# syntax) -> status. scp.handlers.store_spooled, bound to the node's Ingest.
StoreHook = Callable[[Any, spool.SpoolFile, str, str, str], int]


# --------------------------------------------------------------------------------------
# Command sets from bytes


def parse_command(data: bytes) -> dict[int, bytes] | None:
    """The elements of an Implicit VR Little Endian command set: element -> value.

    None when it is not one (group other than 0000, or a length past the end).
    """
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    unpack = struct.unpack_from
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = unpack("<HHL", data, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            return None
        out[element] = data[pos : pos + length]
        pos += length
    return out


def _us(fields: dict[int, bytes], element: int) -> int | None:
    raw = fields.get(element)
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def _uid(fields: dict[int, bytes], element: int) -> str | None:
    raw = fields.get(element)
    if raw is None:
        return None
    text = raw.rstrip(b"\0 ").decode("ascii", "replace")
    return text or None


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    # A refused command may carry a non-ASCII byte (decoded as U+FFFD): answer "?" there.
    raw = uid.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


# (0000,0000) group length, then the (0000,0002) header; the four US elements and the
# (0000,1000) header between the two UIDs: the response is three packs and two UIDs.
_RSP_HEAD = struct.Struct("<HHLLHHL")
_RSP_MIDDLE = struct.Struct("<HHLHHHLHHHLHHHLHHHL")
_US_ELEMENT = 10  # bytes of one US element: tag, 4-byte length, value
_PDU_HEAD = struct.Struct(">BBLLBB")  # P-DATA-TF type, reserved, length; PDV length, id, control


def c_store_rsp(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """The C-STORE-RSP command set, as pynetdicom encodes it (PS3.7 9.3.1.2)."""
    cls, inst = _uid_value(sop_class), _uid_value(sop_instance)
    body_length = 8 + len(cls) + 4 * _US_ELEMENT + 8 + len(inst)
    return b"".join(
        (
            _RSP_HEAD.pack(0x0000, 0x0000, 4, body_length, 0x0000, 0x0002, len(cls)),
            cls,
            _RSP_MIDDLE.pack(
                *(0x0000, 0x0100, 2, C_STORE_RSP),
                *(0x0000, 0x0120, 2, message_id),
                *(0x0000, 0x0800, 2, NO_DATASET),
                *(0x0000, 0x0900, 2, status),
                *(0x0000, 0x1000, len(inst)),
            ),
            inst,
        )
    )


def p_data_tf(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5)."""
    return _PDU_HEAD.pack(0x04, 0x00, len(data) + 6, len(data) + 2, context_id, control) + data


# --------------------------------------------------------------------------------------
# The DUL: blocks on its socket, takes C-STOREs itself


@dataclass
class _Store:
    """A C-STORE whose dataset is arriving."""

    context_id: int
    message_id: int
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    spooled: spool.SpoolFile | None  # None: no spool file could be opened, answer A700


# The most _read_ahead takes from the socket at once (a small instance's PDUs fit).
READ_AHEAD = 64 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)

# A command set longer than this is not a C-STORE (its six elements take ~200 bytes).
MAX_COMMAND = 64 * 1024


class FastDUL(DULServiceProvider):
    """pynetdicom's DUL with a blocking reactor and the C-STORE path.

    ``store`` is None to hand every P-DATA to pynetdicom (only the reactor changes).
    """

    def __init__(self, assoc: Association, store: StoreHook | None) -> None:
        super().__init__(assoc)
        self._store_hook = store
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Guards _wake_fd: another thread must not write to its number once closed
        # (the number may already belong to a socket or a spool file).
        self._wake_lock = threading.Lock()
        self._run_loop_delay = 0.001  # only stop_dul's wait for the thread uses it
        # The DIMSE message being received: None between messages; _cmd collects the
        # command fragments (and _held the PDVs, should pynetdicom take the message).
        self._cmd = bytearray()
        self._held: list[tuple[int, bytes]] = []
        self._forwarding = False  # the rest of this message goes to pynetdicom
        self.pending: _Store | None = None
        self._storing = False

    # The wake-ups -------------------------------------------------------------------

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake()
            while self.is_alive():
                time.sleep(self._run_loop_delay)
            return True
        return False

    def idle_timer_expired(self) -> bool:
        # A store in progress (fsync, a busy database) is not the peer being idle.
        return not self._storing and super().idle_timer_expired()

    def _block(self) -> bool:
        """Wait for incoming data, a PDU to send, or the next timer check; True when
        the socket has data to read (the reactor then reads it without asking again)."""
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return False
        timeout = _TIMER_CHECK
        remaining = self.artim_timer.remaining
        if self.artim_timer._start_time is not None and self.artim_timer._end_time is None:
            timeout = min(timeout, max(0.005, remaining))
        sock: Any = self.socket
        fds: list[Any] = [self._wake_fd]
        raw = getattr(sock, "socket", None)
        if raw is not None and getattr(sock, "_is_connected", False):
            if getattr(sock, "unread", b"") or (isinstance(raw, ssl.SSLSocket) and raw.pending()):
                return True
            fds.append(raw)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            time.sleep(0.001)  # the socket closed under us: the loop notices
            return False
        if self._wake_fd in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.eventfd_read(self._wake_fd)
        return raw is not None and raw in ready

    def _transport_event(self, readable: bool) -> bool:
        """pynetdicom's ``_is_transport_event``, without its second ``select`` when
        :meth:`_block` has just seen data waiting (two system calls fewer per C-STORE)."""
        sock: Any = self.socket
        if (
            readable
            and getattr(sock, "_is_connected", False)
            and self.state_machine.current_state != "Sta13"
        ):
            self._read_pdu_data()
            return True
        return self._is_transport_event()

    def run_reactor(self) -> None:
        """pynetdicom's reactor loop, blocking instead of sleeping."""
        assoc: Any = self.assoc
        self._idle_timer.start()
        readable = False  # _block saw data on the socket, not yet read
        try:
            while True:
                if not assoc._dul_ready.is_set():
                    assoc._dul_ready.set()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._transport_event(readable):
                        readable = False
                        self._idle_timer.restart()
                except Exception as exc:
                    log.error("DUL failed (%s); aborting the association", type(exc).__name__)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    with contextlib.suppress(Exception):
                        cast(Any, self.socket).send(abort_pdu.encode())
                    assoc.is_aborted = True
                    assoc.is_established = False
                    assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    readable = self._block()
                    continue
                self.state_machine.do_action(event)
                _notify(assoc)
        finally:
            self.discard_pending()
            _notify(assoc)
            with self._wake_lock:
                fd, self._wake_fd = self._wake_fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)

    # The C-STORE path ---------------------------------------------------------------

    def discard_pending(self) -> None:
        """Delete the spool file of a dataset that was still arriving."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.spooled is not None:
            pending.spooled.discard()

    def _read_pdu_data(self) -> None:
        sock: Any = self.socket
        if (
            self._store_hook is None
            or self.state_machine.current_state != "Sta6"
            or not hasattr(sock, "unread")
        ):
            super()._read_pdu_data()
            return
        try:
            self._read_ahead(sock)
            head = bytes(sock.recv(6))
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(head) != 6 or head[0] != 0x04:
            sock.unread = head + sock.unread  # pynetdicom reads it again
            super()._read_pdu_data()
            return
        length = struct.unpack(">L", head[2:])[0]
        if length > getattr(sock, "max_read", length):
            sock.unread = b""  # the socket refuses it (and says so), as it always did
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            self.event_queue.put("Evt17")
            return
        self._p_data(memoryview(body))

    def _p_data(self, body: memoryview) -> None:
        """The PDVs of one P-DATA-TF PDU (PS3.8 9.3.5.1)."""
        pos, end = 0, len(body)
        while pos < end:
            if pos + 6 > end:
                self.event_queue.put("Evt19")  # as pynetdicom: invalid PDU
                return
            item_length = struct.unpack_from(">L", body, pos)[0]
            if item_length < 2 or pos + 4 + item_length > end:
                self.event_queue.put("Evt19")
                return
            context_id = body[pos + 4]
            control = body[pos + 5]
            data = body[pos + 6 : pos + 4 + item_length]
            pos += 4 + item_length
            self._pdv(context_id, control, data)

    def _read_ahead(self, sock: Any) -> None:
        """Put what has arrived (up to :data:`READ_AHEAD` bytes) into ``sock.unread`` in
        one system call, so that a PDU's header and body, and often the next PDU, cost
        one read instead of a timed read each (poll, ioctl, recv and setsockopt).

        Only on a plain socket in timeout mode (its descriptor is non-blocking) with
        nothing unread; the socket's own checks (PDU size, deadline) still apply to
        whatever is not here yet. Raises OSError as a read would.
        """
        raw = getattr(sock, "socket", None)
        if sock.unread or raw is None or isinstance(raw, ssl.SSLSocket) or not raw.gettimeout():
            return
        try:
            chunk = os.read(raw.fileno(), READ_AHEAD)
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            sock.unread = chunk
            # As the socket does after each read: a sender with Nagle on would
            # otherwise wait for our delayed ACK (~40 ms) before its next message.
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def _forward(self, context_id: int, control: int, data: bytes | memoryview) -> None:
        """Give one PDV to pynetdicom as a P-DATA-TF PDU of its own."""
        pdu, event = self._decode_pdu(bytearray(p_data_tf(context_id, control, bytes(data))))
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _pdv(self, context_id: int, control: int, data: memoryview) -> None:
        is_command, is_last = control & 1, control & 2
        pending = self.pending
        if pending is not None:
            if is_command:  # a command inside a dataset: not DICOM
                log.warning("command fragment inside a C-STORE dataset; aborting")
                self.discard_pending()
                self.event_queue.put("Evt19")
                return
            if pending.spooled is not None:
                pending.spooled.write(data)
            if is_last:
                self.pending = None
                self._finish(pending)
            return
        if self._forwarding:
            self._forward(context_id, control, data)
            if is_last and not is_command:
                self._forwarding = False
            return
        if not is_command:  # a dataset without a command: pynetdicom decides
            self._forward(context_id, control, data)
            return
        if len(self._cmd) + len(data) > MAX_COMMAND:  # never a last fragment: not DICOM
            log.warning("command set over %d bytes; aborting the association", MAX_COMMAND)
            self._cmd, self._held = bytearray(), []
            self.event_queue.put("Evt19")  # as an invalid PDU: A-ABORT
            return
        self._cmd += data
        self._held.append((control, bytes(data)))
        if not is_last:
            return
        command, held = bytes(self._cmd), self._held
        self._cmd, self._held = bytearray(), []
        fields = parse_command(command)
        store = self._start(context_id, fields) if fields is not None else None
        if store is not None:
            self.pending = store
            return
        for ctl, fragment in held:
            self._forward(context_id, ctl, fragment)
        # Unless the command says there is no dataset, the dataset goes the same way.
        self._forwarding = fields is None or _us(fields, 0x0800) != NO_DATASET

    def _start(self, context_id: int, fields: dict[int, bytes]) -> _Store | None:
        """The C-STORE this command starts, or None for pynetdicom to serve it."""
        assoc: Any = self.assoc
        if _us(fields, 0x0100) != C_STORE_RQ:
            return None
        data_set_type = _us(fields, 0x0800)
        message_id = _us(fields, 0x0110)
        sop_class = _uid(fields, 0x0002)
        sop_instance = _uid(fields, 0x1000)
        if (
            data_set_type is None
            or data_set_type == NO_DATASET
            or message_id is None
            or sop_class is None
            or sop_instance is None
            or sop_class not in STORAGE_UIDS
            or assoc._sent_release
            or assoc.acceptor.accepted_common_extended
        ):
            return None
        cx = assoc._accepted_cx.get(context_id)
        if cx is None or str(cx.abstract_syntax) not in STORAGE_UIDS:
            return None
        transfer_syntax = str(cx.transfer_syntax[0])
        try:
            spooled = spool.open_spool()
        except OSError as exc:  # the dataset is read and dropped; the peer gets A700
            log.error("cannot open a spool file (%s); refusing the C-STORE", type(exc).__name__)
            return _Store(context_id, message_id, sop_class, sop_instance, transfer_syntax, None)
        if spooled is None:  # spool.install() was not called: pynetdicom's way
            return None
        spool.start_file(spooled, assoc, sop_class, sop_instance, transfer_syntax)
        return _Store(context_id, message_id, sop_class, sop_instance, transfer_syntax, spooled)

    def _finish(self, store: _Store) -> None:
        """The dataset is in: ingest it, answer."""
        hook = cast(StoreHook, self._store_hook)
        if store.spooled is None:
            self._respond(store, 0xA700)  # out of resources
            return
        self._storing = True
        try:
            status = hook(
                self.assoc,
                store.spooled,
                store.sop_class,
                store.sop_instance,
                store.transfer_syntax,
            )
        finally:
            store.spooled.close()
            if not store.spooled.placed:  # refused, or stored already: delete it
                with contextlib.suppress(OSError):
                    os.unlink(store.spooled.name)
            self._idle_timer.restart()
            self._storing = False
        self._respond(store, status)

    def _respond(self, store: _Store, status: int) -> None:
        rsp = c_store_rsp(store.message_id, store.sop_class, store.sop_instance, status)
        cast(Any, self.socket).send(p_data_tf(store.context_id, 0x03, rsp))


def _notify(assoc: Any) -> None:
    wake = getattr(assoc, "wake", None)
    if wake is not None:
        wake.set()


# --------------------------------------------------------------------------------------
# The association and its ACSE


class CourierAssociation(Association):
    """An acceptor with the blocking DUL, event-driven reactor, and follow-ups.

    ``after_response`` callables run once a request is answered: pynetdicom marks the
    reactor paused while a handler runs, so a ``send_*`` from another thread during the
    handler could go out before the handler's response. A follow-up runs on this
    thread after the response was queued, with the reactor still paused (no incoming
    message is taken from under it).
    """

    def __init__(self, ae: Any, mode: str, store: StoreHook | None = None) -> None:
        super().__init__(ae, mode)
        self.wake = threading.Event()
        self.dul = FastDUL(self, store)
        # pynetdicom's setters put these timeouts on the DUL's timers: set them again.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.after_response: list[Callable[[], None]] = []
        # Run when this association's thread ends: admission's connection and slot.
        self.on_exit: list[Callable[[], None]] = []

    def run(self) -> None:
        try:
            super().run()
        finally:
            for release in self.on_exit:
                release()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, waiting on the DUL instead of sleeping 1 ms."""
        self._is_paused = False
        while not self._kill:
            self.wake.wait(_TIMER_CHECK)
            self.wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                self.wake.set()  # another message may be queued behind it
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.info("association idle for scp.idle_timeout_s; aborting it")
                self.abort()
                self.kill()
                return

    def _serve_request(self, msg: Any, context_id: int) -> None:
        super()._serve_request(msg, context_id)
        follow_ups, self.after_response = self.after_response, []
        for follow_up in follow_ups:
            self._is_paused = True  # our own send_* must not wait for this thread
            try:
                follow_up()
            except Exception as exc:  # a follow-up must not end the association
                log.error("follow-up after a response failed (%s)", type(exc).__name__)
            finally:
                self._is_paused = False


class PolicyACSE(ACSE):
    """ACSE that applies the AE's policy and takes an association slot before
    pynetdicom's own negotiation (see :mod:`scp.server`)."""

    def _negotiate_as_acceptor(self) -> None:
        assoc: Any = self.assoc
        ae = assoc.ae
        rq: Any = self.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host = str(self.requestor.address)
        reject: Reject = ae.policy.check(calling, called, host)
        if not reject:
            if ae.admission.take_slot(trusted=ae.policy.trusted(calling, host)):
                # Held until this association's thread ends (CourierAssociation.run).
                assoc.on_exit.append(ae.admission.release_slot)
            else:
                from scp.server import REJECT_LIMIT

                reject = REJECT_LIMIT
        if reject:
            metrics.association_refused(*reject)
            self.requestor.ae_title = calling
            self.send_reject(*reject)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        super()._negotiate_as_acceptor()


def new_association(server: Any, request: Any, sock_factory: Callable[[Any], Any]) -> Any:
    """An acceptor association for ``request`` (a connected socket) on ``server``.

    What pynetdicom's ``RequestHandler._create_association`` does, with our classes:
    ``sock_factory(assoc)`` makes the association's socket; the server's AE may carry
    ``store_hook`` (the C-STORE path; absent or None: pynetdicom's own).
    """
    from datetime import datetime

    from pynetdicom import _globals

    ae: Any = server.ae
    store = getattr(ae, "store_hook", None)
    assoc = CourierAssociation(ae, _globals.MODE_ACCEPTOR, store)
    assoc.acse = PolicyACSE(assoc)
    assoc._server = server
    assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(sock_factory(assoc))
    server_handlers: Any = server._handlers
    for event in server_handlers:
        if event.is_intervention and server_handlers[event]:
            assoc.bind(event, *server_handlers[event])
        elif isinstance(event, evt.NotificationEvent):
            for handler in server_handlers[event]:
                assoc.bind(event, handler[0], handler[1])
    return assoc
