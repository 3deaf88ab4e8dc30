"""Opening the node's store from the command line and from ``courier serve``.

Kept apart from :mod:`node.app` (the composition root, which imports the SCP, the web
app, the scheduler and the rest) so that a CLI command that only reads or writes the
index database imports SQLAlchemy and the store, and nothing else (:mod:`node.cli`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from node.config import Config, ConfigError
from store.content import DIR_MODE, FILE_MODE, ContentStore
from store.db import database_url, make_engine, make_sessions, migrate

#: Prometheus counters of every process of the node, under node.data_dir (cleared at start).
METRICS_DIR = "metrics"
#: The node's status (node.status), under node.data_dir.
STATUS_FILE = "status.json"
#: The rules the node process accepted (node.rulebook), under node.data_dir.
RULES_RECORD = "rules-accepted"


def store_url(cfg: Config) -> str:
    """The index database's URL for ``cfg``; raises ConfigError when it cannot be read."""
    base = cfg.source.parent if cfg.source else Path.cwd()
    try:
        return database_url(cfg.store, cfg.data_dir, base)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"{cfg.source}: {exc}"]) from None


def shared_database(url: str) -> bool:
    """True when other nodes may use the database too (PostgreSQL; SQLite is one node)."""
    return make_url(url).get_backend_name() == "postgresql"


def metrics_dir(cfg: Config, url: str) -> Path:
    """This node's Prometheus folder: ``<data_dir>/metrics``, or ``metrics/<node.name>``
    when nodes share the data directory (each clears its own at start)."""
    base = cfg.data_dir / METRICS_DIR
    return base / cfg.node.name if shared_database(url) else base


def rules_record(cfg: Config, url: str) -> Path:
    """This node's record of the rules it accepted (:mod:`node.rulebook`):
    ``<data_dir>/rules-accepted.json``, or ``rules-accepted/<node.name>.json`` when nodes
    share the data directory (each node's receivers follow their own node)."""
    if shared_database(url):
        return cfg.data_dir / RULES_RECORD / f"{cfg.node.name}.json"
    return cfg.data_dir / f"{RULES_RECORD}.json"


def status_path(cfg: Config, url: str) -> Path:
    """This node's status file (:mod:`node.status`): ``<data_dir>/status.json``, or
    ``status/<node.name>.json`` when nodes share the data directory (each its own)."""
    if shared_database(url):
        return cfg.data_dir / "status" / f"{cfg.node.name}.json"
    return cfg.data_dir / STATUS_FILE


def node_content(cfg: Config, url: str) -> ContentStore:
    """This node's content store: with a shared database (several nodes may share the
    data directory) its spool is ``spool/<node.name>``, so the start-up sweep removes
    this node's leftovers and never another node's receive in progress."""
    return ContentStore(cfg.data_dir, cfg.node.name if shared_database(url) else None)


def open_store(cfg: Config) -> tuple[Engine, sessionmaker[Session], ContentStore]:
    """Engine (migrated), session factory and content store for ``cfg``."""
    url = store_url(cfg)
    engine = make_engine(
        url, busy_timeout_s=cfg.store.busy_timeout_s, pool_size=cfg.store.pool_size
    )
    migrate(engine)
    content = node_content(cfg, url)
    content.prepare()
    return engine, make_sessions(engine), content


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, owner-only (as all of node.data_dir),
    through a temporary file of its own beside it; makes the folder if missing. Raises
    OSError (nothing half-written is left under either name)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
