"""The running rules, reloaded when their file changes or on SIGHUP.

A reload re-reads node.yaml (and its ``rules_file``) whole. If the new rules are
invalid the running rules stay in force, the failure is logged and kept in
``last_error`` (for ``courier status`` and, later, the staff page and a staff alert).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.config import Config, ConfigError, load_config
from rules import RuleSet

log = logging.getLogger("courier.node.rules")


class Rulebook:
    """Holds the current :class:`RuleSet`; ``current()`` is cheap and thread-safe."""

    def __init__(
        self,
        cfg: Config,
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert cfg.source is not None, "load the config from a file"
        self._config_path = cfg.source
        self._rules_path = cfg.rules_path
        self._ruleset = cfg.ruleset
        self._stamps = self._read_stamps()
        self._check_every = check_every_s
        self._clock = clock
        self._next_check = clock() + check_every_s
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reload_requested = threading.Event()

    def current(self) -> RuleSet:
        """The rules in force, after a throttled check for changed files."""
        now = self._clock()
        if now >= self._next_check or self.reload_requested.is_set():
            self._next_check = now + self._check_every
            if self.reload_requested.is_set() or self._read_stamps() != self._stamps:
                self.reload_requested.clear()
                self.reload()
        return self._ruleset

    def _read_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for p in (self._config_path, self._rules_path):
            try:
                st = os.stat(p) if p is not None else None
                stamps.append(None if st is None else (st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the rules again; on error keep the running ones. Returns success."""
        with self._lock:
            self._stamps = self._read_stamps()
            try:
                cfg = load_config(Path(self._config_path))
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error("rules reload failed; the running rules stay in force:\n%s", exc)
                return False
            self._rules_path = cfg.rules_path
            self._stamps = self._read_stamps()
            self._ruleset = cfg.ruleset
            self.last_error = None
            log.info("rules reloaded: %d rules", len(cfg.ruleset))
            return True
