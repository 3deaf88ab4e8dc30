"""C-STORE requests written straight to an established association's socket: the
sending side of hospital-to-hospital delivery, and every use of pynetdicom's private
API in Courier's SCU.

Why: pynetdicom's ``send_c_store`` hands each P-DATA PDU to its DUL thread through a
queue, an event queue and the state machine, one PDU per turn of a reactor that sleeps
1 ms whenever it finds nothing to do, and pauses and resumes the association's own
reactor around every message (polling until it has paused). A 0.5 MB CT slice to a
receiver with dcmtk's 16 KB maximum PDU is 33 PDUs: pynetdicom sent 230 such slices a
second into dcmtk's ``storescp`` where dcmtk's ``storescu`` sends 700 (``bench/send.py``).

:class:`FastStore`, for a run of C-STOREs on one association:

- pauses the association's reactor once for the run (as ``send_c_store`` does for each
  message, so that the reactor does not take the responses off the DIMSE queue), and
  makes sure it is held (:meth:`FastStore._wait_paused`: pynetdicom's own check races);
- encodes each command set from bytes (six fixed elements, Implicit VR Little Endian);
- sends the file's dataset bytes as stored (everything after the File Meta Information,
  found from its group length without pydicom), cut into P-DATA-TF PDUs of the peer's
  maximum length, several PDUs per ``sendall``, from the calling thread;
- waits for the response on pynetdicom's DIMSE queue (the DUL thread still reads the
  socket and decodes what arrives; while the run lasts it sleeps 0.1 ms instead of 1 ms
  when idle, so a response is picked up sooner) and checks it as ``send_c_store`` does:
  no answer within the DIMSE timeout aborts the association and gives an empty status.

Only the calling thread writes to the socket while the run lasts (the paused reactor
answers nothing, and we queue nothing for the DUL). A TLS socket is never written from
two threads (OpenSSL does not allow it): over TLS each instance goes through
``send_c_store`` instead.

``tests/scp/test_storesend.py::test_pynetdicom_internals_are_what_the_fast_send_expects``
fails loudly when a pynetdicom upgrade changes what this relies on
(``Association._reactor_checkpoint``, ``_is_paused``, ``_handle_no_response``,
``_check_received_status``, ``dul.socket.socket``, ``dul._run_loop_delay``,
``dimse.get_msg``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

log = logging.getLogger("courier.scp.storesend")

C_STORE_RQ = 0x0001  # Command Field: C-STORE-RQ
DATASET_PRESENT = 0x0001  # Command Data Set Type: anything but 0x0101
PRIORITY_LOW = 0x0002  # Priority: LOW (pynetdicom's default, kept)
# Fragment size when the peer sets no maximum PDU length (0: unlimited).
UNLIMITED_FRAGMENT = 1 << 20
# Bytes gathered before one sendall (several PDUs at a time).
SEND_BUFFER = 256 * 1024
# How long to wait for the association's reactor to pause (it checks every 1 ms).
PAUSE_TIMEOUT_S = 5.0
# How long the reactor must read as paused before the run starts (see _wait_paused).
PAUSE_SETTLE_S = 0.003
# The DUL thread's sleep when it found nothing to do, while a run lasts (pynetdicom's is
# 1 ms: each response would wait up to that long to be read).
DUL_IDLE_S = 0.0001

_P_DATA_TF = 0x04
_COMMAND_LAST = 0x03  # message control header: command, last fragment
_DATA = 0x00  # dataset, more fragments follow
_DATA_LAST = 0x02  # dataset, last fragment


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


def dataset_offset(path: Path) -> int:
    """Where the dataset starts in a DICOM file (after preamble and File Meta).

    Read from the File Meta Information Group Length (0002,0000), which every file
    Courier stores has; anything else is left to pydicom's ``split_dataset``."""
    with path.open("rb") as f:
        head = f.read(144)
    if (
        len(head) == 144
        and head[128:132] == b"DICM"
        and head[132:138] == b"\x02\x00\x00\x00UL"
        and head[138:140] == b"\x04\x00"
    ):
        (group_length,) = struct.unpack("<I", head[140:144])
        return 144 + int(group_length)
    return int(split_dataset(path)[1])


class _PeerGone(Exception):
    """Writing to the socket failed: the peer closed or reset the connection."""


class FastStore:
    """C-STOREs of files on one established association (see the module docstring).

    Use as a context manager around the run; :meth:`store` sends one file and returns
    the status Dataset (empty: no valid answer, the association is aborted).
    """

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._message_id = 0
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        self._sock: socket.socket | None = None if isinstance(sock, ssl.SSLSocket) else sock
        max_pdu = int(assoc.acceptor.maximum_length or 0)
        self._fragment = max_pdu - 6 if max_pdu > 6 else UNLIMITED_FRAGMENT
        self._idle_s: float | None = None

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
            self._idle_s = assoc.dul._run_loop_delay
            assoc.dul._run_loop_delay = DUL_IDLE_S
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            assoc: Any = self._assoc
            if self._idle_s is not None:
                assoc.dul._run_loop_delay = self._idle_s
            assoc._reactor_checkpoint.set()

    def store(self, path: Path, sop_class: str, sop_instance: str, context_id: int) -> Dataset:
        """C-STORE the dataset of the file at ``path`` on presentation context
        ``context_id`` (whose transfer syntax must be the file's); the peer's status."""
        assoc: Any = self._assoc
        if not assoc.is_established:
            return Dataset()  # the peer aborted (or released) before this one
        if self._sock is None:
            status: Dataset = assoc.send_c_store(path)
            return status
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        try:
            self._send(path, sop_class, sop_instance, context_id, message_id)
        except _PeerGone:
            # The peer went away mid-message; the DUL sees the closed connection too.
            assoc.abort()
            return Dataset()
        except BaseException:
            # The file could not be read: half a message went out, so the association
            # cannot carry another; the error is the caller's, as with send_c_store.
            assoc.abort()
            raise
        _cx, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:
            assoc._handle_no_response()  # the DIMSE timeout, or the peer aborted
            return Dataset()
        if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != message_id:
            assoc.abort()  # not the answer to this request
            return Dataset()
        checked: Dataset = assoc._check_received_status(rsp)
        return checked

    def _send(
        self, path: Path, sop_class: str, sop_instance: str, context_id: int, message_id: int
    ) -> None:
        assert self._sock is not None
        command = command_set(message_id, sop_class, sop_instance)
        buf = bytearray(pdu_header(context_id, _COMMAND_LAST, len(command)))
        buf += command
        offset = dataset_offset(path)
        fragment = self._fragment
        with path.open("rb", buffering=0) as f:
            left = os.fstat(f.fileno()).st_size - offset
            f.seek(offset)
            while True:
                data = f.read(min(fragment, left)) if left > 0 else b""
                left -= len(data)
                if left > 0 and len(data) == 0:
                    raise OSError(f"{path.name} ended before its size said")
                last = left <= 0
                buf += pdu_header(context_id, _DATA_LAST if last else _DATA, len(data))
                buf += data
                if last or len(buf) >= SEND_BUFFER:
                    self._write(buf)
                    buf.clear()
                if last:
                    return

    def _write(self, data: bytearray) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _PeerGone() from exc
