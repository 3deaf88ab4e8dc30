"""Slow clients on the web port (node.web.guarded_h11 through the real WebServer):
connections that never complete a request header are closed by the server, one address
cannot hold more than portal.max_connections_per_host connections, trusted proxies are
not capped, and a well-behaved client gets its page throughout."""

from __future__ import annotations

import http.client
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from node.config import Config
from node.web import WebServer
from store.db import make_engine, make_sessions, migrate
from tests.peers import free_port

HALF = b"GET /api/openapi.json HTTP/1.1\r\nHost: courier\r\nUser-Agent: slow"
WHOLE = b"GET /api/openapi.json HTTP/1.1\r\nHost: courier\r\n\r\n"
WAIT_S = 20  # the bound on every wait below (the deadline under test is 1 s)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """SQLite only: nothing here depends on the database (the API's page is static)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    yield make_sessions(engine)
    engine.dispose()


def _server(db: sessionmaker[Session], tmp_path: Path, **portal: Any) -> Iterator[int]:
    port = free_port()
    settings = {"port": port, "header_timeout_s": 1.0, "keep_alive_s": 1.0, **portal}
    cfg = Config.model_validate({"node": {"data_dir": str(tmp_path)}, "portal": settings})
    server = WebServer(cfg, db)
    server.start()
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture
def port(db: sessionmaker[Session], tmp_path: Path) -> Iterator[int]:
    yield from _server(db, tmp_path, max_connections_per_host=64)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_server(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server closed (EOF or reset) within WAIT_S."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + WAIT_S
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except BlockingIOError:
                continue
            if data == b"":
                closed += 1
                sel.unregister(sock)
    sel.close()
    for s in socks:
        s.close()
    return closed


def _page(port: int, source: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S, source_address=(source, 0))
    try:
        conn.request("GET", "/api/openapi.json")
        rsp = conn.getresponse()
        rsp.read()
        return rsp.status
    finally:
        conn.close()


def test_three_hundred_half_headers_are_closed_and_a_browser_still_gets_its_page(
    port: int,
) -> None:
    slow = []
    for _ in range(300):
        sock = _connect(port)
        sock.sendall(HALF)
        slow.append(sock)
    # Meanwhile, from another address: served (the cap is per address).
    assert _page(port, "127.0.0.2") == 200
    assert _closed_by_server(slow) == 300
    # Afterwards the flooding address is served again too: its count went back down.
    assert _page(port, "127.0.0.1") == 200


def _nothing(sock: socket.socket) -> None:
    pass


def _half(sock: socket.socket) -> None:
    sock.sendall(HALF)


def _trickle(sock: socket.socket) -> None:
    """A byte every 0.2 s: bytes keep coming, the header never completes in time."""
    for byte in HALF[:15]:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed by the server already: what the test wants
            return
        time.sleep(0.2)


def _second_request_half(sock: socket.socket) -> None:
    """A complete first request answered, then half of a second one on the same
    connection (keep-alive): the deadline applies to every request."""
    sock.sendall(WHOLE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "closed before the first answer"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += sock.recv(65536)
    sock.sendall(HALF)


@pytest.mark.parametrize(
    "behave", [_nothing, _half, _trickle, _second_request_half], ids=lambda f: f.__name__
)
def test_a_connection_without_a_complete_header_is_closed(port: int, behave: Any) -> None:
    sock = _connect(port)
    behave(sock)
    assert _closed_by_server([sock]) == 1


def test_over_the_cap_a_connection_is_closed_at_once(
    db: sessionmaker[Session], tmp_path: Path
) -> None:
    for port in _server(db, tmp_path, max_connections_per_host=3, header_timeout_s=30):
        held = [_connect(port) for _ in range(3)]
        extra = _connect(port)
        # The fourth is closed while the three are held (their deadline is 30 s away).
        assert _closed_by_server([extra]) == 1
        assert _page(port, "127.0.0.2") == 200
        for s in held:
            s.sendall(WHOLE)  # the held ones are served normally
            assert s.recv(12) == b"HTTP/1.1 200"
            s.close()


def test_a_trusted_proxy_is_not_capped(db: sessionmaker[Session], tmp_path: Path) -> None:
    for port in _server(db, tmp_path, max_connections_per_host=2, trusted_proxies=["127.0.0.1"]):
        held = [_connect(port) for _ in range(6)]
        for s in held:
            s.sendall(WHOLE)
            assert s.recv(12) == b"HTTP/1.1 200"
            s.close()
