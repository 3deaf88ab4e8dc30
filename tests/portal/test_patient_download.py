"""Downloads: Range resumes a broken download, completion is recorded once every byte
went out, and 20 parallel Range downloads through a real uvicorn keep memory flat."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

from portal.grantsession import SESSION_COOKIE, start_session
from store.models import Grant, Package
from tests.peers import free_port
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig, sign_in

MB = 1024 * 1024

# The rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package


def _part(rig: Rig) -> dict[str, object]:
    part: dict[str, object] = json.loads(rig.package.parts)[0]
    return part


def test_a_broken_download_resumes_with_range(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    sign_in(rig, c, p.token)
    part = _part(rig)
    url = f"/files/package/{part['name']}"
    size = int(str(part["size"]))
    head = c.head(url)
    assert head.status_code == 200 and head.headers["accept-ranges"] == "bytes"
    first = c.get(url, headers={"Range": f"bytes=0-{size // 2 - 1}"})
    assert first.status_code == 206
    assert rig.grant(p.grant_id).downloads == 0  # not complete yet
    rest = c.get(url, headers={"Range": f"bytes={size // 2}-"})
    assert rest.status_code == 206 and rest.headers["cache-control"] == "no-store"
    assert hashlib.sha256(first.content + rest.content).hexdigest() == part["sha256"]
    assert rig.grant(p.grant_id).downloads == 1
    assert c.get(url, headers={"Range": f"bytes={size + 10}-"}).status_code == 416
    assert c.get("/files/package/..%2Fsecret.zip").status_code == 404


def test_downloads_need_a_session(rig: Rig) -> None:
    rig.patient()
    part = _part(rig)
    r = rig.client().get(f"/files/package/{part['name']}")
    assert r.status_code == 401 and b"PK" not in r.content[:2]


def _big_package(rig: Rig, grant_id: int, tmp: Path, size: int) -> tuple[str, str]:
    folder = tmp / "big"
    folder.mkdir()
    data = hashlib.sha256(b"seed").digest() * (MB // 32)
    digest = hashlib.sha256()
    with (folder / "BIG.zip").open("wb") as f:
        for _ in range(size // MB):
            f.write(data)
            digest.update(data)
    with rig.db.sessions() as s, s.begin():
        pkg = Package(
            request_id=rig.grant(grant_id).request_id,
            folder="../" + str(folder.relative_to(tmp.parent)),
            parts=json.dumps([{"name": "BIG.zip", "size": size, "sha256": digest.hexdigest()}]),
            studies=1,
            instances=1,
            size_bytes=size,
            built_at=rig.clock(),
        )
        s.add(pkg)
        s.flush()
        grant = s.get(Grant, grant_id)
        assert grant is not None
        grant.package_id = pkg.id
        token = start_session(s, grant, rig.clock())
    return token, digest.hexdigest()


def test_twenty_parallel_range_downloads_keep_memory_flat(rig: Rig, tmp_path: Path) -> None:
    p = rig.patient()
    size = 32 * MB
    rig.ctx.package_dir = tmp_path / "packages"
    rig.ctx.package_dir.mkdir()
    session, _digest = _big_package(rig, p.grant_id, rig.ctx.package_dir, size)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(rig.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded: 200 x 50 ms
        if server.started:
            break
        thread.join(0.05)
    assert server.started
    whole = (Path(rig.ctx.package_dir) / "big" / "BIG.zip").read_bytes()
    expected = [hashlib.sha256(whole[i * 1000 :]).hexdigest() for i in range(20)]
    del whole  # digests computed up front: the client holds no file while measured

    def fetch(i: int) -> bool:
        start = i * 1000
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(
            "GET",
            "/files/package/BIG.zip",
            headers={"Cookie": f"{SESSION_COOKIE}={session}", "Range": f"bytes={start}-"},
        )
        rsp = conn.getresponse()
        assert rsp.status == 206
        h = hashlib.sha256()
        while chunk := rsp.read(256 * 1024):
            h.update(chunk)
        conn.close()
        return h.hexdigest() == expected[i]

    try:
        tracemalloc.start()
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(fetch, range(20)))
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        server.should_exit = True
        thread.join(10)
    assert all(results)
    # 20 x 32 MB went out; a server holding whole files would peak far above 640 MB.
    # Read in 1 MiB chunks, the peak stays within a few chunks per download.
    assert peak < 64 * MB, f"peak {peak / MB:.0f} MB"
    # One session, 20 ranges from 0, 1000, ... to the end: the whole file once (the
    # first to finish after bytes=0- starts a new tally that never reaches byte 0).
    assert rig.grant(p.grant_id).downloads == 1
