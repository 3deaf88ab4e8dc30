"""One receiving process: the Storage SCP alone (``python -m node.receiver CONFIG``).

``courier serve`` starts ``scp.workers`` of these (:class:`node.receivers.Receivers`)
and runs everything else itself: the web app, the sweeps, the scheduler and the
relay, the RIS listener, the audit shipping. A receiving process imports what
receiving needs and nothing more: pynetdicom and the SCP, the header walk and ingest,
the catalog (SQLAlchemy and the models), the rules (the screen applies them to each
instance: it compiles the version the node process accepted, node.rulebook),
telemetry, and node.yaml's schema.
Not the web app, the scheduler, the channels, packaging or the imaging renderer
(``tests/test_receiver.py`` holds that, on ``sys.modules``).

**pydicom without its pixel stack** (:mod:`imaging.nopixels`): nothing here decodes
pixels (the header walk reads the declared size from the header), so pydicom is
imported without numpy, Pillow, requests and the decoder plugins, about 40 MB.

With the parent (:class:`node.receivers.Receivers`):

- argv: the node.yaml path and the parent's pid. The process loads the file, opens
  its own engine on the index database and counts into the node's metrics folder
  (``PROMETHEUS_MULTIPROC_DIR``, set and cleared by the parent before it starts
  receivers), so ``/metrics`` in the parent sums every receiver.
- It writes one line, ``listening``, on stdout once its ports listen; the parent waits
  for that line before it says the node is ready. A process that cannot listen logs
  why and exits 1 without writing it.
- SIGTERM: stop listening and exit 0. SIGHUP: take up the rules the node accepted.
  SIGINT is ignored (a terminal's Ctrl-C reaches the whole process group; the parent
  decides). It dies with
  the parent, even one killed by ``kill -9`` (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging.nopixels import import_pydicom_without_pixels

if TYPE_CHECKING:
    from node.config import Config
    from node.rulebook import Rulebook

log = logging.getLogger("courier.node.receiver")

#: What SQLite keeps in a receiving process (every connection's page cache) before it
#: reuses its own memory rather than take more. By default each pooled connection's
#: cache grows to 2 MB; the index's pages stay in the kernel's file cache anyway.
SQLITE_HEAP_BYTES = 512 * 1024

#: The line a receiving process writes on stdout once it listens.
READY = b"listening\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one receiving process until SIGTERM; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    done = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m node.receiver NODE_YAML PARENT_PID", file=sys.stderr)
        return 2
    _die_with_parent(int(args[1]))
    _one_malloc_arena()
    import_pydicom_without_pixels()
    share_status_tables()

    from node.config import ConfigError, load_config
    from node.logs import setup_logging

    try:
        # The rules are not compiled from the files here: the node's record is (start).
        cfg = load_config(Path(args[0]), compile_rules=False)
    except ConfigError as exc:
        print(f"courier receiver: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(os.environ.get("COURIER_LOG_LEVEL", "INFO"), cfg.node.log_format)
    try:
        server, rulebook = start(cfg)
    except Exception as exc:  # logged here: the parent only sees the exit status
        log.error("receiving process cannot start: %s", _reason(exc))
        return 1
    signal.signal(signal.SIGHUP, lambda *_: rulebook.reload_requested.set())
    if reload.is_set():  # a SIGHUP while starting
        rulebook.reload_requested.set()
    # What start-up made (pydicom's dictionaries, SQLAlchemy, the schema: ~190k objects)
    # lives as long as the process: out of every later collection, or one full
    # collection of them (~100 ms) stalls a receiving thread mid-push.
    gc.collect()
    gc.freeze()
    os.write(sys.stdout.fileno(), READY)
    done.wait()
    server.shutdown()
    server.server_close()
    return 0


def start(cfg: Config) -> tuple[Any, Rulebook]:
    """Open the store and start the SCP for ``cfg``; returns the server and the rules.

    The parent has migrated the database, recovered the spool and cleared the metrics
    folder before it starts any receiver.
    """
    from node.stores import metrics_dir, node_content, rules_record, store_url

    url = store_url(cfg)
    with _the_other_dialect_unloaded(url):  # store.models is imported here
        from scp.commitment_scp import StorageCommitmentScp
        from store.catalog import Catalog
    from sqlalchemy import event

    from node.rulebook import Rulebook
    from scp import spool
    from scp.ingest import Ingest, orphan_after_s
    from scp.screen import RuleScreen
    from scp.server import start_server
    from store.db import make_engine, make_sessions
    from telemetry import metrics

    metrics.configure(metrics_dir(cfg, url))  # the parent cleared it
    engine = make_engine(
        url, busy_timeout_s=cfg.store.busy_timeout_s, pool_size=cfg.store.pool_size
    )
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _bound_sqlite_memory)
    sessions = make_sessions(engine)
    content = node_content(cfg, url)
    spool.install(content.spool)
    # The node process decided the version and recorded it: compile that one.
    rulebook = Rulebook(cfg, role="follow", record=rules_record(cfg, url))
    ingest = Ingest(
        content,
        Catalog(sessions),
        RuleScreen(rulebook.current),
        max_pixels=cfg.scp.max_pixels,
        orphan_after_s=orphan_after_s(cfg.store.busy_timeout_s),
    )
    commitment = StorageCommitmentScp(cfg.scp, sessions, content)
    server = start_server(
        cfg.scp, ingest, workers=cfg.scp.workers, data_dir=cfg.data_dir, commitment=commitment
    )
    return server, rulebook


class _UnusedDialect:
    """Stands in for the index database's other dialect while :mod:`store.models` is
    defined: ``construct_arguments`` None accepts its ``<dialect>_where`` index options
    unchecked, as SQLAlchemy does for any dialect that declares none."""

    construct_arguments = None


@contextlib.contextmanager
def _the_other_dialect_unloaded(url: str) -> Iterator[None]:
    """While the body imports :mod:`store.models`, the dialect ``url`` does not use
    (PostgreSQL on SQLite, SQLite on PostgreSQL) is not imported.

    The models give a partial index its WHERE for both databases (``sqlite_where``,
    ``postgresql_where``), and SQLAlchemy imports each named dialect to check its
    options: on SQLite the PostgreSQL dialect and its five drivers' modules, ~2.3 MB
    that a receiving process, bound to one database, never uses (the index is made by
    the migrations; this process compiles no DDL). Nothing is done when the models are
    imported already or the backend is neither.
    """
    from sqlalchemy.dialects import registry
    from sqlalchemy.engine import make_url

    other = {"sqlite": "postgresql", "postgresql": "sqlite"}.get(make_url(url).get_backend_name())
    if other is None or "store.models" in sys.modules:
        yield
        return
    registry.register(other, __name__, _UnusedDialect.__name__)
    try:
        yield
    finally:
        registry.deregister(other)


def _bound_sqlite_memory(dbapi_conn: Any, _record: Any) -> None:
    """SQLite may keep :data:`SQLITE_HEAP_BYTES` in this process (the limit is
    process-wide, set again by each new connection)."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA soft_heap_limit={SQLITE_HEAP_BYTES}")
    cur.close()


def _reason(exc: Exception) -> str:
    """A short reason for a start-up failure (an OSError's own words, e.g. the port is
    in use; otherwise the exception's type and text)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (scp.port, scp.tls_port and scp.host say where it listens)"
    return f"{type(exc).__name__}: {exc}"


def share_status_tables() -> None:
    """Make pynetdicom's status tables share their equal keys and values; call it early.

    ``pynetdicom.status`` spells out each service's ranges (0xC000-0xCFFF and more) as
    one new ``(category, text)`` tuple and one new int per code, ~3.5 MB over its
    tables, though a handful of distinct values repeat. Each table is refilled in place
    (same dict, same items, same order) with one object per distinct key and value.
    Done right after pydicom's import, what it frees is reused by the imports that
    follow: ~2.3 MB less in a receiving process.
    """
    from pynetdicom import status

    keys: dict[int, int] = {}
    values: dict[tuple[str, str], tuple[str, str]] = {}
    for name, table in vars(status).items():
        if name.endswith("_STATUS") and isinstance(table, dict):
            shared = {keys.setdefault(k, k): values.setdefault(v, v) for k, v in table.items()}
            table.clear()
            table.update(shared)


def _one_malloc_arena() -> None:
    """glibc: every thread allocates from the main heap (``M_ARENA_MAX`` 1), as set
    before any thread starts. By default each association's threads get arenas of their
    own, which keep what they held once the association ends: 1.5-2 MB more at the
    peak of a push. Python threads allocate under the GIL anyway, so they do not
    contend for the one arena. Nothing happens where libc is not glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _die_with_parent(parent: int) -> None:
    """Linux: get SIGKILL when the parent dies, even by kill -9 (no orphan receivers).
    Exits at once when ``parent`` is gone already (it died before the flag was set)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
