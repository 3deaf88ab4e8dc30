"""``courier audit``: the audit trail, filtered.

``courier audit [--request REF] [--since ISO] [--type T] [--limit N] [--json]`` lists
events oldest first (the last ``--limit``, default 200). ``--request`` keeps what names
the request and what names a study attached to it (its studies' arrival, export,
purge); ``--since`` takes a date or a time (ISO 8601; without a zone, UTC); ``--type``
a kind (``instances-stored``, ``export``, …) or a group (``purge``,
``authentication``). Rows hold no patient data, so neither does the output.

Exit status as in :mod:`node.cli`: 0 listed (even none), 2 bad usage, 3 the database is
unavailable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from node.audit_format import event_dict
from node.config import Config
from node.output import EXIT_USAGE, cell, print_result
from node.stores import open_store
from store.audit import GROUPS, KINDS, AuditError, events, kinds_for
from store.catalog import guarded


def add_audit_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``audit``."""
    p = subparsers.add_parser(
        "audit",
        parents=[common, as_json],
        help="list the audit trail (received, exported, purged, sign-ins, start/stop)",
    )
    p.add_argument("--request", metavar="REF", help="only events of this request")
    p.add_argument("--since", metavar="ISO", help="only events at or after this date/time")
    p.add_argument(
        "--type",
        metavar="T",
        choices=sorted(KINDS) + sorted(GROUPS),
        help=f"only this kind of event: {', '.join(sorted(KINDS) + sorted(GROUPS))}",
    )
    p.add_argument("--limit", type=int, default=200, help="at most this many (the latest)")


def parse_since(text: str) -> datetime:
    """``text`` (ISO 8601 date or date-time) as an aware UTC time; naive means UTC.
    Raises ValueError naming the value."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r} is not an ISO 8601 date or time (e.g. 2026-03-01 or "
            "2026-03-01T08:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def run_audit(args: argparse.Namespace, cfg: Config) -> int:
    """``courier audit``; returns the exit status."""
    try:
        since = parse_since(args.since) if args.since else None
        kinds = kinds_for(args.type) if args.type else ()
    except (ValueError, AuditError) as exc:
        print(f"courier: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit < 1:
        print("courier: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    engine, sessions, _content = open_store(cfg)
    try:
        with guarded(sessions) as s:
            rows = [
                event_dict(e)
                for e in events(
                    s,
                    request=(args.request or "").strip().upper() or None,
                    since=since,
                    kinds=kinds,
                    limit=args.limit,
                )
            ]
    finally:
        engine.dispose()
    lines = [f"{'AT':<24} {'TYPE':<18} {'OUT':>3} {'ACTOR':<20} {'REQUEST':<15} DETAIL"]
    for r in rows:
        studies = r["studies"]
        lines.append(
            f"{r['at']:<24} {r['type']:<18} {r['outcome']:>3} {cell(r['actor'][:20], 20)} "
            f"{cell(r['request'] or '-', 15)} {cell(r['detail'])}"
        )
        lines += [f"{'':<24} study {uid}" for uid in studies]
    if not rows:
        lines.append("(no events)")
    return print_result(args, rows, "\n".join(lines))
