"""The running rules, reloaded when their file changes or on SIGHUP: one version for
the node process and every receiving process.

A reload re-reads node.yaml (and its ``rules_file``) whole. If the new rules are
invalid the running rules stay in force, the failure is logged and kept in
``last_error`` (for ``courier status``, the staff page and a staff alert).

**One version in force.** The node process *leads*: it alone loads the files and
decides which version is accepted, and records it in ``<data_dir>/rules-accepted.json``
(``rules-accepted/<node.name>.json`` when nodes share the data directory:
:func:`node.stores.rules_record`): the text the rules were compiled from (the rules
file, or node.yaml for inline ``rules:``), its SHA-256 and the rule count. A version is
in force in the node only once its record is written. A receiving process *follows*: it
compiles exactly that text and never reads the files itself (it does not start without
a record). When the two polled the files on their own, an admin who saved twice within
a second (the second save broken) left the receivers rejecting with the newer rules
while the node matched, and ``courier status`` reported, with the older ones, for as
long as the file stayed broken. A follower lags the node by at most one check (about a
second; at once when the node signals it).

The leader's load is *verified*: the files are read before and after it, and a version
that changed while it was loaded is not taken up (it is loaded again at once, up to
:data:`LOAD_TRIES` times, then at the next check). When node.yaml names another rules
file, that file is read instead.
"""

from __future__ import annotations

import contextlib
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
from node.stores import replace_file
from rules import RuleSet, RuleSyntaxError, load_rules_from_data, load_rules_text
from rules.source import YamlSourceError, read_yaml_text

log = logging.getLogger("courier.node.rules")

Role = Literal["lead", "follow"]

#: How often a load that found the files changed while it read them is tried at once.
LOAD_TRIES = 3


class Rulebook:
    """Holds the current :class:`RuleSet`; ``current()`` is cheap and thread-safe.

    ``role="lead"`` (the node process) loads changed files and writes what it accepted
    to ``record`` (:func:`node.stores.rules_record`): it raises :class:`ConfigError` at
    start when the rules cannot be loaded, as ``courier serve`` would. ``role="follow"``
    (a receiving process) takes up only that record's version, and raises
    :class:`ConfigError` at start when there is none.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        record: Path,
        role: Role = "lead",
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert cfg.source is not None, "load the config from a file"
        self._config_path = cfg.source
        self._rules_path = cfg.rules_path
        self._record = record
        self._role = role
        self._ruleset = cfg.ruleset
        self._stamps = self._read_stamps(self._rules_path)
        self._check_every = check_every_s
        self._clock = clock
        self._next_check = clock() + check_every_s
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reload_requested = threading.Event()
        # The digest of the version in force (what the record names).
        self.digest: str | None = None
        self._record_stamp: tuple[int, int, int] | None = None
        if role == "lead":
            # Load once more, verified, so the record names exactly what is in force.
            self._record.unlink(missing_ok=True)
            if not self.reload(quiet=True):
                raise ConfigError(
                    [
                        self.last_error
                        or f"{self._config_path}: the rules kept changing while "
                        "they were read; start the node again once they are saved"
                    ]
                )
        elif not self._follow(quiet=True):
            raise ConfigError(
                [
                    f"{self._record}: no rules recorded by the node process (a receiving "
                    "process runs under `courier serve`, which records them first); start "
                    "the node with `courier serve`"
                ]
            )

    def current(self) -> RuleSet:
        """The rules in force, after a throttled check for a new version."""
        now = self._clock()
        if now >= self._next_check or self.reload_requested.is_set():
            self._next_check = now + self._check_every
            if self._role == "follow":
                self.reload_requested.clear()
                self._follow()
            elif (
                self.reload_requested.is_set()
                or self._read_stamps(self._rules_path) != self._stamps
            ):
                self.reload_requested.clear()
                self.reload()
        return self._ruleset

    def reload(self, *, quiet: bool = False) -> bool:
        """Load the rules again; on error keep the running ones. Returns success.

        The version is taken up only once its record is written (the receivers follow
        the record): when it cannot be written the running rules stay in force, staff
        hear of it (``last_error``) and the next check tries again. A follower reloads
        only to the version the node accepted (:meth:`current`).
        """
        if self._role == "follow":
            return self._follow()
        with self._lock:
            try:
                loaded = self._load()
            except ConfigError as exc:
                self._stamps = self._read_stamps(self._watch_after_error())
                self.last_error = str(exc)
                log.error("rules reload failed; the running rules stay in force:\n%s", exc)
                return False
            if loaded is None:
                self._stamps = ()  # saved again while read: load it at the next check
                return False
            cfg, accepted, stamps = loaded
            try:
                accepted.write(self._record, len(cfg.ruleset))
            except OSError as exc:
                self._stamps = ()  # try again at the next check
                error = (
                    f"{self._record}: cannot record the rules for the receiving processes "
                    f"({exc.strerror}); the running rules stay in force: free space in "
                    "node.data_dir or fix its permissions"
                )
                if error != self.last_error:
                    log.error("%s", error)
                self.last_error = error
                return False
            self._rules_path = cfg.rules_path
            self._stamps = stamps
            self._ruleset = cfg.ruleset
            self.digest = accepted.digest
            self.last_error = None
            if not quiet:
                log.info("rules reloaded: %d rules", len(cfg.ruleset))
            return True

    def _follow(self, *, quiet: bool = False) -> bool:
        """Take up the version the node accepted, if it recorded a new one."""
        try:
            st = os.stat(self._record)
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._record_stamp:
            return False
        with self._lock:
            record = _read_accepted(self._record)
            if record is None:  # unreadable right now (EMFILE...): read it again next time
                return False
            self._record_stamp = stamp
            if record.digest == self.digest:
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

    def _load(self) -> tuple[Config, Accepted, tuple[object, ...]] | None:
        """node.yaml and its rules, the record of them and the files' stamps as read;
        None if they were saved again while read, :data:`LOAD_TRIES` times."""
        for _try in range(LOAD_TRIES):
            rules_path = self._rules_path
            stamps = self._read_stamps(rules_path)  # before reading: a later save is seen
            before = self._read_sources(rules_path)
            cfg = load_config(Path(self._config_path))
            if cfg.rules_path != rules_path:
                # node.yaml names another rules file (or inline rules) now: read that.
                self._rules_path = cfg.rules_path
                continue
            after = self._read_sources(rules_path)
            if after != before:
                continue
            inline = cfg.rules is not None or rules_path is None
            path = self._config_path if inline else rules_path
            assert path is not None
            raw = after[0] if inline else after[1]
            text = raw.decode("utf-8") if isinstance(raw, bytes) else ""
            kind: Literal["rules_file", "node_yaml"] = "node_yaml" if inline else "rules_file"
            return cfg, Accepted.of(str(path), kind, text), stamps
        return None

    def _watch_after_error(self) -> Path | None:
        """The rules file to watch after a failed load: the one node.yaml names now, if
        node.yaml itself reads (so fixing a newly named file is noticed)."""
        with contextlib.suppress(ConfigError):
            self._rules_path = load_config(Path(self._config_path), compile_rules=False).rules_path
        return self._rules_path

    def _read_sources(self, rules_path: Path | None) -> tuple[object, ...]:
        """The bytes of node.yaml and the rules file (or why they cannot be read)."""
        out: list[object] = []
        for p in (self._config_path, rules_path):
            try:
                out.append(Path(p).read_bytes() if p is not None else None)
            except OSError as exc:
                out.append((str(p), exc.errno))
        return tuple(out)

    def _read_stamps(self, rules_path: Path | None) -> tuple[object, ...]:
        stamps: list[tuple[int, int] | None] = []
        for p in (self._config_path, rules_path):
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
        """Replace the record atomically (owner-only, as all of node.data_dir, through a
        temporary file of its own); raises OSError."""
        record = {"sha256": self.digest, "rules": count, "kind": self.kind}
        record |= {"source": self.source, "text": self.text}
        replace_file(path, json.dumps(record))


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
