"""Zero-copy downloads (node.sendfile.ZeroCopy + portal.partfile.PartResponse) through a
real uvicorn on loopback: whole files, single ranges, fall-backs, HEAD, keep-alive,
interrupted transfers (no hook call), and the same bytes as the file every time. The
hook gets the byte spans each fully sent answer carried (what counts as a download is
tests/portal/test_download_coverage.py's business)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from node.sendfile import ZeroCopy
from portal.partfile import PartResponse
from tests.peers import free_port

SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of the chunk size


class Rig:
    def __init__(
        self, path: Path, zero_copy: bool = True, tls: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.completed: list[str] = []
        self.spans: list[tuple[list[tuple[int, int]], int]] = []
        self.messages: list[str] = []
        self.port = free_port()
        app = Starlette(routes=[Route("/part", self.part, methods=["GET", "HEAD"])])
        wrapped = ZeroCopy(self._spy(app)) if zero_copy else app
        config = uvicorn.Config(
            wrapped, host="127.0.0.1", port=self.port, http="h11", loop="asyncio",
            log_level="warning", access_log=False, **(tls or {}),  # type: ignore[arg-type]
        )  # fmt: skip
        self.context: ssl.SSLContext | None = None
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def _spy(self, app: Starlette) -> object:
        async def spy(scope, receive, send):  # type: ignore[no-untyped-def]
            async def record(message):  # type: ignore[no-untyped-def]
                self.messages.append(message["type"])
                await send(message)

            await app(scope, receive, record)

        return spy

    async def part(self, request: Request) -> Response:
        return PartResponse(
            self.path,
            media_type="application/zip",
            headers={"Cache-Control": "no-store"},
            on_sent=lambda spans, size: self._sent(request, spans, size),
        )

    def _sent(self, request: Request, spans: list[tuple[int, int]], size: int) -> None:
        self.spans.append((spans, size))
        self.completed.append(request.headers.get("range", "all"))

    def __enter__(self) -> Rig:
        self.thread.start()
        for _ in range(200):  # bounded: 200 x 25 ms
            if self.server.started:
                break
            time.sleep(0.025)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(
        self, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self.context is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=10, context=self.context
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, "/part", headers=headers or {})
            rsp = conn.getresponse()
            return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, rsp.read()
        finally:
            conn.close()

    def wait_completed(self, n: int) -> None:
        for _ in range(200):  # bounded: 200 x 10 ms (the hook runs on a worker thread)
            if len(self.completed) >= n:
                return
            time.sleep(0.01)


@pytest.fixture
def part(tmp_path: Path) -> Path:
    path = tmp_path / "part.zip"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def rig(part: Path) -> Iterator[Rig]:
    with Rig(part) as r:
        yield r


@pytest.mark.parametrize(
    ("range_header", "status", "start", "end", "kind", "spans"),
    [
        (None, 200, 0, SIZE, "http.response.pathsend", [(0, SIZE)]),
        ("bytes=0-", 206, 0, SIZE, "http.response.zerocopysend", [(0, SIZE)]),
        ("bytes=1000-", 206, 1000, SIZE, "http.response.zerocopysend", [(1000, SIZE)]),
        (
            f"bytes=-{SIZE // 3}",
            206,
            SIZE - SIZE // 3,
            SIZE,
            "http.response.zerocopysend",
            [(SIZE - SIZE // 3, SIZE)],
        ),
        ("bytes=0-99", 206, 0, 100, "http.response.zerocopysend", [(0, 100)]),
        (
            f"bytes={SIZE - 1}-{SIZE - 1}",
            206,
            SIZE - 1,
            SIZE,
            "http.response.zerocopysend",
            [(SIZE - 1, SIZE)],
        ),
        # multipart: Starlette's body messages (fall-back)
        ("bytes=0-9,20-29", 206, None, None, "http.response.body", [(0, 10), (20, 30)]),
    ],
)
def test_bodies_are_the_files_bytes(
    rig: Rig,
    part: Path,
    range_header: str | None,
    status: int,
    start: int | None,
    end: int | None,
    kind: str,
    spans: list[tuple[int, int]],
) -> None:
    headers = {"Range": range_header} if range_header else {}
    got, hdrs, body = rig.get(headers)
    assert got == status
    assert hdrs["cache-control"] == "no-store"
    if start is not None and end is not None:
        data = part.read_bytes()
        assert body == data[start:end]
        assert int(hdrs["content-length"]) == end - start
    else:
        assert hdrs["content-type"].startswith("multipart/byteranges")
    assert kind in rig.messages
    rig.wait_completed(1)
    assert rig.spans == [(spans, SIZE)]


def test_head_sends_no_body_and_completes_nothing(rig: Rig) -> None:
    for rng in (None, "bytes=10-"):
        status, _, body = rig.get({"Range": rng} if rng else {}, method="HEAD")
        assert status in (200, 206) and body == b""
    time.sleep(0.05)
    assert rig.completed == []


def test_bad_ranges_get_starlettes_answers(rig: Rig) -> None:
    assert rig.get({"Range": f"bytes={SIZE + 10}-"})[0] == 416
    assert rig.get({"Range": "bytes=abc"})[0] == 400
    assert rig.completed == []


def test_keep_alive_after_a_zero_copy_body(rig: Rig, part: Path) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=10)
    digests = []
    for headers in ({}, {"Range": "bytes=5-"}, {}):
        conn.request("GET", "/part", headers=headers)
        rsp = conn.getresponse()
        digests.append(hashlib.sha256(rsp.read()).hexdigest())
    conn.close()
    data = part.read_bytes()
    assert digests == [
        hashlib.sha256(data).hexdigest(),
        hashlib.sha256(data[5:]).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    ]
    rig.wait_completed(3)
    assert len(rig.completed) == 3


@pytest.mark.parametrize("zero_copy", [True, False])
def test_a_client_that_goes_away_completes_nothing_and_the_server_goes_on(
    tmp_path: Path, zero_copy: bool
) -> None:
    big = tmp_path / "big.zip"
    with big.open("wb") as f:  # larger than every socket buffer on the way
        f.truncate(64 * 1024 * 1024)
    with Rig(big, zero_copy=zero_copy) as r:
        for rng in (b"", b"Range: bytes=100-\r\n"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            sock.settimeout(10)
            sock.connect(("127.0.0.1", r.port))
            sock.sendall(b"GET /part HTTP/1.1\r\nHost: x\r\n" + rng + b"\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 20")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST while the server is still sending
        time.sleep(0.3)
        assert r.completed == []
        status, _, body = r.get({"Range": "bytes=-10"})
        assert status == 206 and body == bytes(10)
        r.wait_completed(1)
        assert r.completed == ["bytes=-10"]


def test_concurrent_range_downloads_are_all_right(rig: Rig, part: Path) -> None:
    data = part.read_bytes()
    results: list[bool] = []

    def one(i: int) -> None:
        start = i * 1000
        status, _, body = rig.get({"Range": f"bytes={start}-"})
        results.append(status == 206 and body == data[start:])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 20
    rig.wait_completed(20)
    assert len(rig.completed) == 20


def test_without_the_server_extension_the_body_is_read_in_chunks(part: Path) -> None:
    """Another server (here Starlette's TestClient) gets ordinary body messages."""
    completed: list[int] = []

    async def route(request: Request) -> Response:
        return PartResponse(part, on_sent=lambda spans, size: completed.append(1))

    app = ZeroCopy(Starlette(routes=[Route("/part", route)]))
    with TestClient(app) as client:  # type: ignore[arg-type]
        assert client.get("/part").content == part.read_bytes()
        assert client.get("/part", headers={"Range": "bytes=7-"}).content == part.read_bytes()[7:]
    assert completed == [1, 1]


def test_plain_uvicorn_without_zero_copy_still_serves(part: Path) -> None:
    with Rig(part, zero_copy=False) as r:
        status, _, body = r.get({"Range": "bytes=3-"})
        assert status == 206 and body == part.read_bytes()[3:]
        r.wait_completed(1)
        assert r.completed == ["bytes=3-"]


def test_over_tls_the_body_is_written_not_sendfiled(part: Path, tmp_path: Path) -> None:
    """TLS has no kernel sendfile here: asyncio reads and writes, same bytes, same hooks."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    tls = {"ssl_keyfile": str(key_file), "ssl_certfile": str(cert_file)}
    with Rig(part, tls=tls) as r:
        r.context = ssl.create_default_context()
        ca.configure_trust(r.context)
        data = part.read_bytes()
        status, _, body = r.get()
        assert status == 200 and body == data
        status, _, body = r.get({"Range": "bytes=17-"})
        assert status == 206 and body == data[17:]
        r.wait_completed(2)
        assert r.completed == ["all", "bytes=17-"]
        assert "http.response.zerocopysend" in r.messages
