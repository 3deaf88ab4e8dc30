"""The ``courier`` command line.

Every command takes ``--config PATH`` (default ``./node.yaml`` or ``$COURIER_CONFIG``);
commands that print data take ``--json``. Exit status: 0 success, 1 not found or
refused, 2 bad usage or invalid configuration, 3 the database is unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from node import __version__
from node.app import ROLES, open_store, serve, setup_logging
from node.cli_audit import add_audit_parser, run_audit
from node.cli_delivery import add_delivery_parsers, run_deliver, run_outbox
from node.cli_disc import add_disc_parsers, run_export_iso
from node.cli_pacs import add_pacs_parsers, run_pacs_command
from node.cli_requests import add_request_parsers, run_request_command
from node.cli_rules import add_rules_parsers, run_rules_command
from node.cli_staff import add_staff_parsers, run_staff_command
from node.config import Config, ConfigError, config_path, load_config
from node.doctor import add_doctor_parser, run_doctor
from node.output import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    cell,
    fields,
    print_result,
)
from node.status import read_status, status_text
from portal.apikeys import hash_api_key, new_api_key
from scp.tls import TlsSetupError, server_context
from store.catalog import guarded
from store.errors import StoreError
from store.models import (
    Instance,
    InstanceConflict,
    RequestStudy,
    Study,
    StudyDecision,
    StudyState,
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="node.yaml to use (default ./node.yaml or $COURIER_CONFIG)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    p = argparse.ArgumentParser(prog="courier", description="Courier DICOM delivery node")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_p = sub.add_parser("serve", parents=[common], help="run the node (DICOM SCP, sweeps)")
    serve_p.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="what this node runs when several share a PostgreSQL database and a data "
        "directory: scp (receive), web (portal and API), worker (sweeps, delivery batch, "
        "outbox relay), all (default; the only role on SQLite)",
    )
    sub.add_parser(
        "check-config",
        parents=[common, as_json],
        help="validate node.yaml without starting anything",
    )
    sub.add_parser("version", parents=[as_json], help="print the version")
    sub.add_parser(
        "status",
        parents=[common, as_json],
        help="is the node running, did the last rules reload fail, counts by state "
        "(exit 1 when not running or the rules reload failed)",
    )
    studies = sub.add_parser("studies", help="what arrived").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    ls = studies.add_parser("list", parents=[common, as_json], help="list received studies")
    ls.add_argument("--state", choices=[str(x) for x in StudyState])
    ls.add_argument(
        "--held",
        action="store_true",
        help="only studies held because no pending request matched (purged after "
        "store.unmatched_retention_days)",
    )
    ls.add_argument("--limit", type=int, default=100)
    show = studies.add_parser("show", parents=[common, as_json], help="one study in detail")
    show.add_argument("study_uid")
    apikey = sub.add_parser("apikey", help="staff/RIS API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    mk = apikey.add_parser(
        "create",
        parents=[common, as_json],
        help="make a key: printed once, only its digest is kept",
    )
    mk.add_argument("--label", default="", help="a note kept beside the digest")
    add_rules_parsers(sub, common, as_json)
    add_delivery_parsers(sub, common, as_json)
    add_disc_parsers(sub, common, as_json)
    add_doctor_parser(sub, common, as_json)
    add_staff_parsers(sub, common, as_json)
    add_request_parsers(sub, common, as_json)
    add_pacs_parsers(sub, common, as_json)
    add_audit_parser(sub, common, as_json)
    from node.cli_report import add_report_parser  # argparse only: cheap at start

    add_report_parser(sub, common, as_json)
    from node.cli_conformance import add_conformance_parser  # argparse only

    add_conformance_parser(sub, common, as_json)
    from node.demo import add_demo_parser  # argparse only: pydicom when it runs

    add_demo_parser(sub, common, as_json)
    return p


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
        return _run(argv)
    finally:
        os.umask(umask)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        return print_result(args, {"version": __version__}, f"courier {__version__}")
    if args.command == "rules":
        return run_rules_command(args, config_path(args.config))
    if args.command == "conformance":  # no node.yaml: the statement describes the code
        from node.cli_conformance import run_conformance

        return run_conformance(args)
    try:
        # Only the commands that apply the rules need them valid (see load_config).
        rules_needed = args.command in ("serve", "check-config")
        cfg = load_config(config_path(args.config), compile_rules=rules_needed)
    except ConfigError as exc:
        print(f"courier: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        try:  # the TLS files, read as `courier serve` will (it refuses to start otherwise)
            server_context(cfg.scp, cfg.data_dir)
        except TlsSetupError as exc:
            print(f"courier: invalid configuration:\n{cfg.source}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return print_result(args, {"ok": True, "config": str(cfg.source)}, f"{cfg.source}: OK")
    try:
        if args.command == "serve":
            setup_logging()
            return serve(cfg, role=args.role)
        if args.command == "studies":
            return _studies(args, cfg)
        if args.command == "status":
            return _status(args, cfg)
        if args.command == "staff":
            return run_staff_command(args, cfg)
        if args.command == "deliver":
            return run_deliver(args, cfg)
        if args.command == "outbox":
            return run_outbox(args, cfg)
        if args.command == "export-iso":
            return run_export_iso(args, cfg)
        if args.command == "doctor":
            return run_doctor(args, cfg)
        if args.command == "request":
            return run_request_command(args, cfg)
        if args.command == "pacs":
            return run_pacs_command(args, cfg)
        if args.command == "apikey":
            return _apikey_create(args, cfg)
        if args.command == "audit":
            return run_audit(args, cfg)
        if args.command == "report":
            from node.cli_report import run_report  # imports the store when it runs

            return run_report(args, cfg)
        if args.command == "demo":
            from node.demo import run_demo

            return run_demo(args, cfg)
    except StoreError as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ConfigError as exc:
        print(f"courier: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _status(args: argparse.Namespace, cfg: Config) -> int:
    engine, sessions, _content = open_store(cfg)
    try:
        # Three missed sweeps (and at least 30 s) before the node counts as not running.
        stale = max(30.0, 3 * cfg.scp.stability_check_s)
        status = read_status(cfg.data_dir, sessions, stale_after_s=stale)
    finally:
        engine.dispose()
    print_result(args, status, status_text(status))
    return EXIT_OK if status["healthy"] else EXIT_NOT_FOUND


def _apikey_create(args: argparse.Namespace, cfg: Config) -> int:
    key = new_api_key()
    digest = hash_api_key(key)
    path = cfg.api_keys_path
    path.parent.mkdir(parents=True, exist_ok=True)
    label = " ".join(args.label.split())[:80]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(f"{digest}{'  # ' + label if label else ''}\n")
    text = (
        f"API key (shown once; give it to the caller, it is not stored):\n  {key}\n"
        f"digest {digest} added to {path}\nrestart `courier serve` to accept it"
    )
    return print_result(args, {"key": key, "digest": digest, "file": str(path)}, text)


def _study_dict(st: Study) -> dict[str, Any]:
    return {
        "study_uid": st.study_uid,
        "state": st.state,
        "patient_id": st.patient_id,
        "patient_name": st.patient_name,
        "accession_number": st.accession_number,
        "study_date": st.study_date,
        "study_description": st.study_description,
        "modalities": st.modalities,
        "instances": st.instance_count,
        "size_bytes": st.size_bytes,
        "calling_ae": st.calling_ae,
        "first_received_at": st.first_received_at,
        "last_received_at": st.last_received_at,
        "stable_at": st.stable_at,
    }


def _studies(args: argparse.Namespace, cfg: Config) -> int:
    engine, sessions, _content = open_store(cfg)
    try:
        with guarded(sessions) as s:
            if args.action == "list":
                q = select(Study).order_by(Study.last_received_at.desc()).limit(args.limit)
                if args.state:
                    q = q.where(Study.state == args.state)
                if args.held:
                    held = select(StudyDecision.study_id).where(StudyDecision.action == "hold")
                    attached = select(RequestStudy.study_id)
                    q = q.where(Study.id.in_(held), Study.id.not_in(attached))
                rows = [_study_dict(st) for st in s.scalars(q)]
                lines = [
                    f"{'STUDY UID':<64} {'STATE':<9} {'INST':>6} {'MB':>8} "
                    f"{'FROM':<16} LAST RECEIVED"
                ]
                lines += [
                    f"{cell(r['study_uid'], 64)} {r['state']:<9} {r['instances']:>6} "
                    f"{r['size_bytes'] / 1e6:>8.1f} {cell(r['calling_ae'], 16)} "
                    f"{r['last_received_at']:%Y-%m-%d %H:%M:%S}"
                    for r in rows
                ]
                return print_result(args, rows, "\n".join(lines))
            st = s.scalars(select(Study).where(Study.study_uid == args.study_uid)).first()
            if st is None:
                print(
                    f"courier: no study {args.study_uid}; see `courier studies list`",
                    file=sys.stderr,
                )
                return EXIT_NOT_FOUND
            data = _study_dict(st)
            data["series"] = [
                {
                    "series_uid": se.series_uid,
                    "modality": se.modality,
                    "series_number": se.series_number,
                    "description": se.series_description,
                    "instances": se.instance_count,
                    "size_bytes": se.size_bytes,
                }
                for se in st.series
            ]
            data["missing_files"] = (
                s.scalar(
                    select(func.count())
                    .select_from(Instance)
                    .where(Instance.study_id == st.id, Instance.file_missing.is_(True))
                )
                or 0
            )
            data["conflicts"] = (
                s.scalar(
                    select(func.count())
                    .select_from(InstanceConflict)
                    .where(InstanceConflict.study_uid == st.study_uid)
                )
                or 0
            )
            data["events"] = [
                {"at": e.at, "from": e.from_state, "to": e.to_state, "reason": e.reason}
                for e in st.events
            ]
            text = "\n".join(
                fields(data, skip=("series", "events"))
                + ["series:"]
                + [
                    f"  {cell(x['series_uid'])} {cell(x['modality'])} "
                    f"#{cell(x['series_number'])} {x['instances']} instances"
                    + (f" {cell(x['description'])}" if x["description"] else "")
                    for x in data["series"]
                ]
                + ["events:"]
                + [
                    f"  {e['at']:%Y-%m-%d %H:%M:%S} {e['from'] or '-'} -> {e['to']}: "
                    f"{cell(e['reason'])}"
                    for e in data["events"]
                ]
            )
            return print_result(args, data, text)
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
