"""One version of the rules in force: the node process loads and accepts, the receiving
processes compile exactly what it accepted (node.rulebook), whatever the files say now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node import rulebook as rulebook_module
from node.config import Config, load_config
from node.rulebook import ACCEPTED_FILE, Rulebook

ONE = "rules:\n  - name: everything\n    action: hold\n"
TWO = ONE + "  - name: never\n    when: {Modality: SR}\n    action: reject\n"
BROKEN = "rules:\n  - name: broken\n    action: explode\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.5


def _setup(tmp_path: Path, inline: bool) -> tuple[Path, Config]:
    (tmp_path / "data").mkdir()
    path = tmp_path / "node.yaml"
    if inline:
        path.write_text("node: {data_dir: data}\n" + ONE)
        return path, load_config(path)
    (tmp_path / "rules.yaml").write_text(ONE)
    path.write_text("node: {data_dir: data}\nrules_file: rules.yaml\n")
    return path, load_config(path)


def _save(path: Path, inline: bool, rules: str) -> Path:
    target = path if inline else path.parent / "rules.yaml"
    target.write_text(("node: {data_dir: data}\n" if inline else "") + rules)
    return target


@pytest.mark.parametrize("inline", [False, True], ids=["rules_file", "inline"])
def test_followers_take_up_exactly_what_the_node_accepted(tmp_path: Path, inline: bool) -> None:
    path, cfg = _setup(tmp_path, inline)
    clock = Clock()
    lead = Rulebook(cfg, clock=clock)
    follow = Rulebook(load_config(path), role="follow", clock=clock)
    assert lead.digest is not None and lead.last_error is None
    clock.tick()
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
    record = json.loads((tmp_path / "data" / ACCEPTED_FILE).read_text())
    assert record["rules"] == 2 and record["sha256"] == lead.digest
    assert (tmp_path / "data" / ACCEPTED_FILE).stat().st_mode & 0o077 == 0

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
    _, cfg = _setup(tmp_path, inline=False)
    clock = Clock()
    follow = Rulebook(cfg, role="follow", clock=clock)
    (tmp_path / "data" / ACCEPTED_FILE).write_text(record)
    clock.tick()
    assert len(follow.current()) == 1 and follow.digest is None


def test_no_record_keeps_the_start_up_rules(tmp_path: Path) -> None:
    path, cfg = _setup(tmp_path, inline=False)
    clock = Clock()
    follow = Rulebook(cfg, role="follow", clock=clock)
    _save(path, False, TWO)
    clock.tick()
    assert len(follow.current()) == 1 and follow.digest is None
    assert follow.reload() is False


def test_a_save_while_loading_is_not_taken_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node accepts only a version that read the same before and after its load."""
    path, cfg = _setup(tmp_path, inline=False)
    clock = Clock()
    lead = Rulebook(cfg, clock=clock)
    first = lead.digest
    real = load_config

    def load_then_save(p: Path) -> Config:
        loaded = real(p)
        _save(path, False, ONE)  # saved again right after the load read TWO
        return loaded

    _save(path, False, TWO)
    monkeypatch.setattr(rulebook_module, "load_config", load_then_save)
    clock.tick()
    assert len(lead.current()) == 1 and lead.digest == first and lead.last_error is None
    monkeypatch.setattr(rulebook_module, "load_config", real)
    clock.tick()  # loaded again at the next check: ONE, the version on disk
    assert len(lead.current()) == 1 and lead.digest == first
    _save(path, False, TWO)
    clock.tick()
    assert len(lead.current()) == 2 and lead.digest != first
