"""Benchmark of the patient portal, served by uvicorn on 127.0.0.1 in its own process.

1. A 1 GB package part downloaded with curl through ``/files/package/...`` against
   ``cat FILE > /dev/null`` (the limit: the same file from the page cache), alone and with
   20 concurrent downloads; the server's RSS is sampled every 50 ms (peak reported).
   Anchors in the same run: the same server with zero-copy off (uvicorn's own body
   path), nginx with ``sendfile on`` (when installed), and a bare ``os.sendfile`` socket
   server (no HTTP stack at all). All of them are bound by one loopback TCP stream into
   curl, which on this machine runs at 2-4 GB/s, a third or less of ``cat``.
2. The code check (``POST /access/verify`` with the right code), each check on its own
   link with its code issued before any timing (the client only does HTTP): closed loop
   (50 clients back to back), and with ``--rate R ...`` open loop (Poisson arrivals at R
   per second over the 50 clients, latency from when each check was due): p50/p99 and
   the rate achieved. By Little's law, 50 closed-loop clients with p99 < 100 ms need
   more than 500 checks a second from the one server process.

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
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.grants import GrantKeys, issue_code, new_grant
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from portal.settings import PortalSettings
from release.requests import RequestBook
from release.validation import RequestDraft
from store.db import make_engine, make_sessions, migrate
from store.models import Package, PortalSession, ReleaseRequest

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


def serve(url: str, root: str, port: int, zero_copy: bool = True) -> None:
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
    if not zero_copy:  # uvicorn's own body path, for comparison
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    from node.sendfile import ZeroCopy

    uvicorn.run(
        ZeroCopy(app),
        http="h11",
        loop="asyncio",
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


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


def code_grants(url: str, n: int) -> list[tuple[str, str]]:
    """``n`` more links to the bench package, each with a code issued: (token, code).

    Made before any timing, so the load generator never writes to the database while
    checks are timed (on SQLite its writes would queue for the server's write lock).
    """
    engine = make_engine(url)
    sessions = make_sessions(engine)
    keys = GrantKeys(SECRET)
    now = datetime.now(UTC)
    links = []
    with sessions() as s, s.begin():
        pkg = s.scalars(select(Package).where(Package.folder == "BENCH")).one()
        req = s.get(ReleaseRequest, pkg.request_id)
        assert req is not None
        for _ in range(n):
            g = new_grant(s, keys, req, package_id=pkg.id, link_days=30, now=now)
            issue_code(s, keys, g, now=now, ttl_min=10)
            links.append((keys.token(g), keys.code(g)))
    engine.dispose()
    return links


def code_checks(
    port: int, links: list[tuple[str, str]], clients: int, rate: float | None = None
) -> tuple[list[float], float]:
    """Check every link's code once (``POST /access/verify``, the right code) over
    ``clients`` connections; the latencies (s) and the wall time (s).

    Closed loop (``rate`` None): each client sends its next check when the previous
    one is answered. Open loop: checks are due at ``rate`` per second in all (Poisson
    arrivals, fixed seed), each sent by the next free client; its latency counts from
    when it was due, so waiting for a free client (queueing) counts too.
    """
    due = [0.0] * len(links)
    if rate is not None:
        gaps = random.Random(5)
        for k in range(1, len(links)):
            due[k] = due[k - 1] + gaps.expovariate(rate)
    latencies: list[float] = []
    lock = threading.Lock()
    queue = iter(range(len(links)))
    start = time.perf_counter()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                k = next(queue, None)
            if k is None:
                break
            token, code = links[k]
            sent = time.perf_counter()
            if rate is not None:
                time.sleep(max(0.0, start + due[k] - sent))
                sent = start + due[k]
            conn.request(
                "POST",
                "/access/verify",
                body=f"csrf={CSRF}&code={code}",
                headers={
                    "Cookie": f"__Host-csrf={CSRF}; __Host-link={token}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            rsp = conn.getresponse()
            rsp.read()
            took = time.perf_counter() - sent
            # 429: over portal.rate_limit_per_min (10,000 a minute from 127.0.0.1).
            assert rsp.status == 303, rsp.status
            with lock:
                latencies.append(took)
        conn.close()

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return latencies, time.perf_counter() - start


def percentiles(lat: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms."""
    lat = sorted(lat)
    return statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


NGINX_CONF = """worker_processes 1;
{user}daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {root}/nginx-tmp; proxy_temp_path {root}/nginx-tmp;
  fastcgi_temp_path {root}/nginx-tmp; uwsgi_temp_path {root}/nginx-tmp;
  scgi_temp_path {root}/nginx-tmp;
  server {{ listen 127.0.0.1:{port}; root {files}; }}
}}
"""


def nginx_anchor(root: Path, files: Path, name: str) -> tuple[float, float] | None:
    """nginx (sendfile on) serving the same file: best single and 20-concurrent times, or
    None when nginx is not installed (``apt-get install nginx-light``)."""
    binary = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if binary is None:
        return None
    from tests.peers import free_port

    port = free_port()
    (root / "nginx-tmp").mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    # workers read the file as we do (the temporary folder is ours alone)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, root=root, port=port, files=files))
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/{name}"
        cmd = ["curl", "-sf", "-o", "/dev/null", "--noproxy", "*", url]
        for _ in range(100):  # bounded: 100 x 50 ms
            if subprocess.run([*cmd[:-1], "-I", url], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        timed(cmd)  # warm-up
        single = min(timed(cmd) for _ in range(3))
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd) for _ in range(20)]
        assert all(p.wait() == 0 for p in procs)
        return single, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(10)


def raw_sendfile_ceiling(path: Path) -> float:
    """A bare socket server that answers any request with a minimal header and
    ``os.sendfile`` of the whole file (no HTTP parsing, no framework), timed like the
    others. Best of 3, in seconds."""
    size = path.stat().st_size
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            conn, _ = srv.accept()
            with conn, path.open("rb") as f:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
                )
                offset = 0
                while offset < size:
                    sent = os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent

    t = threading.Thread(target=run, daemon=True)
    t.start()
    cmd = ["curl", "-sf", "-o", "/dev/null", "--noproxy", "*", f"http://127.0.0.1:{port}/x"]
    timed(cmd)  # warm-up
    best = min(timed(cmd) for _ in range(3))
    stop.set()
    srv.close()
    return best


def start_server(url: str, tmp: str, zero_copy: bool) -> tuple[mp.process.BaseProcess, int]:
    """The portal in its own process (``serve``), once it accepts connections."""
    from tests.peers import free_port

    port = free_port()
    proc = mp.get_context("spawn").Process(
        target=serve, args=(url, tmp, port, zero_copy), daemon=True
    )
    proc.start()
    for _ in range(200):  # bounded: 200 x 50 ms
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument(
        "--rounds", type=int, default=20, help="code checks per client (per rate with --rate)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[],
        metavar="R",
        help="also run the code checks open loop, arriving at R per second in all (several "
        "rates: one run each; keep rounds x clients x runs under 10,000 a minute)",
    )
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="courier-bench-portal-") as tmp:
        root = Path(tmp)
        url, _, _, session = setup(root, args.size_mb, 0, database(root, args.db))
        checks = args.clients * args.rounds
        links = code_grants(url, checks * (1 + len(args.rate)))
        part = root / "packages" / "BENCH" / "BENCH.zip"
        plain, plain_port = start_server(url, tmp, zero_copy=False)
        timed(curl(plain_port, session))  # warm-up
        plain_s = min(timed(curl(plain_port, session)) for _ in range(3))
        plain.terminate()
        plain.join(10)
        proc, port = start_server(url, tmp, zero_copy=True)
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
        nginx = nginx_anchor(root, part.parent, part.name)
        raw_s = raw_sendfile_ceiling(part)
        closed = code_checks(port, links[:checks], args.clients)
        opened = [
            (rate, code_checks(port, links[checks * (i + 1) :][:checks], args.clients, rate))
            for i, rate in enumerate(args.rate)
        ]
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
        f"uvicorn's own body path:   {gbps(plain_s):6.2f} GB/s (single; zero-copy off) = "
        f"{plain_s / single_s:.2f}x slower"
    )
    print(
        f"bare sendfile server:      {gbps(raw_s):6.2f} GB/s single = "
        f"{cat_s / raw_s * 100:5.1f}% of cat (no HTTP stack); Courier = {raw_s / single_s:.2f}x it"
    )
    if nginx is None:
        print("nginx:                     not installed (apt-get install nginx-light)")
    else:
        print(
            f"nginx, sendfile on:        {gbps(nginx[0]):6.2f} GB/s single = "
            f"{cat_s / nginx[0] * 100:5.1f}% of cat; Courier = {nginx[0] / single_s:.2f}x nginx; "
            f"20 concurrent {20 * size / nginx[1] / 1e9:.2f} GB/s"
        )
    print(
        f"server RSS: idle {idle_kb / 1024:.0f} MB, peak single {one.peak / 1024:.0f} MB, "
        f"peak with 20 downloads {many.peak / 1024:.0f} MB"
    )
    lat, wall = closed
    p50, p99 = percentiles(lat)
    print(
        f"code check, closed loop, {args.clients} clients, {len(lat)} checks: "
        f"{len(lat) / wall:.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms   (target p99 < 100 ms)"
    )
    for rate, (lat, wall) in opened:
        p50, p99 = percentiles(lat)
        print(
            f"code check, open loop at {rate:g}/s, {args.clients} clients, {len(lat)} checks: "
            f"{len(lat) / wall:.0f}/s done, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )


if __name__ == "__main__":
    main()
