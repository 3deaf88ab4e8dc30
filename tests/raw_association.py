"""A DICOM association opened by hand over a raw socket (PS3.8 9.3): for tests and
benchmarks that hold associations open and idle, or watch exactly what the SCP answers,
without an SCU library's own threads on the connection."""

from __future__ import annotations

import socket
import struct


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(calling: str, called: str = "COURIER") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing Verification, by hand."""
    context = _item(
        0x20,
        bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2"),
    )
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.826.0.1.3"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def connect(port: int, source: str) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (a loopback address)."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def associate(
    port: int, source: str, calling: str, called: str = "COURIER"
) -> tuple[socket.socket, tuple[int, ...]]:
    """Open a raw association; returns the socket and () when accepted, else the
    A-ASSOCIATE-RJ (result, source, reason). The socket stays open (idle)."""
    sock = connect(port, source)
    try:
        sock.sendall(associate_rq(calling, called))
        header = recv_exactly(sock, 6)
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = recv_exactly(sock, length)
    except BaseException:
        sock.close()  # e.g. closed by the server: never leave the socket to the collector
        raise
    if pdu_type == 0x02:  # A-ASSOCIATE-AC
        return sock, ()
    sock_result = (body[1], body[2], body[3])
    if pdu_type != 0x03:
        sock.close()
        raise AssertionError(f"unexpected PDU type 0x{pdu_type:02X}")
    return sock, sock_result


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock`` (AssertionError if the peer closes first)."""
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "closed by the server"
        out += chunk
    return out


def still_open(sock: socket.socket, wait: float = 0.3) -> bool:
    """Whether the peer has not closed ``sock`` (nothing read within ``wait`` seconds)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except OSError:
        return False
