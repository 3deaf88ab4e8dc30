"""``courier request create|list|show|cancel|resend``: release requests from the shell.

:func:`add_request_parsers` adds the commands to ``courier``'s parser and
:func:`run_request_command` runs one. Exit status as in :mod:`node.cli`: 0 success,
1 not found or refused (a forbidden transition, a reused idempotency key), 2 bad input
(each problem printed as ``--option: message`` on stderr; nothing is written), 3 the
database is unavailable. ``--json`` prints data (and, on bad input, the errors) as JSON
on stdout. The output shows patient data to the staff member who asked; nothing of it
is logged.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from delivery.outbox import Outbox, link_status, queue_link_again
from node.config import Config
from node.output import (
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    cell,
    fields,
    print_result,
)
from node.stores import open_store
from release.errors import InvalidRequest, RequestConflict, RequestError
from release.languages import SUPPORTED_LANGUAGES
from release.records import event_dict, request_dict
from release.requests import RequestBook
from store.errors import StoreError
from store.models import ReleaseRequest, RequestEvent, RequestState, Urgency, utcnow

if TYPE_CHECKING:
    from node.pulls import Wanted
    from release.validation import RequestDraft

# Draft fields as the options that set them, so an error names what the user typed.
_OPTIONS = {
    "patient_id": "--patient-id",
    "patient_name": "--patient-name",
    "patient_birth_date": "--birth-date",
    "patient_issuer": "--issuer",
    "recipient_email": "--email",
    "second_channel": "--second-channel",
    "backup_email": "--backup-email",
    "language": "--language",
    "urgency": "--urgency",
    "link_days": "--link-days",
    "note": "--note",
    "requested_by": "--requested-by",
    "idempotency_key": "--idempotency-key",
    "by_reference": "--by-reference",
    "destination": "--to-dicom",
}


def add_request_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``request create|list|show|cancel|resend`` under ``subparsers``.

    ``common`` carries ``--config``, ``as_json`` carries ``--json``; the chosen action
    lands in ``args.request_action``.
    """
    request = subparsers.add_parser("request", help="release requests (create, list, ...)")
    actions = request.add_subparsers(dest="request_action", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create", parents=[common, as_json], help="ask for a patient's studies to be released"
    )
    create.add_argument("--patient-id", required=True, help="patient ID / MRN")
    create.add_argument("--patient-name", required=True)
    create.add_argument("--birth-date", required=True, metavar="YYYYMMDD")
    create.add_argument(
        "--issuer",
        default="",
        help="Issuer of Patient ID (the ID's domain); compared with the studies' when they "
        "carry one",
    )
    create.add_argument("--email", help="where the link is sent (required unless --to-dicom)")
    create.add_argument(
        "--second-channel",
        metavar="sms:+E164|email:ADDR",
        help="where the code is sent; never the --email address (required unless --to-dicom)",
    )
    create.add_argument(
        "--to-dicom",
        metavar="AE@HOST:PORT",
        help="send the studies to another hospital's DICOM node by C-STORE instead of "
        "a link to a person (no --email, --second-channel or --backup-email then)",
    )
    create.add_argument(
        "--commitment",
        choices=["auto", "required", "off"],
        help="with --to-dicom: ask the receiving node to commit to storing the studies "
        "(auto: when it supports storage commitment; the default)",
    )
    create.add_argument(
        "--backup-email",
        metavar="ADDR",
        help="with an sms second channel: where the code goes if the number is refused "
        "(invalid, not a mobile, unsubscribed); never the --email address",
    )
    create.add_argument(
        "--accession", action="append", default=[], help="accession number (repeatable)"
    )
    create.add_argument(
        "--study-uid", action="append", default=[], help="Study Instance UID (repeatable)"
    )
    create.add_argument(
        "--by-reference",
        action="store_true",
        help="also take whatever arrives tagged with this request's reference",
    )
    create.add_argument(
        "--expected",
        type=int,
        metavar="N",
        help="expected number of instances (only with a single --accession or --study-uid)",
    )
    create.add_argument(
        "--pull",
        action="store_true",
        help="ask the PACS (node.yaml pacs:) to send the chosen --study-uid/--accession "
        "studies of this patient (C-MOVE, retried by the running node); the PACS's "
        "instance counts become the expected counts (see `courier pacs find`)",
    )
    create.add_argument("--language", default="en", help=f"one of {', '.join(SUPPORTED_LANGUAGES)}")
    create.add_argument("--urgency", default=Urgency.OVERNIGHT, help="overnight (default) or now")
    create.add_argument("--link-days", type=int, default=30, help="link lifetime, 1-365 days")
    create.add_argument(
        "--tell-patient-when",
        action="store_true",
        help="if the release policy holds the request (an embargo, the wait for the "
        "report), email the patient when to expect their link",
    )
    create.add_argument("--note", default="", help="free text for staff (at most 2000 characters)")
    create.add_argument("--requested-by", help="who asked (default: your login name)")
    create.add_argument("--idempotency-key", help="the same key again returns the same request")

    ls = actions.add_parser("list", parents=[common, as_json], help="list requests, newest first")
    ls.add_argument("--state", choices=[s.value for s in RequestState])
    ls.add_argument(
        "--held",
        nargs="?",
        const="held",
        choices=("held", "embargo", "report", "max_wait_passed", "rule_missing", "staff"),
        help="only those a release hold keeps back now (any hold; or one kind: embargo, "
        "report, max_wait_passed: the report did not come in time, rule_missing: a study's "
        "rule no longer exists, staff: held by staff)",
    )
    ls.add_argument("--limit", type=int, default=100)

    show = actions.add_parser(
        "show", parents=[common, as_json], help="one request, its selection and its timeline"
    )
    show.add_argument("reference", help="reference (e.g. CR-7KQ4-M2XD-9) or id")

    cancel = actions.add_parser("cancel", parents=[common, as_json], help="cancel a request")
    cancel.add_argument("reference")
    cancel.add_argument("--reason", required=True, help="why (kept in the timeline)")

    resend = actions.add_parser(
        "resend", parents=[common, as_json], help="send the link of a notified request again"
    )
    resend.add_argument("reference")
    resend.add_argument("--reason", default="resend requested")


def run_request_command(args: argparse.Namespace, cfg: Config) -> int:
    """Run the ``request`` action in ``args``; returns the exit status."""
    draft: RequestDraft | None = None
    pulls: list[Wanted] = []
    phones = None
    if args.request_action == "create":
        # The validators (pydantic's, phonenumbers, email_validator) only to create.
        from pydantic import ValidationError

        from release.phonepolicy import PhonePolicy
        from release.validation import RequestDraft, validation_errors

        phones = PhonePolicy(frozenset(cfg.sms.allowed_countries))
        errors = _create_errors(args)
        if not errors:
            try:
                draft = RequestDraft.model_validate(_draft_data(args))
            except ValidationError as exc:
                errors = [_with_option(e, args) for e in validation_errors(exc)]
        if errors:
            return _refuse_input(args, errors)
        if args.pull and draft is not None:
            # The PACS side (pynetdicom) only when a pull is asked for (node.cli: fast CLI).
            from node.cli_pacs import PullRefused, pull_selection

            try:
                draft, pulls, warnings = pull_selection(cfg, draft, args.study_uid, args.accession)
            except PullRefused as exc:
                return _fail(args, exc.status, str(exc))
            for warning in warnings:
                print(f"courier: warning: {warning}", file=sys.stderr)
    try:
        engine, sessions, _content = open_store(cfg)
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    book = RequestBook(sessions, phones=phones)
    try:
        if draft is not None:
            if cfg.pacs is not None and pulls:
                from node.pulls import PullQueue

                queue = PullQueue(sessions, cfg.pacs)
                return _create(args, book, draft, lambda rid: queue.enqueue(rid, pulls))
            return _create(args, book, draft)
        if args.request_action == "list":
            return _list(args, book, sessions)
        if args.request_action == "show":
            return _show(args, book, sessions)
        if args.request_action == "cancel":
            event = book.cancel(args.reference, cli_actor(), args.reason)
            return _event_done(args, book, event, "cancelled")
        if args.request_action == "resend":
            from node.delivery import message_domain

            outbox = Outbox(domain=message_domain(cfg), staff_email=cfg.delivery.staff_email)

            def send(s: Session, req: ReleaseRequest) -> None:
                queue_link_again(s, outbox, req, utcnow())

            event = book.resend(args.reference, cli_actor(), args.reason, send=send)
            return _event_done(
                args, book, event, "link email queued again (the running node sends it)"
            )
        return EXIT_USAGE
    except InvalidRequest as exc:
        return _fail(args, EXIT_USAGE, str(exc))
    except RequestConflict as exc:
        error = {"field": "idempotency_key", "option": "--idempotency-key", "message": str(exc)}
        return _refuse_input(args, [error], status=EXIT_NOT_FOUND)
    except RequestError as exc:
        return _fail(args, EXIT_NOT_FOUND, str(exc))
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    finally:
        engine.dispose()


def cli_actor() -> str:
    """Who runs the command, as recorded in the timeline."""
    return f"cli:{_login()}"


def _create_errors(args: argparse.Namespace) -> list[dict[str, str]]:
    """Problems only the command line can have (before the draft is validated)."""
    if args.commitment is not None and args.to_dicom is None:
        return [
            {
                "field": "destination.commitment",
                "option": "--commitment",
                "message": "applies to a DICOM destination only; add --to-dicom AE@HOST:PORT",
            }
        ]
    if args.to_dicom is not None and _destination(args.to_dicom, None) is None:
        return [
            {
                "field": "destination",
                "option": "--to-dicom",
                "message": "expected AE@HOST:PORT, e.g. PACS2@pacs.example.org:104 "
                "(an IPv6 address in brackets: PACS2@[2001:db8::1]:104)",
            }
        ]
    if args.pull and (args.expected is not None or args.by_reference):
        return [
            {
                "field": "selection",
                "option": "--pull",
                "message": "the PACS gives the expected counts and the studies: leave out "
                "--expected and --by-reference",
            }
        ]
    if args.pull and not (args.accession or args.study_uid):
        return [
            {
                "field": "selection",
                "option": "--pull",
                "message": "choose the studies to pull with --study-uid or --accession "
                "(list them with `courier pacs find --patient-id ...`)",
            }
        ]
    if args.expected is not None and len(args.accession) + len(args.study_uid) != 1:
        return [
            {
                "field": "selection.0.expected_instances",
                "option": "--expected",
                "message": "applies to a single --accession or --study-uid; give exactly one",
            }
        ]
    return []


def _draft_data(args: argparse.Namespace) -> dict[str, Any]:
    selection: list[dict[str, Any]] = [{"kind": "accession", "value": v} for v in args.accession]
    selection += [{"kind": "study_uid", "value": v} for v in args.study_uid]
    if args.expected is not None:
        selection[0]["expected_instances"] = args.expected
    data: dict[str, Any] = {
        "patient_id": args.patient_id,
        "patient_name": args.patient_name,
        "patient_birth_date": args.birth_date,
        "patient_issuer": args.issuer,
        "recipient_email": args.email,
        "second_channel": args.second_channel,
        "backup_email": args.backup_email,
        "selection": selection,
        "by_reference": args.by_reference,
        "language": args.language,
        "urgency": args.urgency,
        "link_days": args.link_days,
        "tell_patient_when": args.tell_patient_when,
        "note": args.note,
        "requested_by": args.requested_by or _login(),
    }
    if args.idempotency_key is not None:
        data["idempotency_key"] = args.idempotency_key
    if args.to_dicom is not None:
        data["destination"] = _destination(args.to_dicom, args.commitment)
    return data


def _destination(value: str, commitment: str | None) -> dict[str, Any] | None:
    """``AE@HOST:PORT`` as the draft's destination (validated there); None when it does
    not have that shape. The AE title may itself hold an ``@``: the last one splits."""
    ae_title, at, rest = value.rpartition("@")
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        ok = bool(bracket) and port.startswith(":")
        port = port[1:]
    else:
        host, colon, port = rest.rpartition(":")
        ok = bool(colon)
    if not at or not ok or not host or not port:
        return None
    data: dict[str, Any] = {"ae_title": ae_title, "host": host, "port": port}
    if commitment is not None:
        data["commitment"] = commitment
    return data


def _with_option(error: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    field = error["field"]
    option = _OPTIONS.get(field, "")
    parts = field.split(".")
    if field == "destination.commitment":
        option = "--commitment"
    elif parts[0] == "destination":
        option = "--to-dicom"
    if parts[0] == "selection":
        option = "--accession/--study-uid"
        if len(parts) > 1 and parts[1].isdigit():
            index = int(parts[1])
            option = "--accession" if index < len(args.accession) else "--study-uid"
            if parts[-1] == "expected_instances":
                option = "--expected"
    return {**error, "option": option or field}


def _refuse_input(
    args: argparse.Namespace, errors: list[dict[str, str]], status: int = EXIT_USAGE
) -> int:
    print("courier: request refused; nothing was stored:", file=sys.stderr)
    for e in errors:
        print(f"  {e['option']}: {e['message']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"errors": errors}, indent=2))
    return status


def _fail(args: argparse.Namespace, status: int, message: str) -> int:
    print(f"courier: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    return status


def _create(
    args: argparse.Namespace,
    book: RequestBook,
    draft: RequestDraft,
    pull: Callable[[int], int] | None = None,
) -> int:
    req, created = book.submit(draft, cli_actor())
    data = {**request_dict(req), "created": created}
    verb = "created" if created else "already exists (same idempotency key)"
    text = f"{req.reference} {verb}: {req.state}"
    if pull is not None:
        # After the request's own transaction: the same command again (same idempotency
        # key) queues whatever a crash in between left out.
        data["pulls_queued"] = pull(req.id)
        text += f"; {data['pulls_queued']} study(ies) queued to pull from the PACS"
    return print_result(args, data, text)


def _list(args: argparse.Namespace, book: RequestBook, sessions: sessionmaker[Session]) -> int:
    from release.holds import held_at, held_now

    now = utcnow()
    state = RequestState(args.state) if args.state else None
    where = held_now(now, args.held) if args.held else None
    found = book.list(state=state, limit=args.limit, where=where)
    rows = [request_dict(r) for r in found]
    links = link_status(sessions, [r["id"] for r in rows])
    for r in rows:  # "notified" is not "told": the link email's own status beside it
        r["link_email"] = links.get(r["id"])
    # The hold that keeps it back now ("-": none, or it ended / it was packaged since).
    holds = [req.hold_kind if held_at(req, now) else "-" for req in found]
    lines = [
        f"{'REFERENCE':<15} {'STATE':<10} {'URGENCY':<9} {'SELECTED':>8} {'LINK':<8} "
        f"{'CREATED':<16} HOLD"
    ]
    lines += [
        f"{cell(r['reference'], 15)} {r['state']:<10} {r['urgency']:<9} "
        f"{len(r['selection']):>8} {(r['link_email'] or {}).get('status', '-'):<8} "
        f"{r['created_at']:%Y-%m-%d %H:%M} {hold}"
        for r, hold in zip(rows, holds, strict=True)
    ]
    return print_result(args, rows, "\n".join(lines))


def _show(args: argparse.Namespace, book: RequestBook, sessions: sessionmaker[Session]) -> int:
    req = book.get(args.reference)
    data = request_dict(req)
    data["link_email"] = link = link_status(sessions, [req.id]).get(req.id)
    data["timeline"] = [event_dict(e) for e in book.timeline(req.id)]
    lines = fields(data, skip=("selection", "timeline", "link_email"))
    lines.append(
        f"link_email: {link['text']} ({link['since']:%Y-%m-%d %H:%M:%S})"
        if link
        else "link_email: -"
    )
    lines.append("selection:")
    lines += [
        f"  {s['kind']} {cell(s['value'])}"
        + (f" ({s['expected_instances']} instances)" if s["expected_instances"] else "")
        for s in data["selection"]
    ]
    lines.append("timeline:")
    lines += [
        f"  {e['at']:%Y-%m-%d %H:%M:%S} {e['from'] or '-'} -> {e['to']} by {cell(e['actor'])}"
        + (f": {cell(e['reason'])}" if e["reason"] else "")
        for e in data["timeline"]
    ]
    return print_result(args, data, "\n".join(lines))


def _event_done(args: argparse.Namespace, book: RequestBook, event: RequestEvent, text: str) -> int:
    req = book.get(event.request_id)
    data = {"reference": req.reference, "state": str(req.state), "event": event_dict(event)}
    return print_result(args, data, f"{req.reference}: {text}")


def _login() -> str:
    """The operator's login name ($USER may be unset, e.g. under cron or in a container)."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
