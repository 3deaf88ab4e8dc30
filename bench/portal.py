"""Benchmark of the patient portal, served by uvicorn on 127.0.0.1 in its own process.

1. A 1 GB package part downloaded with curl through ``/files/package/...`` against
   ``cat FILE > /dev/null`` (the limit: the same file from the page cache), alone and with
   20 concurrent downloads; the server's RSS is sampled every 50 ms (peak reported).
2. The code check (``POST /access/verify`` with the right code) with 50 concurrent
   clients, each on its own link: p50/p99 latency. A fresh code is issued in the database
   before each timed check (outside the timing).

Targets (issue 5): single download >= 70% of cat's rate; memory flat with 20 downloads;
code check p99 < 100 ms. Run: ``.venv/bin/python bench/portal.py [--size-mb 1024]``.
SQLite (WAL, synchronous=FULL) in a temporary folder, or ``--db postgresql`` (a new
schema in the local server, left behind for inspection); the per-address rate limit is
raised to its maximum (every client is 127.0.0.1).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.grants import GrantKeys, issue_code, new_grant
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from portal.settings import PortalSettings
from release.requests import RequestBook
from release.validation import RequestDraft
from store.db import make_engine, make_sessions, migrate
from store.models import Grant, Package, PortalSession

MB = 1024 * 1024
SECRET = b"b" * 32
CSRF = "bench-csrf-token-0123456789abcdef"


def _draft() -> RequestDraft:
    return RequestDraft.model_validate(
        {
            "patient_id": "BENCH-1",
            "patient_name": "Bench^Patient",
            "patient_birth_date": "19700131",
            "recipient_email": "patient@example.org",
            "second_channel": "sms:+447911123456",
            "selection": [{"kind": "accession", "value": "ACC-BENCH"}],
            "requested_by": "bench",
        }
    )


PG_URL = os.environ.get("COURIER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def database(root: Path, kind: str) -> str:
    """A fresh database URL: SQLite in ``root``, or a new schema in the local PostgreSQL."""
    if kind == "sqlite":
        return f"sqlite:///{root / 'index.db'}"
    from sqlalchemy import text

    schema = f"bench_portal_{secrets.token_hex(4)}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def setup(
    root: Path, size_mb: int, clients: int, url: str
) -> tuple[str, list[int], list[str], str]:
    """The database, the big part, one download session and ``clients`` code grants."""
    part = root / "packages" / "BENCH" / "BENCH.zip"
    part.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MB)
    with part.open("wb") as f:
        for _ in range(size_mb):
            f.write(block)
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    now = datetime.now(UTC)
    req = RequestBook(sessions).create(_draft(), "bench")
    keys = GrantKeys(SECRET)
    with sessions() as s, s.begin():
        pkg = Package(
            request_id=req.id,
            folder="BENCH",
            parts=f'[{{"name": "BENCH.zip", "size": {size_mb * MB}, "sha256": "-"}}]',
            studies=1,
            instances=1,
            size_bytes=size_mb * MB,
            built_at=now,
        )
        s.add(pkg)
        s.flush()
        from store.models import ReleaseRequest

        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        fresh.state = "notified"
        download = new_grant(s, keys, fresh, package_id=pkg.id, link_days=30, now=now)
        session = secrets.token_urlsafe(32)
        import hashlib

        s.add(
            PortalSession(
                token_hash=hashlib.sha256(session.encode()).hexdigest(),
                kind="grant",
                grant_id=download.id,
                created_at=now,
                last_seen_at=now + timedelta(hours=2),
            )
        )
        grants = [
            new_grant(s, keys, fresh, package_id=pkg.id, link_days=30, now=now)
            for _ in range(clients)
        ]
        ids = [g.id for g in grants]
        tokens = [keys.token(g) for g in grants]
    engine.dispose()
    return url, ids, tokens, session


def serve(url: str, root: str, port: int) -> None:
    import uvicorn

    from portal.api import create_app
    from portal.context import PortalContext

    engine = make_engine(url, pool_size=20)
    sessions = make_sessions(engine)
    ctx = PortalContext(
        sessions=sessions,
        keys=GrantKeys(SECRET),
        outbox=Outbox(),
        delivery=DeliverySettings(code_sends_per_hour=20),
        portal=PortalSettings(rate_limit_per_min=10_000, session_idle_min=24 * 60),
        package_dir=Path(root) / "packages",
    )
    app = create_app(sessions, [], portal=ctx)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def timed(cmd: list[str] | str, shell: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True)
    return time.perf_counter() - start


def curl(port: int, session: str) -> list[str]:
    return [
        "curl", "-sf", "-o", "/dev/null", "--noproxy", "*",
        "-H", f"Cookie: __Host-session={session}",
        f"http://127.0.0.1:{port}/files/package/BENCH.zip",
    ]  # fmt: skip


def code_checks(url: str, port: int, ids: list[int], tokens: list[str], rounds: int) -> list[float]:
    engine = make_engine(url, pool_size=len(ids))
    sessions = make_sessions(engine)
    keys = GrantKeys(SECRET)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        cookie = f"__Host-csrf={CSRF}; __Host-link={tokens[i]}"
        for _ in range(rounds):
            with sessions() as s, s.begin():
                g = s.get(Grant, ids[i])
                assert g is not None
                issue_code(s, keys, g, now=datetime.now(UTC), ttl_min=10)
                code = keys.code(g)
            body = f"csrf={CSRF}&code={code}"
            start = time.perf_counter()
            conn.request(
                "POST",
                "/access/verify",
                body=body,
                headers={
                    "Cookie": cookie,
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            rsp = conn.getresponse()
            rsp.read()
            took = time.perf_counter() - start
            assert rsp.status == 303, rsp.status
            with lock:
                latencies.append(took)
        conn.close()

    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(client, range(len(ids))))
    engine.dispose()
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20, help="code checks per client")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="courier-bench-portal-") as tmp:
        root = Path(tmp)
        url, ids, tokens, session = setup(root, args.size_mb, args.clients, database(root, args.db))
        part = root / "packages" / "BENCH" / "BENCH.zip"
        from tests.peers import free_port

        port = free_port()
        proc = mp.get_context("spawn").Process(target=serve, args=(url, tmp, port), daemon=True)
        proc.start()
        for _ in range(200):  # bounded: 200 x 50 ms
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                break
            except OSError:
                time.sleep(0.05)
        assert proc.pid is not None
        size = part.stat().st_size
        timed(f"cat {part} > /dev/null", shell=True)  # warm the page cache
        cat_s = min(timed(f"cat {part} > /dev/null", shell=True) for _ in range(3))
        timed(curl(port, session))  # warm-up
        idle_kb = rss_kb(proc.pid)
        with Sampler(proc.pid) as one:
            single_s = min(timed(curl(port, session)) for _ in range(3))
        with Sampler(proc.pid) as many:
            start = time.perf_counter()
            procs = [subprocess.Popen(curl(port, session)) for _ in range(20)]
            assert all(p.wait() == 0 for p in procs)
            many_s = time.perf_counter() - start
        lat = sorted(code_checks(url, port, ids, tokens, args.rounds))
        proc.terminate()
        proc.join(10)
    gbps = lambda s: size / s / 1e9  # noqa: E731
    print(
        f"package part: {size / 1e9:.2f} GB (page cache), server = uvicorn, 1 process, "
        f"database {args.db}"
    )
    print(f"cat > /dev/null:           {gbps(cat_s):6.2f} GB/s")
    print(
        f"single download (curl):    {gbps(single_s):6.2f} GB/s = "
        f"{cat_s / single_s * 100:5.1f}% of cat   (target >= 70%)"
    )
    print(
        f"20 concurrent downloads:   {20 * size / many_s / 1e9:6.2f} GB/s aggregate, {many_s:.1f} s"
    )
    print(
        f"server RSS: idle {idle_kb / 1024:.0f} MB, peak single {one.peak / 1024:.0f} MB, "
        f"peak with 20 downloads {many.peak / 1024:.0f} MB"
    )
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(
        f"code check, {args.clients} concurrent clients, {len(lat)} checks: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms   (target p99 < 100 ms)"
    )


if __name__ == "__main__":
    main()
