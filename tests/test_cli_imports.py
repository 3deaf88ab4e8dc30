"""The CLI answers at once because a command imports only what it uses (node.cli).

The import graph is checked, not the time (bench/cli.py times it): each command runs in
a fresh interpreter, as ``courier`` does, and reports which heavy packages it loaded.
Also here: the help lines ``courier --help`` shows without importing a command's module
are the ones its module gives, and the shell completion scripts made from the parser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import COMMANDS, parser
from node.cli_completion import tables, zsh_script
from tests.conftest import free_port, write_config

HEAVY = ("fastapi", "starlette", "uvicorn", "numpy", "pydicom", "pynetdicom", "apscheduler")
HEAVY += (
    "twilio",
    "aiosmtplib",
    "PIL",
    "jinja2",
    "alembic",
    "rich",
    "phonenumbers",
    "email_validator",
)
_PROBE = """
import contextlib, io, json, sys
from node.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:
        status = exc.code
print(json.dumps({"status": status, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imported(tmp_path: Path, *argv: str) -> tuple[int, set[str]]:
    config = tmp_path / "node.yaml"
    if not config.exists():
        write_config(config, tmp_path / "data", free_port())
    args = [*argv, "--config", str(config)] if argv not in (("version",), ("--help",)) else argv
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["status"], set(out["modules"])


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        pytest.param(("--help",), (), id="--help"),
        pytest.param(("version",), (), id="version"),
        # The store commands: SQLAlchemy, never the web app, DICOM, the scheduler or
        # the channels; nor Alembic when the database is at head (second run).
        pytest.param(("request", "list"), ("sqlalchemy",), id="request list"),
        pytest.param(("status",), ("sqlalchemy",), id="status"),
        pytest.param(("studies", "list"), ("sqlalchemy",), id="studies list"),
        pytest.param(("apikey", "list"), ("sqlalchemy",), id="apikey list"),
    ],
)
def test_a_command_imports_only_what_it_uses(
    tmp_path: Path, argv: tuple[str, ...], allowed: tuple[str, ...]
) -> None:
    if allowed:
        _imported(tmp_path, *argv)  # the first run makes and migrates the database
    status, modules = _imported(tmp_path, *argv)
    assert status in (0, 1)  # status: 1 while no node runs
    assert modules & {*HEAVY, "sqlalchemy"} <= set(allowed), sorted(modules & {*HEAVY})


def test_help_lines_are_the_ones_each_command_module_gives() -> None:
    full = parser(full=True)
    sub = next(a for a in full._actions if a.dest == "command")
    given = {a.dest: a.help for a in sub._choices_actions}  # type: ignore[attr-defined]
    assert given == {name: cmd.help for name, cmd in COMMANDS.items()}


def _complete(script: Path, *words: str) -> list[str]:
    """``COMPREPLY`` for the command line ``words`` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
            'complete -p courier; _courier; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "complete -o default -F _courier courier"
    return [w for w in lines[1:] if w]


@pytest.fixture(scope="module")
def bash_completion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script as ``courier completion bash`` prints it (made once)."""
    script = tmp_path_factory.mktemp("completion") / "courier.bash"
    made = subprocess.run(
        [sys.executable, "-m", "node.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    script.write_text(made.stdout)
    return script


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("courier", "req"), ["request"]),
        (("courier", "ap"), ["apikey"]),
        (("courier", "apikey", ""), ["-h", "--help", "create", "list", "revoke"]),
        (("courier", "request", "list", "--st"), ["--state"]),
        (("courier", "request", "list", "--state", "pe"), ["pending"]),
        (("courier", "studies", "list", "--json", "--li"), ["--limit"]),
        (("courier", "completion", "z"), ["zsh"]),
    ],
)
def test_bash_completion_from_the_parser(
    bash_completion: Path, words: tuple[str, ...], expected: list[str]
) -> None:
    assert _complete(bash_completion, *words) == expected


def test_bash_completes_a_config_file_name(bash_completion: Path, tmp_path: Path) -> None:
    script = bash_completion
    (tmp_path / "node.yaml").write_text("node: {}\n")
    assert _complete(script, "courier", "status", "--config", f"{tmp_path}/no") == [
        f"{tmp_path}/node.yaml"
    ]


def test_zsh_completion_has_every_command_path() -> None:
    top = parser(full=True)
    script = zsh_script(top)
    words, choices, _values = tables(top)
    assert script.startswith("#compdef courier\n")
    for path in [*words, *choices]:
        quoted = f"'{path}'" if " " in path else path
        assert f"\n  {quoted} " in script, path
    assert script.count("(") == script.count(")")
    if shutil.which("zsh"):  # the syntax, where zsh is installed
        subprocess.run(["zsh", "-n"], input=script, text=True, timeout=30, check=True)


def test_the_migration_shortcut_agrees_with_alembic(tmp_path: Path) -> None:
    """store.db skips Alembic only when the database is at the head that Alembic itself
    finds in the migration files."""
    from alembic.script import ScriptDirectory

    from store.db import _at_head, _head, alembic_config, make_engine, migrate

    assert _head() == ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        assert not _at_head(engine)  # no alembic_version yet: Alembic decides
        migrate(engine)
        assert _at_head(engine)
    finally:
        engine.dispose()
