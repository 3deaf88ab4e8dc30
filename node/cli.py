"""The ``courier`` command line.

Every command takes ``--config PATH`` (default ``./node.yaml`` or ``$COURIER_CONFIG``);
commands that print data take ``--json``. Exit status: 0 success, 1 not found or
refused, 2 bad usage or invalid configuration, 3 the database is unavailable.

A command answers at once because nothing is imported before it is known which command
runs: :data:`COMMANDS` names, for each top-level command, its help line and the module
(``node.cli_*``) that adds its options and runs it. ``courier --help`` and ``courier
version`` import only this module; ``courier request list`` imports the store and the
request code, never the web app, the SCP, numpy or the scheduler. Each ``node.cli_*``
module keeps its own heavy imports inside the functions that need them.
``tests/test_cli_imports.py`` guards the import graph; ``bench/cli.py`` times it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import __version__
from node.output import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, print_result

if TYPE_CHECKING:
    from node.config import Config


@dataclass(frozen=True)
class Command:
    """A top-level command: its help line (shown by ``courier --help`` without importing
    ``module``), where its parser is added (``module.adder(sub, common, as_json)``, which
    may add several commands) and where it runs (``module.runner``: ``(args, cfg)``, or
    ``(args, config_path)`` when ``config`` is "path", or ``(args)`` when it is "none")."""

    help: str
    module: str
    adder: str
    runner: str
    config: str = "load"  # "load": node.yaml read and validated first; "path"; "none"


#: Every top-level command. ``tests/test_cli_imports.py`` checks each help line against
#: the one its module gives, so the two cannot drift.
COMMANDS: dict[str, Command] = {
    "serve": Command("run the node (DICOM SCP, sweeps)", "node.cli", "_add_serve", "_serve"),
    "check-config": Command(
        "validate node.yaml without starting anything",
        "node.cli",
        "_add_check_config",
        "_check_config",
    ),
    "version": Command("print the version", "node.cli", "_add_version", "_version", "none"),
    "status": Command(
        "is the node running, did the last rules reload fail, counts by state "
        "(exit 1 when not running or the rules reload failed)",
        "node.cli",
        "_add_status",
        "_status",
    ),
    "studies": Command("what arrived", "node.cli_studies", "add_studies_parser", "run_studies"),
    "apikey": Command(
        "staff/RIS API keys (create, list, revoke)",
        "node.cli_apikeys",
        "add_apikey_parser",
        "run_apikey_command",
    ),
    "rules": Command(
        "check and explain the rules",
        "node.cli_rules",
        "add_rules_parsers",
        "run_rules_command",
        "path",
    ),
    "deliver": Command(
        "package ready requests and send their links now",
        "node.cli_delivery",
        "add_delivery_parsers",
        "run_deliver",
    ),
    "outbox": Command(
        "notifications and their attempts",
        "node.cli_delivery",
        "add_delivery_parsers",
        "run_outbox",
    ),
    "export-iso": Command(
        "write a request's studies as a CD/DVD image (ISO 9660, IHE PDI layout)",
        "node.cli_disc",
        "add_disc_parsers",
        "run_export_iso",
    ),
    "doctor": Command(
        "check the database, disk, secret, file modes under node.data_dir, SMTP, "
        "Twilio, the PACS (C-ECHO), the HL7 listener (ris.enabled) and the public URL, and say "
        "what to fix (exit 1 when a check fails; changes nothing)",
        "node.doctor",
        "add_doctor_parser",
        "run_doctor",
    ),
    "staff": Command(
        "staff sign-in accounts (add, list, ...)",
        "node.cli_staff",
        "add_staff_parsers",
        "run_staff_command",
    ),
    "request": Command(
        "release requests (create, list, ...)",
        "node.cli_requests",
        "add_request_parsers",
        "run_request_command",
    ),
    "pacs": Command(
        "query the PACS in node.yaml's pacs: section",
        "node.cli_pacs",
        "add_pacs_parsers",
        "run_pacs_command",
    ),
    "audit": Command(
        "list the audit trail (received, exported, purged, sign-ins, start/stop)",
        "node.cli_audit",
        "add_audit_parser",
        "run_audit",
    ),
    "conformance": Command(
        "print the DICOM Conformance Statement (PS3.2) generated from the code's own tables "
        "(--write: into docs/conformance.md)",
        "node.cli_conformance",
        "add_conformance_parser",
        "run_conformance",
        "none",
    ),
    "report": Command(
        "requests by outcome per day, time to first download, failures by cause",
        "node.cli_report",
        "add_report_parser",
        "run_report",
    ),
    "demo": Command(
        "send the node a tiny synthetic study (DEMO^PATIENT) to try it",
        "node.demo",
        "add_demo_parser",
        "run_demo",
    ),
    "completion": Command(
        "print a shell completion script (bash or zsh)",
        "node.cli_completion",
        "add_completion_parser",
        "run_completion",
        "none",
    ),
}


def _function(module: str, name: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


def _chosen(argv: Sequence[str]) -> str | None:
    """The command named on the command line: the first word that is not an option
    (the top-level parser has no option that takes a value)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def parser(command: str | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The ``courier`` parser. Only ``command``'s module is imported and adds its real
    options; every other command gets a placeholder with its help line (enough for
    ``courier --help`` and for argparse to say a command is unknown). ``full``: every
    module adds its own (shell completion, tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="node.yaml to use (default ./node.yaml or $COURIER_CONFIG)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    p = argparse.ArgumentParser(prog="courier", description="Courier DICOM delivery node")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The same adder may add several commands (deliver and outbox): each is called once.
    real = {(c.module, c.adder) for n, c in COMMANDS.items() if full or n == command}
    called: set[tuple[str, str]] = set()
    for name, cmd in COMMANDS.items():
        where = (cmd.module, cmd.adder)
        if where not in real:
            sub.add_parser(name, help=cmd.help, add_help=False)
        elif where not in called:
            called.add(where)
            _function(cmd.module, cmd.adder)(sub, common, as_json)
    return p


def _add_serve(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    _json: Any,
) -> None:
    from node.app import ROLES

    serve_p = sub.add_parser("serve", parents=[common], help=COMMANDS["serve"].help)
    serve_p.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="what this node runs when several share a PostgreSQL database and a data "
        "directory: scp (receive), web (portal and API), worker (sweeps, delivery batch, "
        "outbox relay), all (default; the only role on SQLite)",
    )


def _add_check_config(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Any, as_json: Any
) -> None:
    sub.add_parser("check-config", parents=[common, as_json], help=COMMANDS["check-config"].help)


def _add_version(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], _common: Any, as_json: Any
) -> None:
    sub.add_parser("version", parents=[as_json], help=COMMANDS["version"].help)


def _add_status(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Any, as_json: Any
) -> None:
    sub.add_parser("status", parents=[common, as_json], help=COMMANDS["status"].help)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    The command runs with umask 077: whatever it creates under node.data_dir (database,
    instances, packages, outbox files, logs) is the node account's alone. The code gives
    explicit modes too (store.content.DIR_MODE/FILE_MODE); the umask also covers files
    that libraries make (prometheus_client's). The caller's umask is back on return, so
    tests may call ``main`` in their own process.
    """
    umask = os.umask(0o077)
    try:
        return _run(sys.argv[1:] if argv is None else list(argv))
    finally:
        os.umask(umask)


def _run(argv: list[str]) -> int:
    # Importing a command's modules and validating node.yaml make many objects and
    # almost no reference cycles: the cyclic collector would run dozens of times for
    # nothing (about 5% of a short command's time). It is back on before the command runs.
    collecting = gc.isenabled()
    gc.disable()
    try:
        command = _chosen(argv)
        if command == "serve":
            # First, before anything imports pydicom: the node's processes never decode
            # pixels (imaging's children do), so pydicom comes without numpy and Pillow.
            from imaging.nopixels import import_pydicom_without_pixels

            import_pydicom_without_pixels()
        args = parser(command).parse_args(argv)
        cmd = COMMANDS[args.command]
        run = _function(cmd.module, cmd.runner)
        if cmd.config == "none":
            ready: tuple[Any, ...] = (args,)
        else:
            from node.config import ConfigError, config_path, load_config
            from store.errors import StoreError

            if cmd.config == "path":
                ready = (args, config_path(args.config))
            else:
                try:
                    # Only the commands that apply the rules need them valid (load_config).
                    rules_needed = args.command in ("serve", "check-config")
                    cfg = load_config(config_path(args.config), compile_rules=rules_needed)
                except ConfigError as exc:
                    print(f"courier: invalid configuration:\n{exc}", file=sys.stderr)
                    return EXIT_USAGE
                ready = (args, cfg)
    finally:
        if collecting:
            gc.enable()
    if cmd.config != "load":
        return int(run(*ready))
    try:
        return int(run(*ready))
    except StoreError as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return 3  # EXIT_UNAVAILABLE
    except ConfigError as exc:
        print(f"courier: {exc.heading}:\n{exc}", file=sys.stderr)
        return EXIT_USAGE


def _version(args: argparse.Namespace) -> int:
    return print_result(args, {"version": __version__}, f"courier {__version__}")


def _check_config(args: argparse.Namespace, cfg: Config) -> int:
    from scp.tls import TlsSetupError, server_context

    try:  # the TLS files, read as `courier serve` will (it refuses to start otherwise)
        server_context(cfg.scp, cfg.data_dir)
    except TlsSetupError as exc:
        print(f"courier: invalid configuration:\n{cfg.source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return print_result(args, {"ok": True, "config": str(cfg.source)}, f"{cfg.source}: OK")


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    from node.app import serve
    from node.logs import setup_logging

    setup_logging()
    return serve(cfg, role=args.role)


def _status(args: argparse.Namespace, cfg: Config) -> int:
    from node.status import read_status, status_text
    from node.stores import open_store, status_path, store_url

    engine, sessions, _content = open_store(cfg)
    try:
        # Three missed sweeps (and at least 30 s) before the node counts as not running.
        stale = max(30.0, 3 * cfg.scp.stability_check_s)
        status = read_status(status_path(cfg, store_url(cfg)), sessions, stale_after_s=stale)
    finally:
        engine.dispose()
    print_result(args, status, status_text(status))
    return EXIT_OK if status["healthy"] else EXIT_NOT_FOUND


if __name__ == "__main__":
    raise SystemExit(main())
