"""``courier staff add|password|list|disable|enable``: accounts for the staff pages.

Run through the same parser shape as ``courier`` (``add_staff_parsers`` under a
``common``/``as_json`` pair) until node/cli.py wires the commands in.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from node.cli_staff import add_staff_parsers, run_staff_command
from node.config import load_config
from portal import passwords
from portal.passwords import ScryptParams
from store.db import make_engine, make_sessions, migrate
from store.models import PortalSession, StaffUser, utcnow

SECRET = "a long staff password 42"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true")
    p = argparse.ArgumentParser(prog="courier")
    add_staff_parsers(p.add_subparsers(dest="command", required=True), common, as_json)
    return p


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "PARAMS", ScryptParams(n=16, r=1, p=1))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(
        f"node:\n  data_dir: {tmp_path / 'data'}\n"
        f"store:\n  database_url: sqlite:///{tmp_path / 'index.db'}\n"
    )
    return path


def run(
    config: Path,
    argv: Sequence[str],
    stdin: str = "",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> int:
    args = _parser().parse_args([*argv, "--config", str(config)])
    assert monkeypatch is not None
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return run_staff_command(args, load_config(config, compile_rules=False))


def users(config: Path) -> dict[str, StaffUser]:
    engine = make_engine(f"sqlite:///{config.parent / 'index.db'}")
    migrate(engine)
    try:
        with make_sessions(engine)() as s:
            rows = list(s.scalars(select(StaffUser)))
            for r in rows:
                s.expunge(r)
            return {u.username: u for u in rows}
    finally:
        engine.dispose()


def test_add_list_disable_enable(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, ["staff", "add", "Alice", "--json"], SECRET + "\n", monkeypatch) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["username"] == "alice"
    assert SECRET not in out.out + out.err
    stored = users(config)["alice"]
    assert stored.password_hash.startswith("scrypt$") and SECRET not in stored.password_hash
    assert passwords.verify(SECRET, stored.password_hash)

    assert run(config, ["staff", "add", "bob", "--password-file", "-"], SECRET, monkeypatch) == 0
    capsys.readouterr()
    assert run(config, ["staff", "list", "--json"], "", monkeypatch) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["disabled_at"]) for u in listed] == [("alice", None), ("bob", None)]
    assert all("password" not in json.dumps(u) for u in listed)

    # Disabling ends open sessions.
    engine = make_engine(f"sqlite:///{config.parent / 'index.db'}")
    with make_sessions(engine)() as s, s.begin():
        s.add(
            PortalSession(
                token_hash="b" * 64,
                kind="staff",
                staff_user_id=users(config)["alice"].id,
                created_at=utcnow(),
                last_seen_at=utcnow(),
            )
        )
    assert run(config, ["staff", "disable", "alice"], "", monkeypatch) == 0
    assert "disabled" in capsys.readouterr().out
    assert users(config)["alice"].disabled_at is not None
    with make_sessions(engine)() as s:
        assert s.scalar(select(PortalSession.ended_at)) is not None
    engine.dispose()
    assert run(config, ["staff", "list"], "", monkeypatch) == 0
    table = capsys.readouterr().out
    assert "alice" in table and "disabled" in table and "bob" in table
    assert run(config, ["staff", "enable", "alice"], "", monkeypatch) == 0
    assert users(config)["alice"].disabled_at is None


def test_password_from_a_file_and_a_new_password(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_file = tmp_path / "pw.txt"
    secret_file.write_text(SECRET + "\nsecond line ignored\n")
    assert (
        run(config, ["staff", "add", "carol", "--password-file", str(secret_file)], "", monkeypatch)
        == 0
    )
    assert passwords.verify(SECRET, users(config)["carol"].password_hash)
    newer = "another long password!"
    assert run(config, ["staff", "password", "carol"], newer + "\n", monkeypatch) == 0
    assert passwords.verify(newer, users(config)["carol"].password_hash)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and newer not in out.out + out.err


def test_the_prompt_asks_twice(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    typed = iter([SECRET, SECRET + "typo"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    args = _parser().parse_args(["staff", "add", "dave", "--config", str(config)])
    monkeypatch.setattr(sys, "stdin", tty)
    assert run_staff_command(args, load_config(config, compile_rules=False)) == 2
    assert "differ" in capsys.readouterr().err and "dave" not in users(config)
    typed = iter([SECRET, SECRET])
    assert run_staff_command(args, load_config(config, compile_rules=False)) == 0
    assert "dave" in users(config)


@pytest.mark.parametrize("action", ["add", "password"])
@pytest.mark.parametrize("option", ["--password", "--pass", "--password=" + SECRET])
def test_the_password_is_never_an_argument(
    action: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not even as an abbreviation of --password-file (argparse would accept that).
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["staff", action, "eve", option, SECRET])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "stdin", "status", "message"),
    [
        (["staff", "add", "bad name"], SECRET, 2, "username refused"),
        (["staff", "add", "x" * 65], SECRET, 2, "username refused"),
        (["staff", "add", "<script>"], SECRET, 2, "username refused"),
        (["staff", "add", "frank"], "short\n", 2, "at least 12"),
        (["staff", "add", "frank"], "", 2, "no password given"),
        (["staff", "add", "frank"], "x" * 2000, 2, "at most 1024"),
        (["staff", "add", "frank", "--password-file", "/nonexistent/pw"], "", 2, "cannot read"),
        (["staff", "disable", "nobody"], "", 1, "no staff user nobody"),
        (["staff", "enable", "nobody"], "", 1, "no staff user nobody"),
        (["staff", "password", "nobody"], SECRET, 1, "no staff user nobody"),
    ],
)
def test_bad_input_exit_codes(
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    status: int,
    message: str,
) -> None:
    assert run(config, argv, stdin, monkeypatch) == status
    captured = capsys.readouterr()
    assert message in captured.err
    assert SECRET not in captured.out + captured.err
    assert users(config) == {}


def test_adding_twice_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, ["staff", "add", "gina"], SECRET, monkeypatch) == 0
    capsys.readouterr()
    before = users(config)["gina"].password_hash
    assert run(config, ["staff", "add", "GINA", "--json"], "other password 123", monkeypatch) == 1
    captured = capsys.readouterr()
    assert (
        "already exists" in captured.err and "already exists" in json.loads(captured.out)["error"]
    )
    assert users(config)["gina"].password_hash == before


def test_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port

    path = tmp_path / "node.yaml"
    path.write_text(
        f"node:\n  data_dir: {tmp_path / 'd'}\nstore:\n"
        f"  database_url: postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x\n"
        "  busy_timeout_s: 1\n"
    )
    assert run(path, ["staff", "list"], "", monkeypatch) == 3
    assert "cannot open the index database" in capsys.readouterr().err
