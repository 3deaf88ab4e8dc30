"""The running rules, reloaded when their file changes or on SIGHUP: one version for
the node process and every receiving process.

A reload re-reads node.yaml (and its ``rules_file``) whole. If the new rules are
invalid the running rules stay in force, the failure is logged and kept in
``last_error`` (for ``courier status``, the staff page and a staff alert).

**One version in force.** The node process *leads*: it alone loads the files and
decides which version is accepted, and records it in ``<data_dir>/rules-accepted.json``:
the text the rules were compiled from (the rules file, or node.yaml for inline
``rules:``), its SHA-256 and the rule count. A receiving process *follows*: it compiles
exactly that text and never reads the files itself. When the two polled the files on
their own, an admin who saved twice within a second (the second save broken) left the
receivers rejecting with the newer rules while the node matched, and ``courier status``
reported, with the older ones, for as long as the file stayed broken. A follower lags
the node by at most one check (about a second).

The leader's load is *verified*: the files are read before and after it, and a version
that changed while it was loaded is not taken up (the next check loads it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.config import Config, ConfigError, load_config
from rules import RuleSet, RuleSyntaxError, load_rules_from_data, load_rules_text
from rules.source import YamlSourceError, read_yaml_text
from store.content import FILE_MODE

log = logging.getLogger("courier.node.rules")

#: In node.data_dir: the version of the rules the node process accepted.
ACCEPTED_FILE = "rules-accepted.json"

Role = Literal["lead", "follow"]


class Rulebook:
    """Holds the current :class:`RuleSet`; ``current()`` is cheap and thread-safe.

    ``role="lead"`` (the node process) loads changed files and records what it
    accepted; ``role="follow"`` (a receiving process) takes up only that version.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        role: Role = "lead",
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert cfg.source is not None, "load the config from a file"
        self._config_path = cfg.source
        self._rules_path = cfg.rules_path
        self._accepted_path = cfg.data_dir / ACCEPTED_FILE
        self._role = role
        self._ruleset = cfg.ruleset
        self._stamps = self._read_stamps()
        self._check_every = check_every_s
        self._clock = clock
        self._next_check = clock() + check_every_s
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reload_requested = threading.Event()
        # The digest of the version in force: None while a follower runs on the rules
        # it loaded at its start (no record from the node yet, or none it could use).
        self.digest: str | None = None
        self._accepted_stamp: tuple[int, int, int] | None = None
        if role == "lead":
            # Load once more, verified, so the record names exactly what is in force.
            self._accepted_path.unlink(missing_ok=True)
            self.reload(quiet=True)
        else:
            self._follow(quiet=True)  # the node recorded its version before starting us

    def current(self) -> RuleSet:
        """The rules in force, after a throttled check for a new version."""
        now = self._clock()
        if now >= self._next_check or self.reload_requested.is_set():
            self._next_check = now + self._check_every
            if self._role == "follow":
                self.reload_requested.clear()
                self._follow()
            elif self.reload_requested.is_set() or self._read_stamps() != self._stamps:
                self.reload_requested.clear()
                self.reload()
        return self._ruleset

    def reload(self, *, quiet: bool = False) -> bool:
        """Load the rules again; on error keep the running ones. Returns success.

        A follower reloads only to the version the node accepted (:meth:`current`).
        """
        if self._role == "follow":
            return self._follow()
        with self._lock:
            self._stamps = self._read_stamps()
            try:
                loaded = self._load()
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error("rules reload failed; the running rules stay in force:\n%s", exc)
                return False
            if loaded is None:
                self._stamps = ()  # saved again while read: load it next check
                return False
            cfg, accepted = loaded
            self._rules_path = cfg.rules_path
            self._stamps = self._read_stamps()
            self._ruleset = cfg.ruleset
            self.digest = accepted.digest
            self.last_error = None
            accepted.write(self._accepted_path, len(cfg.ruleset))
            if not quiet:
                log.info("rules reloaded: %d rules", len(cfg.ruleset))
            return True

    def _follow(self, *, quiet: bool = False) -> bool:
        """Take up the version the node accepted, if it recorded a new one."""
        try:
            st = os.stat(self._accepted_path)
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._accepted_stamp:
            return False
        with self._lock:
            self._accepted_stamp = stamp
            record = _read_accepted(self._accepted_path)
            if record is None or record.digest == self.digest:
                return False
            try:
                ruleset = record.compile()
            except (RuleSyntaxError, YamlSourceError, KeyError, TypeError) as exc:
                log.error("the rules the node accepted do not compile here; keeping ours: %s", exc)
                return False
            self._ruleset = ruleset
            self.digest = record.digest
            if not quiet:
                log.info("rules taken up: %d rules", len(ruleset))
            return True

    def _load(self) -> tuple[Config, Accepted] | None:
        """node.yaml and its rules, and the record of them; None if saved meanwhile."""
        before = self._read_sources(self._rules_path)
        cfg = load_config(Path(self._config_path))
        after = self._read_sources(cfg.rules_path)
        if after != before:
            return None
        inline = cfg.rules is not None or cfg.rules_path is None
        path = self._config_path if inline else cfg.rules_path
        assert path is not None
        raw = after[1] if not inline else after[0]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else ""
        return cfg, Accepted.of(str(path), "node_yaml" if inline else "rules_file", text)

    def _read_sources(self, rules_path: Path | None) -> tuple[object, ...]:
        """The bytes of node.yaml and the rules file (or why they cannot be read)."""
        out: list[object] = []
        for p in (self._config_path, rules_path):
            try:
                out.append(Path(p).read_bytes() if p is not None else None)
            except OSError as exc:
                out.append((str(p), exc.errno))
        return tuple(out)

    def _read_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for p in (self._config_path, self._rules_path):
            try:
                st = os.stat(p) if p is not None else None
                stamps.append(None if st is None else (st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)


@dataclass(frozen=True)
class Accepted:
    """A version of the rules the node accepted: the text compiled and where it was."""

    source: str
    kind: Literal["rules_file", "node_yaml"]
    text: str
    digest: str
    count: int = 0

    @classmethod
    def of(cls, source: str, kind: Literal["rules_file", "node_yaml"], text: str) -> Accepted:
        digest = hashlib.sha256(f"{kind}\0{source}\0{text}".encode()).hexdigest()
        return cls(source, kind, text, digest)

    def compile(self) -> RuleSet:
        """The rules, exactly as the node compiled them (raises as the loader does)."""
        if self.kind == "rules_file":
            return load_rules_text(self.text, self.source)
        doc = read_yaml_text(self.text, self.source)
        data = doc.data if isinstance(doc.data, dict) else {}
        if data.get("rules") is None:
            return RuleSet([])
        return load_rules_from_data(data["rules"], doc, at=("rules",))

    def write(self, path: Path, count: int) -> None:
        """Replace the record atomically (owner-only, as all of node.data_dir)."""
        record = {"sha256": self.digest, "rules": count, "kind": self.kind}
        record |= {"source": self.source, "text": self.text}
        tmp = path.with_suffix(".tmp")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(record))
            os.replace(tmp, path)
        except OSError as exc:  # the receivers keep their rules; say why
            log.error("cannot record the accepted rules in %s: %s", path, exc.strerror)


def _read_accepted(path: Path) -> Accepted | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        kind = record["kind"]
        if kind not in ("rules_file", "node_yaml"):
            return None
        return Accepted(
            str(record["source"]),
            kind,
            str(record["text"]),
            str(record["sha256"]),
            int(record["rules"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
