"""The running node's health, for ``courier status`` (and, later, the staff page).

``courier serve`` rewrites ``<data_dir>/status.json`` (``status/<node.name>.json`` when
nodes share the data directory) atomically on every sweep: its
pid, ports, a heartbeat, and whether the last rules reload failed (the running rules
stay in force then, and staff must hear of it). ``courier status`` reads that file and
counts studies and requests by state in the database. Nothing here holds patient data:
a rules error names files, lines and rule names only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from node.stores import replace_file
from store.catalog import guarded
from store.models import ReleaseRequest, Study, utcnow


class StatusFile:
    """Writes and reads the node's status file."""

    def __init__(self, path: Path, clock: Callable[[], datetime] = utcnow) -> None:
        """``path``: :func:`node.stores.status_path` (one file per node)."""
        self.path = path
        self._clock = clock
        self._started = clock()

    def write(self, **fields: Any) -> None:
        """Replace the file with ``fields`` plus pid, start time and heartbeat."""
        record = {
            "pid": os.getpid(),
            "started_at": self._started.isoformat(),
            "heartbeat_at": self._clock().isoformat(),
            **fields,
        }
        replace_file(self.path, json.dumps(record, indent=2))

    def clear(self) -> None:
        """Say the node stopped cleanly (keeps the last rules state for the record)."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        record["stopped_at"] = self._clock().isoformat()
        replace_file(self.path, json.dumps(record, indent=2))


def read_status(
    path: Path,
    sessions: sessionmaker[Session],
    *,
    stale_after_s: float,
    clock: Callable[[], datetime] = utcnow,
) -> dict[str, Any]:
    """The node's status (its file at ``path``, :func:`node.stores.status_path`):
    ``running``, ``rules_error``, counts by state, ``healthy``."""
    try:
        node: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        node = {}
    beat = node.get("heartbeat_at")
    running = bool(
        beat
        and "stopped_at" not in node
        and clock() - datetime.fromisoformat(beat) <= timedelta(seconds=stale_after_s)
    )
    with guarded(sessions) as s:
        studies = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
        requests = dict(
            s.execute(
                select(ReleaseRequest.state, func.count()).group_by(ReleaseRequest.state)
            ).all()
        )
    rules_error = node.get("rules_error")
    return {
        "running": running,
        "healthy": running and not rules_error,
        "node": node,
        "rules_error": rules_error,
        "studies": studies,
        "requests": requests,
    }


def status_text(status: dict[str, Any]) -> str:
    """The human form of :func:`read_status`'s result."""
    node = status["node"]
    if status["running"]:
        head = (
            f"node running (pid {node.get('pid')}, since {node.get('started_at')}, "
            f"scp port {node.get('scp_port')}, web port {node.get('web_port') or '-'})"
        )
    elif node.get("stopped_at"):
        head = f"node stopped at {node['stopped_at']}"
    elif node:
        head = f"node NOT RUNNING: last heartbeat {node.get('heartbeat_at')} (crashed or hung?)"
    else:
        head = "node not started yet (no status file): run `courier serve`"
    lines = [head]
    if status["rules_error"]:
        lines += [
            "RULES RELOAD FAILED: the previous rules are still in force. Fix and save again:",
            *("  " + line for line in str(status["rules_error"]).splitlines()),
        ]
    elif node:
        lines.append(f"rules: {node.get('rules_count', '?')} in force")
    for name in ("studies", "requests"):
        counts = status[name]
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        lines.append(f"{name}: {shown}")
    return "\n".join(lines)
