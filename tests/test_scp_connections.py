"""Idle, slow and greedy connections never lock an allowed PACS out (issue 14, item 3).

Attackers connect from other loopback addresses (127.0.0.2 and up: all of 127.0.0.0/8
is loopback on Linux); the allowed PACS (dcmtk's echoscu and storescu, with their own
2 s network, ACSE and DIMSE timeouts as the bound) calls from 127.0.0.1. The connection
limits do not touch the database: SQLite only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scp.admission import Limits
from tests import synthetic
from tests.conftest import Database, LocalScp, start_local_scp
from tests.dcmtk import echoscu, have_dcmtk, storescu
from tests.peers import require_peer
from tests.raw_association import associate, associate_rq, connect, still_open

SQLITE = pytest.mark.parametrize("db", ["sqlite"], indirect=True)
# dcmtk's own deadlines: TCP connect, A-ASSOCIATE-AC and each DIMSE response in 2 s.
QUICK = ["-to", "2", "-ta", "2", "-td", "2"]
PACS_HOST = "127.0.0.1"
LOCAL_LIMIT = (0x02, 0x03, 0x02)  # A-ASSOCIATE-RJ transient, provider: local limit exceeded
CALLING_AE_UNKNOWN = (0x01, 0x01, 0x03)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Read (and ignore, e.g. an A-ABORT) until the server closes; False after ``within``."""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
    return False


class Trickler:
    """Sends an A-ASSOCIATE-RQ a byte every 0.1 s, reconnecting whenever dropped."""

    def __init__(self, port: int, source: str) -> None:
        self.port, self.source = port, source
        self.stop = threading.Event()
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rq = associate_rq("OPEN")
        while not self.stop.is_set():
            try:
                with connect(self.port, self.source) as sock:
                    for byte in rq:  # bounded: one RQ, then reconnect
                        if self.stop.wait(0.1):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                self.dropped += 1

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def scp(db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalScp]:
    overrides = {
        "allowed_calling_aes": [
            {"ae_title": "PACS1", "host": PACS_HOST},
            {"ae_title": "OPEN"},  # any host: the attacker may claim it
        ],
        "max_associations": 16,
        "reserved_for_allowed": 4,
        "max_connections_per_host": 16,
        "acse_timeout_s": 2,
        "network_timeout_s": 5,
        **getattr(request, "param", {}),
    }
    s = start_local_scp(db, tmp_path / "data", **overrides)
    yield s
    s.server.shutdown()
    s.server.server_close()


def _echo(port: int) -> bool:
    return echoscu(PACS_HOST, port, calling_ae="PACS1", extra=QUICK, timeout=20).returncode == 0


@SQLITE
def test_the_pacs_gets_through_idle_connections_associations_and_a_trickler(
    scp: LocalScp, tmp_path: Path
) -> None:
    require_peer("dcmtk", have_dcmtk())
    files = synthetic.make_small_instances(tmp_path / "push", n=100)
    raw: list[socket.socket] = []
    held: list[socket.socket] = []
    try:
        # 16 idle associations as OPEN (an AE title anyone can claim) from two hosts: the
        # general pool (16 - 4 reserved) fills, the rest are refused transiently.
        results = []
        for i in range(16):
            sock, result = associate(scp.port, f"127.0.0.{7 + i % 2}", "OPEN")
            held.append(sock)
            results.append(result)
        assert results.count(()) == 12
        assert results.count(LOCAL_LIMIT) == 4
        with Trickler(scp.port, "127.0.0.9") as trickler:
            for _round in range(3):  # bounded
                # 50 idle raw connections from five hosts (under the per-host cap), topped
                # up each round: acse_timeout_s closes the ones left from the last round.
                for sock in raw:
                    sock.close()
                raw = [connect(scp.port, f"127.0.0.{2 + i % 5}") for i in range(50)]
                assert _echo(scp.port)
                push = storescu(
                    PACS_HOST, scp.port, files, calling_ae="PACS1", extra=QUICK, timeout=120
                )
                assert push.returncode == 0, push.stderr[-2000:]
                assert scp.rows() == 100  # all stored; re-sends are identical
            # On a quiet machine the rounds may end before acse_timeout_s (2 s): wait for
            # the cut (bounded), which the trickler sees at its next byte or two.
            deadline = time.monotonic() + 2 + 5
            while not trickler.dropped and time.monotonic() < deadline:
                time.sleep(0.1)
        assert trickler.dropped >= 1  # cut off by acse_timeout_s, long before its RQ ended
        # The idle associations are still there: only established ones hold a slot.
        assert all(still_open(sock) for sock in held[:2])
    finally:
        for sock in raw + held:
            sock.close()


@SQLITE
@pytest.mark.parametrize(
    ("first_bytes", "trickle"),
    [
        (struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + bytes(64), False),  # 4 GB announced
        (struct.pack(">BBL", 0x01, 0, 300_000) + bytes(64), False),  # over the RQ bound
        (struct.pack(">BBL", 0x04, 0, 100) + bytes(100), False),  # P-DATA before association
        (b"", False),  # nothing at all
        (associate_rq("OPEN")[:-1], False),  # all but the last byte
        (associate_rq("OPEN"), True),  # a byte every 0.1 s (takes 30 s to finish)
    ],
    ids=["4gb", "over-bound", "not-rq", "silent", "incomplete", "trickle"],
)
def test_a_connection_without_a_whole_associate_rq_is_closed_within_acse_timeout(
    scp: LocalScp, first_bytes: bytes, trickle: bool
) -> None:
    with connect(scp.port, "127.0.0.2") as sock:
        if trickle:
            deadline = time.monotonic() + 2 + 3  # acse_timeout_s, plus slack
            closed = False
            for byte in first_bytes:  # bounded by the deadline too
                if time.monotonic() > deadline:
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if closed_by_server(sock, 0.1):
                    closed = True
                    break
            assert closed
        else:
            sock.sendall(first_bytes)
            assert closed_by_server(sock, within=2 + 3)
    slots, _per_host = scp.server.ae.admission.counts()
    assert slots == 0


@SQLITE
@pytest.mark.parametrize("scp", [{"max_connections_per_host": 4}], indirect=True)
def test_connections_over_the_per_host_cap_are_closed_at_once(scp: LocalScp) -> None:
    require_peer("dcmtk", have_dcmtk())
    first = [connect(scp.port, "127.0.0.2") for _ in range(4)]
    try:
        extra = connect(scp.port, "127.0.0.2")
        with extra:
            assert closed_by_server(extra, within=2)  # well before acse_timeout_s
        assert all(still_open(sock) for sock in first)
        assert _echo(scp.port)  # another host is not affected
    finally:
        for sock in first:
            sock.close()
    # Once they are gone, the host may connect again.
    deadline = time.monotonic() + 5
    result: tuple[int, ...] | None = None
    while time.monotonic() < deadline:  # bounded
        with contextlib.suppress(AssertionError, OSError):
            sock, result = associate(scp.port, "127.0.0.2", "OPEN")
            sock.close()
            break
        time.sleep(0.1)
    assert result == ()


@SQLITE
@pytest.mark.parametrize(
    "scp", [{"max_associations": 2, "reserved_for_allowed": 0, "idle_timeout_s": 1}], indirect=True
)
def test_an_idle_association_is_closed_and_its_slot_freed(scp: LocalScp) -> None:
    held = [associate(scp.port, "127.0.0.2", "OPEN") for _ in range(2)]
    try:
        assert [r for _s, r in held] == [(), ()]
        sock, result = associate(scp.port, "127.0.0.2", "OPEN")
        sock.close()
        assert result == LOCAL_LIMIT
        assert all(closed_by_server(s, within=1 + 5) for s, _r in held)
    finally:
        for s, _r in held:
            s.close()
    deadline = time.monotonic() + 5
    while scp.server.ae.admission.counts()[0] and time.monotonic() < deadline:  # bounded
        time.sleep(0.05)
    sock, result = associate(scp.port, "127.0.0.2", "OPEN")
    sock.close()
    assert result == ()


@SQLITE
@pytest.mark.parametrize("scp", [{"max_associations": 4, "reserved_for_allowed": 2}], indirect=True)
def test_reserved_slots_are_for_host_pinned_callers_only(scp: LocalScp) -> None:
    opened: list[socket.socket] = []
    try:
        results = []
        for _ in range(3):
            sock, result = associate(scp.port, "127.0.0.2", "OPEN")
            opened.append(sock)
            results.append(result)
        assert results == [(), (), LOCAL_LIMIT]
        # PACS1 claimed from another host is no one we know.
        sock, result = associate(scp.port, "127.0.0.2", "PACS1")
        opened.append(sock)
        assert result == CALLING_AE_UNKNOWN
        # PACS1 from its own host takes the two reserved slots, then is refused too.
        results = []
        for _ in range(3):
            sock, result = associate(scp.port, PACS_HOST, "PACS1")
            opened.append(sock)
            results.append(result)
        assert results == [(), (), LOCAL_LIMIT]
    finally:
        for sock in opened:
            sock.close()


@SQLITE
@pytest.mark.parametrize(
    "scp",
    [{"max_associations": 3, "allowed_calling_aes": [], "reserved_for_allowed": 2}],
    indirect=True,
)
def test_without_a_pinned_entry_no_slot_is_held_back(scp: LocalScp) -> None:
    opened = [associate(scp.port, "127.0.0.2", "ANYONE") for _ in range(4)]
    try:
        assert [r for _s, r in opened] == [(), (), (), LOCAL_LIMIT]
    finally:
        for s, _r in opened:
            s.close()


@pytest.mark.parametrize(
    ("limits", "workers", "share"),
    [
        ((16, 4, 16), 1, (16, 4, 16)),
        ((16, 4, 16), 2, (8, 2, 8)),
        ((3, 2, 5), 2, (2, 1, 3)),  # rounded up; the reserve leaves one general slot
        ((1, 0, 1), 4, (1, 0, 1)),  # never zero
        ((2, 4, 16), 1, (2, 1, 16)),  # a reserve over the cap is clamped
    ],
)
def test_each_receiving_process_gets_its_share_of_the_limits(
    limits: tuple[int, int, int], workers: int, share: tuple[int, int, int]
) -> None:
    got = Limits(*limits).per_process(workers)
    assert (got.max_associations, got.reserved_for_allowed, got.max_connections_per_host) == share
