"""Slow clients on the web port: many connections each sending half a request header.

Usage::

    .venv/bin/python bench/slow_clients.py [--connections 300]

Starts the real :class:`node.web.WebServer` with node.yaml's defaults (SQLite in a
temporary folder), opens ``--connections`` connections from 127.0.0.1 that each send
half a request header and then nothing, fetches ``/api/openapi.json`` from 127.0.0.2
meanwhile, and prints how long that page took and when the server closed the slow
connections (those over ``portal.max_connections_per_host`` at once, the others at
``portal.header_timeout_s``). Every wait is bounded (120 s).
"""

from __future__ import annotations

import argparse
import http.client
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/ itself: bench/portal.py is not the package

from node.config import Config  # noqa: E402
from node.web import WebServer  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from tests.peers import free_port  # noqa: E402

HALF = b"GET /api/openapi.json HTTP/1.1\r\nHost: courier\r\nUser-Agent: slow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    engine = make_engine(f"sqlite:///{tmp / 'index.db'}")
    migrate(engine)
    port = free_port()
    cfg = Config.model_validate({"node": {"data_dir": str(tmp)}, "portal": {"port": port}})
    server = WebServer(cfg, make_sessions(engine))
    server.start()
    try:
        start = time.monotonic()
        slow = []
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(HALF)
            slow.append(sock)
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)
        )
        asked = time.monotonic()
        conn.request("GET", "/api/openapi.json")
        rsp = conn.getresponse()
        rsp.read()
        conn.close()
        print(
            f"page from another address: {rsp.status} in {(time.monotonic() - asked) * 1000:.0f} ms"
        )
        sel = selectors.DefaultSelector()
        for sock in slow:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        closed: list[float] = []
        while sel.get_map() and time.monotonic() - start < 120:
            for key, _ in sel.select(1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    closed.append(time.monotonic() - start)
                    sel.unregister(sock)
        at_once = sum(t < 1 for t in closed)
        last = max(closed, default=float("nan"))
        print(
            f"closed by the server: {len(closed)}/{args.connections} "
            f"({at_once} within 1 s, the last at {last:.1f} s)"
        )
        for sock in slow:
            sock.close()
    finally:
        server.stop()
        engine.dispose()


if __name__ == "__main__":
    main()
