"""One version of the rules in force: the node process loads and accepts, the receiving
processes compile exactly what it accepted (node.rulebook), whatever the files say now."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from node import rulebook as rulebook_module
from node.config import Config, ConfigError, load_config
from node.rulebook import Accepted, Rulebook
from node.stores import rules_record

ONE = "rules:\n  - name: everything\n    action: hold\n"
TWO = ONE + "  - name: never\n    when: {Modality: SR}\n    action: reject\n"
BROKEN = "rules:\n  - name: broken\n    action: explode\n"
HEAD = "node: {data_dir: data}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.5


def _setup(tmp_path: Path, inline: bool) -> tuple[Path, Config, Path]:
    (tmp_path / "data").mkdir()
    path = tmp_path / "node.yaml"
    if inline:
        path.write_text(HEAD + ONE)
    else:
        (tmp_path / "rules.yaml").write_text(ONE)
        path.write_text(HEAD + "rules_file: rules.yaml\n")
    return path, load_config(path), tmp_path / "data" / "rules-accepted.json"


def _save(path: Path, inline: bool, rules: str) -> None:
    if inline:
        path.write_text(HEAD + rules)
    else:
        (path.parent / "rules.yaml").write_text(rules)


@pytest.mark.parametrize("inline", [False, True], ids=["rules_file", "inline"])
def test_followers_take_up_exactly_what_the_node_accepted(tmp_path: Path, inline: bool) -> None:
    path, cfg, record = _setup(tmp_path, inline)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    follow = Rulebook(
        load_config(path, compile_rules=False), record=record, role="follow", clock=clock
    )
    assert lead.digest is not None and lead.last_error is None
    assert len(follow.current()) == 1 and follow.digest == lead.digest

    # A follower never reads the files: a valid save is not taken up before the node's.
    _save(path, inline, TWO)
    clock.tick()
    assert len(follow.current()) == 1
    assert len(lead.current()) == 2
    # Saved again, broken, before the follower looked: it still takes up what the
    # node accepted (the record holds the text), not the older version nor the newer.
    _save(path, inline, BROKEN)
    clock.tick()
    assert len(follow.current()) == 2 and follow.digest == lead.digest
    assert len(lead.current()) == 2 and "explode" in (lead.last_error or "")
    clock.tick()
    assert len(follow.current()) == 2 and follow.digest == lead.digest
    written = json.loads(record.read_text())
    assert written["rules"] == 2 and written["sha256"] == lead.digest
    assert record.stat().st_mode & 0o077 == 0
    assert [p.name for p in record.parent.iterdir() if p.name.endswith(".tmp")] == []

    # Fixed: both move on; a SIGHUP (reload_requested) skips the wait.
    _save(path, inline, ONE)
    lead.reload_requested.set()
    assert len(lead.current()) == 1 and lead.last_error is None
    follow.reload_requested.set()
    assert len(follow.current()) == 1 and follow.digest == lead.digest


@pytest.mark.parametrize(
    "record",
    [
        "",
        "{not json",
        "[]",
        json.dumps({"sha256": "x", "rules": 1, "kind": "pickle", "source": "s", "text": ""}),
        json.dumps({"sha256": "x", "rules": 1, "kind": "rules_file", "source": "s"}),
        json.dumps(
            {"sha256": "x", "rules": 1, "kind": "rules_file", "source": "s", "text": BROKEN}
        ),
        json.dumps({"sha256": "x", "rules": 1, "kind": "node_yaml", "source": "s", "text": "a: ["}),
    ],
    ids=["empty", "not-json", "not-a-mapping", "unknown-kind", "no-text", "broken", "bad-yaml"],
)
def test_a_bad_record_keeps_the_followers_rules(tmp_path: Path, record: str) -> None:
    _, cfg, path = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=path, clock=clock)
    follow = Rulebook(cfg, record=path, role="follow", clock=clock)
    path.write_text(record)
    clock.tick()
    assert len(follow.current()) == 1 and follow.digest == lead.digest


def test_a_follower_does_not_start_without_the_nodes_record(tmp_path: Path) -> None:
    _, cfg, record = _setup(tmp_path, inline=False)
    with pytest.raises(ConfigError, match="no rules recorded by the node process"):
        Rulebook(cfg, record=record, role="follow")


def test_the_node_does_not_start_with_rules_broken_since_it_read_them(tmp_path: Path) -> None:
    path, cfg, record = _setup(tmp_path, inline=False)
    _save(path, False, BROKEN)
    with pytest.raises(ConfigError, match="explode"):
        Rulebook(cfg, record=record)
    assert not record.exists()


def test_a_save_while_loading_is_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node accepts only a version that read the same before and after its load."""
    path, cfg, record = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    first = lead.digest
    real = load_config
    loads: list[int] = []

    def load_then_save(p: Path, **kwargs: bool) -> Config:
        loaded = real(p, **kwargs)
        loads.append(1)
        if len(loads) == 1:
            _save(path, False, ONE)  # saved again right after the load read TWO
        return loaded

    _save(path, False, TWO)
    monkeypatch.setattr(rulebook_module, "load_config", load_then_save)
    clock.tick()
    # Loaded again at once: ONE, the version on disk (never TWO with ONE's text).
    assert len(lead.current()) == 1 and lead.digest == first and len(loads) == 2


def test_a_save_just_after_the_load_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cfg, record = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    real = Rulebook._read_sources
    reads: list[int] = []

    def read_then_save(self: Rulebook, rules_path: Path | None) -> tuple[object, ...]:
        out = real(self, rules_path)
        reads.append(1)
        if len(reads) == 2:  # the read after the load: the admin saves right then
            _save(path, False, TWO)
        return out

    monkeypatch.setattr(Rulebook, "_read_sources", read_then_save)
    lead.reload_requested.set()
    assert len(lead.current()) == 1  # what was read, verified
    monkeypatch.setattr(Rulebook, "_read_sources", real)
    clock.tick()
    assert len(lead.current()) == 2  # the later save is not missed


def test_another_rules_file_named_in_node_yaml_is_taken_up(tmp_path: Path) -> None:
    path, cfg, record = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    follow = Rulebook(cfg, record=record, role="follow", clock=clock)
    (tmp_path / "rules2.yaml").write_text(BROKEN)
    path.write_text(HEAD + "rules_file: rules2.yaml\n")
    clock.tick()
    assert len(lead.current()) == 1 and "explode" in (lead.last_error or "")
    (tmp_path / "rules2.yaml").write_text(TWO)  # fixing the newly named file is noticed
    clock.tick()
    assert len(lead.current()) == 2 and lead.last_error is None
    clock.tick()
    assert len(follow.current()) == 2
    path.write_text(HEAD + ONE.replace("everything", "inline"))  # inline rules now
    clock.tick()
    assert [r.name for r in lead.current().rules] == ["inline"]
    clock.tick()
    assert [r.name for r in follow.current().rules] == ["inline"]


def test_a_record_that_cannot_be_written_keeps_the_running_rules_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, cfg, record = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    follow = Rulebook(cfg, record=record, role="follow", clock=clock)
    real = Accepted.write

    def full(self: Accepted, p: Path, count: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accepted, "write", full)
    _save(path, False, TWO)
    for _ in range(3):
        clock.tick()
        assert len(lead.current()) == 1 and len(follow.current()) == 1
    assert "No space left on device" in (lead.last_error or "")
    assert caplog.text.count("cannot record the rules") == 1  # once, not every second
    monkeypatch.setattr(Accepted, "write", real)
    clock.tick()
    assert len(lead.current()) == 2 and lead.last_error is None
    clock.tick()
    assert len(follow.current()) == 2


def test_a_record_unreadable_for_a_moment_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cfg, record = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, record=record, clock=clock)
    follow = Rulebook(cfg, record=record, role="follow", clock=clock)
    _save(path, False, TWO)
    clock.tick()
    assert len(lead.current()) == 2
    real = rulebook_module._read_accepted
    monkeypatch.setattr(rulebook_module, "_read_accepted", lambda p: None)  # e.g. EMFILE
    clock.tick()
    assert len(follow.current()) == 1
    monkeypatch.setattr(rulebook_module, "_read_accepted", real)
    clock.tick()
    assert len(follow.current()) == 2


def test_each_node_sharing_a_data_directory_has_its_own_record(tmp_path: Path) -> None:
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"node: {{name: {name}, data_dir: data}}\n")
        paths.append(rules_record(load_config(path), "postgresql+psycopg://u@127.0.0.1/test"))
    assert paths == [
        tmp_path / "data" / "rules-accepted" / "a.json",
        tmp_path / "data" / "rules-accepted" / "b.json",
    ]
    alone = rules_record(load_config(tmp_path / "a.yaml"), f"sqlite:///{tmp_path}/x.db")
    assert alone == tmp_path / "data" / "rules-accepted.json"
