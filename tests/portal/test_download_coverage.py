"""A download counts (request ``downloaded``, an export audit event, ``Grant.downloads``)
only when every byte of the file reached the session, across ranges; a range that only
touches the end, a gap, or a range cut by a reset does not count."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select

from node.sendfile import ZeroCopy
from portal.coverage import MAX_SPANS, covers, merge
from portal.grantsession import SESSION_COOKIE
from store.models import AuditEvent, DownloadCoverage, ReleaseRequest
from tests.peers import free_port
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig, sign_in
from tests.portal.test_patient_download import MB, _big_package, _part

rig = patient_rig.rig
built_package = patient_rig.built_package


def _state(rig: Rig, request_id: int) -> str:
    with rig.db.sessions() as s:
        req = s.get(ReleaseRequest, request_id)
        assert req is not None
        return str(req.state)


def _exports(rig: Rig) -> int:
    with rig.db.sessions() as s:
        return len(s.scalars(select(AuditEvent).where(AuditEvent.kind == "export")).all())


# Ranges as fractions of the size (start, end inclusive; None = open end / suffix).
CASES = [
    ("suffix of one byte", ["bytes=-1"], False),
    ("the last byte by position", ["bytes={last}-{last}"], False),
    ("a whole GET", [None], True),
    ("bytes=0-", ["bytes=0-"], True),
    ("two halves", ["bytes=0-{half_1}", "bytes={half}-"], True),
    ("two halves, end first", ["bytes={half}-", "bytes=0-{half_1}"], True),
    ("overlapping", ["bytes=0-{half}", "bytes=100-{last}"], True),
    ("a gap of one byte", ["bytes=0-{half_2}", "bytes={half}-"], False),
    ("three pieces", ["bytes=-100", "bytes=0-99", "bytes=100-{last_100}"], True),
    ("many ranges in one answer", ["bytes=0-99,100-{half},{half}-"], True),
    ("the end twice", ["bytes=-1", "bytes=-1"], False),
]


@pytest.mark.parametrize(("name", "ranges", "counts"), CASES, ids=[c[0] for c in CASES])
def test_a_download_counts_when_every_byte_was_sent(
    rig: Rig, name: str, ranges: list[str | None], counts: bool
) -> None:
    p = rig.patient()
    c = rig.client()
    sign_in(rig, c, p.token)
    part = _part(rig)
    size = int(str(part["size"]))
    half = size // 2
    values = {
        "last": size - 1, "last_100": size - 101, "half": half, "half_1": half - 1,
        "half_2": half - 2,
    }  # fmt: skip
    before = _exports(rig)
    for rng in ranges:
        headers = {"Range": rng.format(**values)} if rng else {}
        r = c.get(f"/files/package/{part['name']}", headers=headers)
        assert r.status_code == (206 if rng else 200)
    assert rig.grant(p.grant_id).downloads == (1 if counts else 0)
    assert _state(rig, p.request_id) == ("downloaded" if counts else "notified")
    assert _exports(rig) - before == (1 if counts else 0)


def test_each_full_download_counts_and_sessions_do_not_add_up(rig: Rig) -> None:
    p = rig.patient()
    part = _part(rig)
    size = int(str(part["size"]))
    url = f"/files/package/{part['name']}"
    one, two = rig.client(), rig.client()
    sign_in(rig, one, p.token)
    sign_in(rig, two, p.token)
    one.get(url, headers={"Range": f"bytes=0-{size // 2 - 1}"})
    two.get(url, headers={"Range": f"bytes={size // 2}-"})  # another session's half
    assert rig.grant(p.grant_id).downloads == 0
    one.get(url)
    one.get(url)
    assert rig.grant(p.grant_id).downloads == 2
    assert one.head(url).status_code == 200  # HEAD sends nothing: counts nothing
    assert rig.grant(p.grant_id).downloads == 2


@pytest.fixture
def served(rig: Rig) -> Iterator[int]:
    """The rig's app behind a real uvicorn with zero-copy sends, as `courier serve` runs it."""
    port = free_port()
    config = uvicorn.Config(
        ZeroCopy(rig.app), host="127.0.0.1", port=port, http="h11", loop="asyncio",
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded: 200 x 50 ms
        if server.started:
            break
        thread.join(0.05)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


def _get(port: int, session: str, rng: str, reset: bool) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reset:  # a small window: the server is still sending when the reset comes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /files/package/BIG.zip HTTP/1.1\r\nHost: x\r\nCookie: {SESSION_COOKIE}={session}"
        f"\r\nRange: {rng}\r\nConnection: close\r\n\r\n".encode()
    )
    got = sock.recv(1024)
    if reset:  # RST while the server is still sending
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return got
    while chunk := sock.recv(1024 * 1024):
        got += chunk
    sock.close()
    return got


def _spans(rig: Rig) -> list[str]:
    with rig.db.sessions() as s:
        return list(s.scalars(select(DownloadCoverage.spans)).all())


def test_a_range_cut_by_a_reset_does_not_count(rig: Rig, tmp_path: Path, served: int) -> None:
    p = rig.patient()
    size = 32 * MB
    rig.ctx.package_dir = tmp_path / "packages"
    rig.ctx.package_dir.mkdir()
    session, _ = _big_package(rig, p.grant_id, rig.ctx.package_dir, size)
    assert _get(served, session, f"bytes=0-{size // 2 - 1}", reset=False).startswith(
        b"HTTP/1.1 206"
    )
    # The second half starts going out, then the client resets the connection.
    assert _get(served, session, f"bytes={size // 2}-", reset=True).startswith(b"HTTP/1.1 206")
    assert _get(served, session, "bytes=-1", reset=False).startswith(b"HTTP/1.1 206")
    wanted = [f"[[0,{size // 2}],[{size - 1},{size}]]"]
    for _ in range(200):  # bounded: the hook runs on a worker thread after the last byte
        if _spans(rig) == wanted:
            break
        threading.Event().wait(0.02)
    assert _spans(rig) == wanted  # the cut range was not recorded; the others were
    assert rig.grant(p.grant_id).downloads == 0
    assert _state(rig, p.request_id) == "notified"
    # Sent again in full, it counts.
    _get(served, session, f"bytes={size // 2}-", reset=False)
    for _ in range(200):  # bounded: the hook runs on a worker thread after the last byte
        if rig.grant(p.grant_id).downloads:
            break
        threading.Event().wait(0.02)
    assert rig.grant(p.grant_id).downloads == 1
    assert _state(rig, p.request_id) == "downloaded"


@pytest.mark.parametrize(
    ("a", "b", "merged"),
    [
        ([], [(0, 10)], [(0, 10)]),
        ([(0, 10)], [(10, 20)], [(0, 20)]),  # touching spans join
        ([(0, 10)], [(11, 20)], [(0, 10), (11, 20)]),
        ([(5, 10), (0, 3)], [(2, 6)], [(0, 10)]),
        ([(0, 100)], [(10, 20)], [(0, 100)]),
        ([(0, 0)], [(3, 3)], []),
    ],
)
def test_merge(
    a: list[tuple[int, int]], b: list[tuple[int, int]], merged: list[tuple[int, int]]
) -> None:
    assert merge(a, b) == merged


def test_covers() -> None:
    assert covers([(0, 10)], 10) and covers([], 0)
    assert not covers([(0, 9)], 10) and not covers([(1, 10)], 10)
    assert not covers([(0, 5), (6, 10)], 10)
    assert MAX_SPANS >= 16
