"""C-STORE requests written straight to an established association's socket, and their
responses read straight from it: the sending side of hospital-to-hospital delivery, and
every use of pynetdicom's private API in Courier's SCU.

Why: pynetdicom's ``send_c_store`` hands each P-DATA PDU to its DUL thread through a
queue, an event queue and the state machine, one PDU per turn of a reactor that sleeps
1 ms whenever it finds nothing to do, and pauses and resumes the association's own
reactor around every message (polling until it has paused). A 0.5 MB CT slice to a
receiver with dcmtk's 16 KB maximum PDU is 33 PDUs: pynetdicom sent 230 such slices a
second into dcmtk's ``storescp`` where dcmtk's ``storescu`` sends 700 (``bench/send.py``).
Each response then came back the same way: the DUL thread polled the socket (every
0.1 ms), decoded the PDU and the command set into pydicom Datasets, and handed the
message over a queue to the sending thread; with 10 KB instances that was half the
sender's CPU time per instance, and a thread hand-over on every one.

:class:`FastStore`, for a run of C-STOREs on one association:

- pauses the association's reactor once for the run (as ``send_c_store`` does for each
  message, so that the reactor does not take the responses off the DIMSE queue), and
  makes sure it is held (:meth:`FastStore._wait_paused`: pynetdicom's own check races);
- keeps the DUL thread off the socket while the run lasts (its transport check answers
  "nothing arrived"; it still serves its queues, so an abort goes out as usual), once it
  has gone round its loop with that check in place;
- encodes each command set from bytes (six fixed elements, Implicit VR Little Endian);
- sends the file's dataset bytes as stored (everything after the File Meta Information,
  found from its group length without pydicom; the file opened once), without any
  group 0002 elements a modality put at the start of the dataset (File Meta only:
  :func:`dataset_offset`; a deflated dataset goes whole), cut into
  P-DATA-TF PDUs of the peer's maximum length, from the calling thread: the file is
  read straight into one 256 KB buffer behind the PDU headers, sent with one
  ``sendall`` each time it fills (several PDUs at a time, or a PDU in parts when the
  peer's maximum is larger), so memory stays bounded whatever the instance's size;
- reads the response from the socket in the calling thread, waiting at most the DIMSE
  timeout: a C-STORE-RSP in one PDV (what every peer we know sends) is read from bytes
  (:func:`store_response`); anything else in a P-DATA-TF (a response in fragments, an
  N-EVENT-REPORT, a malformed command) goes to pynetdicom's DIMSE provider as its DUL
  thread would have passed it, the DUL thread reads the socket again from then on, and
  the response is awaited on pynetdicom's DIMSE queue and checked as ``send_c_store``
  does, for the rest of the run;
- aborts the association (an empty status) when no answer comes within the DIMSE
  timeout, the peer closes the connection or sends any other PDU (an A-ABORT, an
  A-RELEASE-RQ), or the answer is for another message; and when the peer reads nothing
  of a request for the network timeout (the socket's timeout while the run lasts; the
  connection is shut down first, as an A-ABORT could not get through either). That
  timeout stays on the socket until the run ends or is aborted, also after a response
  was handed over to pynetdicom: this thread still writes the run's requests.
- raises ``OSError`` for a file that cannot be read, and leaves the association as it
  was when nothing of that message had gone out yet (the caller goes on with the next
  instance); it aborts the association when part of it had. Given the size the index
  recorded for the file, it raises :class:`SizeMismatch` (an ``OSError``) before any
  of the message goes out when the open file (``fstat`` of the descriptor it then
  reads) is not that size: a file cut short inside its pixel data still parses, and
  would be stored by the peer as it is. Only the size is checked, not the digest
  (hashing every file before it is sent would read it twice).

The network (idle) timer is restarted when the run ends: the DUL saw none of the run's
traffic. pynetdicom's ``EVT_PDU_RECV`` and ``EVT_DIMSE_RECV`` do not fire for responses
read here (Courier binds neither).

Only the calling thread writes to the socket while the run lasts (the paused reactor
answers nothing, and we queue nothing for the DUL). A TLS socket is never written from
two threads (OpenSSL does not allow it): over TLS each instance goes through
``send_c_store`` instead.

``tests/scp/test_storesend.py::test_pynetdicom_internals_are_what_the_fast_send_expects``
fails loudly when a pynetdicom upgrade changes what this relies on
(``Association._reactor_checkpoint``, ``_is_paused``, ``_handle_no_response``,
``_check_received_status``, ``dul.socket.socket``, ``dul._is_transport_event``,
``dul._idle_timer``, ``dimse.get_msg``, ``dimse.receive_primitive``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF

from store.filemeta import MalformedMeta, dataset_start

log = logging.getLogger("courier.scp.storesend")

C_STORE_RQ = 0x0001  # Command Field: C-STORE-RQ
C_STORE_RSP = 0x8001  # Command Field: C-STORE-RSP
DATASET_PRESENT = 0x0001  # Command Data Set Type: anything but 0x0101
NO_DATASET = 0x0101  # Command Data Set Type: no data set follows
PRIORITY_LOW = 0x0002  # Priority: LOW (pynetdicom's default, kept)
# Fragment size when the peer sets no maximum PDU length (0: unlimited).
UNLIMITED_FRAGMENT = 1 << 20
# Bytes gathered before one sendall (several PDUs at a time; a file is read straight
# into it).
SEND_BUFFER = 256 * 1024
# The first read of a file: a small file whole, and the meta of any file.
HEAD_READ = 64 * 1024
# How long to wait for the association's reactor to pause (it checks every 1 ms), and
# for the DUL thread to go round its loop (it sleeps 1 ms when idle).
PAUSE_TIMEOUT_S = 5.0
# How long the reactor must read as paused before the run starts (see _wait_paused).
PAUSE_SETTLE_S = 0.003
# The largest PDU read while awaiting a response (a C-STORE-RSP is under 1 KB; a
# longer one is not a response to anything we sent).
MAX_RESPONSE_PDU = 1 << 24

_P_DATA_TF = 0x04
_COMMAND_LAST = 0x03  # message control header: command, last fragment
_DATA = 0x00  # dataset, more fragments follow
_DATA_LAST = 0x02  # dataset, last fragment
# What the fields of a C-STORE-RSP come in (Implicit VR Little Endian, group 0000).
_RSP_FIELDS = (0x0100, 0x0120, 0x0800, 0x0900)  # Command Field, Message ID Being
# Responded To, Command Data Set Type, Status: each a US (2 bytes)


def _element(group_element: tuple[int, int], value: bytes) -> bytes:
    return struct.pack("<HHI", *group_element, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def command_set(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set, encoded Implicit VR Little Endian (PS3.7 9.3.1.1)."""
    body = b"".join(
        (
            _element((0x0000, 0x0002), _uid(sop_class)),  # Affected SOP Class UID
            _element((0x0000, 0x0100), struct.pack("<H", C_STORE_RQ)),  # Command Field
            _element((0x0000, 0x0110), struct.pack("<H", message_id)),  # Message ID
            _element((0x0000, 0x0700), struct.pack("<H", PRIORITY_LOW)),  # Priority
            _element((0x0000, 0x0800), struct.pack("<H", DATASET_PRESENT)),  # Data Set Type
            _element((0x0000, 0x1000), _uid(sop_instance)),  # Affected SOP Instance UID
        )
    )
    return _element((0x0000, 0x0000), struct.pack("<I", len(body))) + body


def pdu_header(context_id: int, control: int, length: int) -> bytes:
    """A P-DATA-TF PDU's header holding one PDV of ``length`` data bytes (PS3.8 9.3.5)."""
    pdv = length + 2  # context ID and message control header
    return struct.pack(">BBIIBB", _P_DATA_TF, 0, pdv + 4, pdv, context_id, control)


def store_response(body: bytes) -> tuple[int, int] | None:
    """(Message ID Being Responded To, Status) of a P-DATA-TF PDU's ``body`` (after its
    6-byte header) holding one PDV: a whole C-STORE-RSP command set with no data set
    (PS3.7 9.3.1.2). None for anything else (several PDVs, a fragment, another command,
    an element that does not parse, a field missing or not 2 bytes long): pynetdicom
    decodes those."""
    if len(body) < 6:
        return None
    (pdv_length,) = struct.unpack_from(">I", body)
    if pdv_length + 4 != len(body) or body[5] != _COMMAND_LAST:
        return None
    fields: dict[int, int] = {}
    pos, end = 6, len(body)
    while pos < end:
        if end - pos < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", body, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            return None
        if element in _RSP_FIELDS:
            if length != 2 or element in fields:
                return None
            (fields[element],) = struct.unpack_from("<H", body, pos)
        pos += length
    if len(fields) != len(_RSP_FIELDS):
        return None
    if fields[0x0100] != C_STORE_RSP or fields[0x0800] != NO_DATASET:
        return None
    return fields[0x0120], fields[0x0900]


def _offset_in(source: io.RawIOBase | io.BufferedIOBase, path: Path) -> int:
    """Where the dataset proper starts in the file open as ``source`` (see
    :func:`dataset_offset`). Raises ``OSError`` when its group 0002 elements do not
    parse (:class:`MalformedMeta`): nothing of it can go out."""
    try:
        offset = dataset_start(source)
    except MalformedMeta as exc:
        raise OSError(f"{path.name} cannot be sent: {exc}") from None
    if offset is not None:
        return offset
    try:
        return int(split_dataset(path)[1])
    except OSError:
        raise
    except Exception as exc:  # pydicom's errors for a file it cannot read as DICOM
        raise OSError(
            f"{path.name} cannot be sent: its File Meta Information does not parse "
            f"({type(exc).__name__})"
        ) from None


def dataset_offset(path: Path) -> int:
    """Where the dataset to send starts in a DICOM file: after the preamble, the File
    Meta Information and any group 0002 elements a modality put at the start of the
    dataset (PS3.10 7.1: group 0002 is File Meta only; PS3.7 does not carry it in a
    DIMSE data set, and it may name the modality's internal addresses). Found as
    ``store.filemeta.dataset_start`` finds it for every other copy that leaves the
    hospital, from the File Meta Information Group Length (0002,0000), which every file
    Courier stores has; anything else is left to pydicom's ``split_dataset``.

    A deflated dataset is sent from the end of the meta group, as stored: its first
    bytes are a deflate stream, not elements, and re-encoding it to drop any group 0002
    inside would change the bytes the sending modality deflated.

    Raises ``OSError`` when the file cannot be read or its group 0002 does not parse
    (also for a file without a meta group length that pydicom cannot read)."""
    with path.open("rb") as f:
        return _offset_in(f, path)


def hold_reactor(assoc: Association) -> bool:
    """Pause the association's reactor before one of pynetdicom's ``send_*`` calls (an
    N-ACTION after the run), and wait until it really holds (see
    :meth:`FastStore._wait_paused`: ``send_*`` pauses it too, but may go ahead while the
    reactor, just resumed by the end of a run, is passing its checkpoint and takes the
    response). The ``send_*`` call resumes it. False when it did not hold still within
    :data:`PAUSE_TIMEOUT_S` (the call then goes ahead as pynetdicom's alone would)."""
    held: Any = assoc
    held._reactor_checkpoint.clear()
    return FastStore._wait_paused(held)


def resume_reactor(assoc: Association) -> None:
    """Let the reactor held by :func:`hold_reactor` run again, when the ``send_*`` call
    that would have resumed it did not run (it raised: the association had ended);
    a reactor left held would never see the end of its association."""
    held: Any = assoc
    held._reactor_checkpoint.set()


class SizeMismatch(OSError):
    """The stored file is not the size the index recorded when it was received (cut
    short, or changed since): it is not sent. Restore it from a backup (or receive the
    instance again), then send the request again."""


def _check_size(f: io.FileIO | io.BufferedReader, sop_instance: str, expected: int | None) -> int:
    """The size of the open file ``f`` (``fstat`` of the descriptor that is read);
    raises :class:`SizeMismatch` when ``expected`` is given and differs."""
    size = os.fstat(f.fileno()).st_size
    if expected is not None and size != expected:
        # UID and sizes only: the path may name the patient.
        log.error(
            "instance %s not sent: its stored file's size differs from the index "
            "(%d bytes, %d indexed)",
            sop_instance,
            size,
            expected,
        )
        raise SizeMismatch(
            f"instance {sop_instance}: the stored file's size differs from the index"
        )
    return size


class _PeerGone(Exception):
    """Writing to or reading from the socket failed: the peer closed or reset the
    connection."""


class _Stalled(Exception):
    """The peer took no byte for the network timeout while a C-STORE was being sent."""


class FastStore:
    """C-STOREs of files on one established association (see the module docstring).

    Use as a context manager around the run; :meth:`store` sends one file and returns
    the peer's status (None: no valid answer, the association is aborted).
    """

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._message_id = 0
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        self._sock: socket.socket | None = None if isinstance(sock, ssl.SSLSocket) else sock
        max_pdu = int(assoc.acceptor.maximum_length or 0)
        self._fragment = max_pdu - 6 if max_pdu > 6 else UNLIMITED_FRAGMENT
        self._poll: Any = None  # select.poll on the socket while we read it
        self._buf = bytearray(SEND_BUFFER)  # what goes out in one sendall
        self._fill = 0
        self._timeout_s: float | None = None
        self._blocking: float | None = None  # the socket's timeout before the run
        self._timed = False  # the network timeout is on the socket (restore _blocking)
        self._out = False  # bytes of the current message went out

    def __enter__(self) -> Self:
        assoc: Any = self._assoc
        if self._sock is not None:
            # As send_c_store does per message: the reactor must not serve our responses.
            assoc._reactor_checkpoint.clear()
            if not self._wait_paused(assoc):
                # The reactor did not hold still: pynetdicom's send_c_store for this run.
                log.warning("association reactor did not pause; sending with pynetdicom")
                assoc._reactor_checkpoint.set()
                self._sock = None
                return self
            self._hold_dul()
        return self

    @staticmethod
    def _wait_paused(assoc: Any) -> bool:
        """Wait until the reactor is held at its checkpoint, and stays there; False when
        it did not within :data:`PAUSE_TIMEOUT_S` (or the association ended).

        ``send_c_store`` proceeds as soon as it sees ``_is_paused``; but the reactor may
        have passed the checkpoint just before it was cleared, still showing
        ``_is_paused``, and its next ``get_msg`` then takes our response (the C-STORE
        waits out the DIMSE timeout and aborts: pynetdicom's own sender did that now
        and then under load). A reactor that passed shows ``_is_paused`` False for its
        1 ms sleep, so it must read True throughout :data:`PAUSE_SETTLE_S`."""
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        settled_at: float | None = None
        while assoc.is_alive() and time.monotonic() < deadline:
            now = time.monotonic()
            if not assoc._is_paused:
                settled_at = None
            elif settled_at is None:
                settled_at = now
            elif now - settled_at >= PAUSE_SETTLE_S:
                return True
            time.sleep(0.0001)
        return False

    def _hold_dul(self) -> None:
        """Keep the DUL thread off the socket: its transport check answers "nothing
        arrived" until :meth:`_release_dul`. We read responses ourselves only once it
        has run that check (so it is not in the middle of reading a PDU); when it does
        not within :data:`PAUSE_TIMEOUT_S`, the responses come through it as before."""
        dul: Any = self._assoc.dul
        went_round = threading.Event()

        def nothing_arrived() -> bool:
            went_round.set()
            return False

        dul._is_transport_event = nothing_arrived
        if went_round.wait(PAUSE_TIMEOUT_S) and self._assoc.is_established:
            poll = select.poll()
            assert self._sock is not None
            poll.register(self._sock, select.POLLIN)
            self._poll = poll
            self._timeout_s = self._assoc.dimse_timeout
            # A peer that stops reading must not hold a sendall for ever: kept until
            # the run ends (_restore_timeout), whoever reads the responses.
            self._blocking = self._sock.gettimeout()
            self._sock.settimeout(self._assoc.network_timeout)
            self._timed = True
            return
        log.warning("association DUL thread did not go round; reading responses through it")
        self._release_dul()

    def _release_dul(self) -> None:
        """The DUL thread reads the socket again (from a PDU boundary: we read whole
        PDUs), with the network timer restarted. The socket keeps the network timeout:
        this thread may still write requests (after a hand-over)."""
        dul: Any = self._assoc.dul
        if "_is_transport_event" in vars(dul):
            del dul._is_transport_event
            dul._idle_timer.restart()
        self._poll = None

    def _restore_timeout(self) -> None:
        """The socket's timeout as it was before the run (None for a requestor:
        pynetdicom's DUL expects blocking reads), once this thread writes no more."""
        if self._timed and self._sock is not None:
            self._timed = False
            with contextlib.suppress(OSError):  # already closed
                self._sock.settimeout(self._blocking)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._release_dul()
            self._restore_timeout()
            assoc: Any = self._assoc
            assoc._reactor_checkpoint.set()

    def _abort(self) -> None:
        self._release_dul()  # the DUL sends the A-ABORT and closes the connection
        self._restore_timeout()
        self._assoc.abort()

    def store(
        self,
        path: Path,
        sop_class: str,
        sop_instance: str,
        context_id: int,
        size: int | None = None,
    ) -> int | None:
        """C-STORE the dataset of the file at ``path`` on presentation context
        ``context_id`` (whose transfer syntax must be the file's); the peer's status,
        None when it gave no valid answer (the association is then aborted).

        ``size``: the file's size as the index recorded it (None: not checked).

        Raises ``OSError`` when the file cannot be read (missing, unreadable, shorter
        than its size), or its File Meta Information or group 0002 elements do not
        parse (:func:`dataset_offset`); :class:`SizeMismatch` when it is not ``size``
        bytes long (nothing of the message has gone out then). The association is
        aborted only when part of the message had gone out (it cannot carry another);
        otherwise it is left as it was, for the next instance."""
        assoc: Any = self._assoc
        if not assoc.is_established:
            return None  # the peer aborted (or released) before this one
        if self._sock is None:
            return self._pynetdicom_store(path, sop_instance, size)
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        try:
            self._send(path, sop_class, sop_instance, context_id, message_id, size)
        except _Stalled:
            log.error(
                "the peer read nothing of a C-STORE for the network timeout; closing the "
                "connection and aborting the association"
            )
            assert self._sock is not None
            with contextlib.suppress(OSError):
                # pynetdicom's A-ABORT would wait behind the unread bytes for ever.
                self._sock.shutdown(socket.SHUT_RDWR)
            self._abort()
            return None
        except _PeerGone:
            # The peer went away mid-message.
            self._abort()
            return None
        except BaseException:
            # The file could not be read (the error is the caller's, as with
            # send_c_store). Once part of the message went out the association cannot
            # carry another; before that, nothing of it reached the peer.
            self._fill = 0
            if self._out:
                self._abort()
            raise
        if self._poll is not None:
            return self._read_response(message_id)
        return self._dimse_response(message_id)

    def _pynetdicom_store(self, path: Path, sop_instance: str, size: int | None) -> int | None:
        """The C-STORE through pynetdicom's ``send_c_store`` (TLS, or a reactor that did
        not pause). The file is checked first as :meth:`store` checks it (its size,
        its meta), so that an unreadable one raises ``OSError`` before anything is
        sent; an ``OSError`` while pynetdicom sends it aborts the association (part of
        it may have gone out). pynetdicom opens the file again: a change between the
        two opens is not seen here."""
        assoc: Any = self._assoc
        with path.open("rb") as f:
            _check_size(f, sop_instance, size)
            _offset_in(f, path)
        try:
            return _status_code(assoc.send_c_store(path))
        except RuntimeError:
            if not assoc.is_established:
                return None  # the peer aborted in the meantime
            raise
        except OSError:
            assoc.abort()
            raise

    def _dimse_response(self, message_id: int) -> int | None:
        """The response as pynetdicom's DUL thread decoded it, checked as
        ``send_c_store`` checks it."""
        assoc: Any = self._assoc
        _cx, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:
            assoc._handle_no_response()  # the DIMSE timeout, or the peer aborted
            return None
        if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != message_id:
            assoc.abort()  # not the answer to this request
            return None
        return _status_code(assoc._check_received_status(rsp))

    def _read_response(self, message_id: int) -> int | None:
        """The response read from the socket here (see the module docstring)."""
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        try:
            head = self._recv(6, deadline)
            pdu_type, _, length = struct.unpack(">BBI", head)
            if pdu_type != _P_DATA_TF or length > MAX_RESPONSE_PDU:
                log.error(
                    "the peer sent PDU type 0x%02X (%d bytes) while a C-STORE awaited "
                    "its response; aborting the association",
                    pdu_type,
                    length,
                )
                self._abort()
                return None
            body = self._recv(length, deadline)
        except TimeoutError:
            log.error("no C-STORE response within the DIMSE timeout; aborting the association")
            self._abort()
            return None
        except _PeerGone:
            log.error("the peer closed the connection while a C-STORE awaited its response")
            self._abort()
            return None
        answer = store_response(body)
        if answer is None:
            return self._hand_over(head + body, message_id)
        responded_to, status = answer
        if responded_to != message_id:
            log.error(
                "C-STORE response to message %d while message %d awaited its own; "
                "aborting the association",
                responded_to,
                message_id,
            )
            self._abort()  # not the answer to this request
            return None
        return status

    def _hand_over(self, pdu: bytes, message_id: int) -> int | None:
        """Give a P-DATA-TF PDU we did not read as a C-STORE-RSP to pynetdicom's DIMSE
        provider (as its DUL thread would have), let the DUL thread read the socket
        again, and take the response from pynetdicom for the rest of the run."""
        try:
            decoded = P_DATA_TF()
            decoded.decode(pdu)
            self._assoc.dimse.receive_primitive(decoded.to_primitive())
        except Exception:
            log.exception("the peer's P-DATA-TF does not decode; aborting the association")
            self._abort()
            return None
        self._release_dul()
        return self._dimse_response(message_id)

    def _recv(self, n: int, deadline: float | None) -> bytes:
        """Exactly ``n`` bytes from the socket (so the DUL thread can take over at a
        PDU boundary). Raises ``TimeoutError`` at ``deadline``, :class:`_PeerGone` when
        the connection closes or fails first."""
        assert self._sock is not None and self._poll is not None
        got = bytearray()
        while len(got) < n:
            wait_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            if not self._poll.poll(wait_ms):
                raise TimeoutError()
            try:
                chunk = self._sock.recv(n - len(got))
            except OSError as exc:
                raise _PeerGone() from exc
            if not chunk:
                raise _PeerGone()
            got += chunk
        return bytes(got)

    def _send(
        self,
        path: Path,
        sop_class: str,
        sop_instance: str,
        context_id: int,
        message_id: int,
        expected: int | None = None,
    ) -> None:
        self._fill = 0  # whatever an earlier failure left is not sent
        self._out = False
        command = command_set(message_id, sop_class, sop_instance)
        self._put(pdu_header(context_id, _COMMAND_LAST, len(command)))
        self._put(command)
        fragment = self._fragment
        with open(path, "rb", buffering=0) as f:
            # Before anything of this message is flushed: the command set sits in
            # the buffer, which a failure here discards.
            size = _check_size(f, sop_instance, expected)
            head = f.read(min(size, HEAD_READ)) if size else b""
            # A small file was read whole: its dataset is found in the bytes read.
            offset = _offset_in(io.BytesIO(head) if len(head) == size else f, path)
            f.seek(max(offset, len(head)))
            pending = memoryview(head)[offset:]  # read, not yet in the buffer
            left = size - offset
            while True:
                n = min(fragment, left) if left > 0 else 0
                left -= n
                last = left <= 0
                self._put(pdu_header(context_id, _DATA_LAST if last else _DATA, n))
                taken = min(n, len(pending))
                if taken:
                    self._put(pending[:taken])
                    pending = pending[taken:]
                self._put_file(f, n - taken, path)
                if last:
                    self._flush()
                    return

    def _put(self, data: bytes | memoryview) -> None:
        """Add ``data`` to the send buffer (sending what it holds first when full)."""
        if len(data) > len(self._buf) - self._fill:
            self._flush()
        self._buf[self._fill : self._fill + len(data)] = data
        self._fill += len(data)

    def _put_file(self, f: io.FileIO, n: int, path: Path) -> None:
        """Read the next ``n`` bytes of ``f`` straight into the send buffer (sending it
        each time it is full): each byte of a slice is copied once on its way out."""
        view = memoryview(self._buf)
        while n > 0:
            if self._fill == len(self._buf):
                self._flush()
            want = min(n, len(self._buf) - self._fill)
            got = f.readinto(view[self._fill : self._fill + want])
            if not got:
                raise OSError(f"{path.name} ended before its size said")
            self._fill += got
            n -= got

    def _flush(self) -> None:
        assert self._sock is not None
        self._out = True  # part of the message may be on the wire from here on
        try:
            self._sock.sendall(memoryview(self._buf)[: self._fill])
        except TimeoutError as exc:
            raise _Stalled() from exc
        except OSError as exc:
            raise _PeerGone() from exc
        finally:
            self._fill = 0


def _status_code(status: Dataset) -> int | None:
    """The Status of a status Dataset pynetdicom returned (empty: no valid answer)."""
    return int(status.Status) if "Status" in status else None
