"""Shared fixtures: databases (SQLite and PostgreSQL, each test isolated), an
in-process SCP, and a node run as a real ``courier serve`` subprocess.

Peers that are missing skip their tests, unless ``COURIER_REQUIRE_PEERS=1`` (CI), where
they fail instead: nothing is silently skipped in CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scp import spool  # noqa: E402
from scp.ingest import Ingest  # noqa: E402
from scp.server import start_server  # noqa: E402
from scp.settings import ScpSettings  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.content import ContentStore  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from tests.dcmtk import have_dcmtk  # noqa: E402
from tests.orthanc import have_orthanc  # noqa: E402
from tests.peers import free_port  # noqa: E402
from tests.peers import require_peer as need  # noqa: E402
from tests.scu import close_socket  # noqa: E402

PG_URL = os.environ.get("COURIER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
COURIER = REPO / ".venv" / "bin" / "courier"


def have_postgres() -> bool:
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


@dataclass
class Database:
    """A migrated, isolated database for one test."""

    kind: str
    url: str
    schema: str | None
    engine: Engine
    sessions: sessionmaker[Session]

    def yaml_url(self) -> str:
        return self.url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Each test once on SQLite and once on PostgreSQL (own schema, dropped after)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
        engine = make_engine(url)
        schema = None
    else:
        need("postgresql", have_postgres())
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        url = PG_URL
        engine = make_engine(url, schema=schema)
    migrate(engine)
    yield Database(request.param, url, schema, engine, make_sessions(engine))
    engine.dispose()
    if schema:
        admin = create_engine(PG_URL)
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class LocalScp:
    """An SCP running in this process on a free loopback port."""

    port: int
    content: ContentStore
    db: Database
    catalog: Catalog
    ingest: Ingest
    server: Any
    settings: ScpSettings

    def rows(self) -> int:
        from sqlalchemy import func, select

        from store.models import Instance

        with self.db.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)

    def spool_files(self) -> list[Path]:
        """Datasets in the spool (arriving or left behind): not the pool's empty files."""
        files = [p for p in self.content.spool.iterdir() if p.is_file()]
        ready = spool.ready_names()  # after listing: a file then in the pool still is
        return sorted(p for p in files if str(p) not in ready)


def spool_leftovers(data_dir: Path) -> list[Path]:
    """Datasets in a node's spool (arriving or left behind). A running node's receivers
    keep a few empty spool files ready (scp.spool's pool): a dataset's file is never
    empty (its preamble and File Meta Information are written first)."""
    found = []
    for p in (data_dir / "spool").rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # handed out and placed meanwhile
            if p.is_file() and p.stat().st_size > 0:
                found.append(p)
    return sorted(found)


def start_local_scp(db: Database, root: Path, **overrides: Any) -> LocalScp:
    fault = overrides.pop("spool_fault", None)
    settings = ScpSettings(**{"ae_title": "COURIER", "port": 11112, **overrides})
    content = ContentStore(root)
    content.prepare()
    spool.install(content.spool, fault)
    catalog = Catalog(db.sessions)
    ingest = Ingest(content, catalog)
    server = start_server(settings, ingest, port=0)
    return LocalScp(int(server.server_address[1]), content, db, catalog, ingest, server, settings)


@pytest.fixture
def local_scp(db: Database, tmp_path: Path) -> Iterator[LocalScp]:
    """A Storage SCP in-process (fast; lets a test inject faults)."""
    scp = start_local_scp(db, tmp_path / "data")
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


@dataclass
class NodeProcess:
    """``courier serve`` running as a subprocess."""

    proc: subprocess.Popen[bytes]
    config: Path
    data_dir: Path
    port: int
    log: Path
    env: dict[str, str]
    web_port: int = 0

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def write_config(
    path: Path,
    data_dir: Path,
    port: int,
    db: Database | None = None,
    extra_scp: str = "",
    extra: str = "",
    web_port: int | None = None,
    extra_portal: str = "",
) -> None:
    lines = [
        "node:",
        f"  data_dir: {data_dir}",
        "scp:",
        "  ae_title: COURIER",
        "  host: 127.0.0.1",
        f"  port: {port}",
    ]
    lines += [f"  {x}" for x in extra_scp.splitlines() if x.strip()]
    if db is not None:
        lines += ["store:", "  database_url_env: COURIER_TEST_DB_URL"]
    # Every test node serves its web app on a port of its own.
    lines += ["portal:", "  host: 127.0.0.1", f"  port: {web_port or free_port()}"]
    lines += [f"  {x}" for x in extra_portal.splitlines() if x.strip()]
    path.write_text("\n".join(lines) + "\n" + extra)


def start_node(
    tmp: Path,
    db: Database | None = None,
    extra_scp: str = "",
    env: dict[str, str] | None = None,
    wait: bool = True,
    extra: str = "",
    web_port: int | None = None,
    extra_portal: str = "",
) -> NodeProcess:
    """Start ``courier serve`` on a free port and wait until it answers C-ECHO."""
    port = free_port()
    web_port = web_port or free_port()
    data_dir = tmp / "node-data"
    config = tmp / "node.yaml"
    write_config(config, data_dir, port, db, extra_scp, extra, web_port, extra_portal)
    full_env = dict(os.environ)
    if db is not None:
        url = db.url
        if db.schema:
            url = f"{db.url}?options=-csearch_path%3D{db.schema}"
        full_env["COURIER_TEST_DB_URL"] = url
    full_env.update(env or {})
    log = tmp / "node.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(COURIER), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    node = NodeProcess(proc, config, data_dir, port, log, full_env, web_port)
    if wait:
        wait_for_echo(port, proc)
        wait_for_port(web_port, proc)
    return node


def wait_for_port(port: int, proc: subprocess.Popen[bytes], rounds: int = 200) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port`` (the node's web
    app starts on a thread of its own, after the DICOM side may already answer)."""
    import socket

    for _ in range(rounds):  # bounded: rounds x 50 ms
        if proc.poll() is not None:
            return  # it died: the test's own checks will say why
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


def echo_ok(port: int, calling: str = "ECHOSCU", called: str = "COURIER") -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and int(status.Status) == 0
    finally:
        close_socket(assoc)


def wait_for_echo(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            if echo_ok(port):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("node did not answer C-ECHO in time")


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    """Start real ``courier serve`` processes; all are stopped after the test."""
    started: list[NodeProcess] = []

    def make(db: Database | None = None, **kw: Any) -> NodeProcess:
        node = start_node(tmp_path, db, **kw)
        started.append(node)
        return node

    yield make
    for n in started:
        n.stop()


__all__ = ["free_port", "have_dcmtk", "have_orthanc", "need"]


def start_shared_node(
    tmp: Path,
    db: Database,
    data_dir: Path,
    name: str,
    *,
    role: str = "all",
    extra_scp: str = "",
    extra: str = "",
) -> NodeProcess:
    """Start ``courier serve --role ROLE`` as node ``name``, sharing ``db`` (its schema)
    and ``data_dir`` with the other nodes started so; its config and log are under
    ``tmp/name``. Waits for C-ECHO when the role receives."""
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    port, web_port = free_port(), free_port()
    config = home / "node.yaml"
    write_config(config, data_dir, port, db, extra_scp, extra, web_port)
    text_ = config.read_text().replace("node:\n", f"node:\n  name: {name}\n", 1)
    config.write_text(text_)
    full_env = dict(os.environ)
    url = db.url
    if db.schema:
        url = f"{db.url}?options=-csearch_path%3D{db.schema}"
    full_env["COURIER_TEST_DB_URL"] = url
    log = home / "node.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(COURIER), "serve", "--role", role, "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    node = NodeProcess(proc, config, data_dir, port, log, full_env, web_port)
    if role in ("all", "scp"):
        wait_for_echo(port, proc)
    return node
