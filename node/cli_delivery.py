"""``courier deliver --now`` and ``courier outbox list``.

``deliver --now`` packages every ready request at once (whatever the window), with a
progress bar while it packages, then hands what is due in the outbox to the channels.
A running node may deliver at the same time: requests and outbox rows are claimed in
the database, so nothing is packaged or sent twice. ``outbox list`` shows notifications
and their attempts (staff alerts held for want of ``delivery.staff_email`` included);
recipients are shown to the staff member who asked, never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select

from delivery.packaging.package import Progress as PackageProgress
from node.config import Config
from node.delivery import DeliveryService
from node.output import cell, print_result
from node.stores import open_store
from store.catalog import guarded
from store.models import Notification, NotificationState, ReleaseRequest


def add_delivery_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``deliver`` and ``outbox list``."""
    deliver = subparsers.add_parser(
        "deliver",
        parents=[common, as_json],
        help="package ready requests and send their links now",
    )
    deliver.add_argument(
        "--now", action="store_true", required=True, help="run a batch at once, whatever the window"
    )
    deliver.add_argument("--urgent-only", action="store_true", help="only urgency 'now'")
    outbox = subparsers.add_parser("outbox", help="notifications and their attempts")
    actions = outbox.add_subparsers(dest="outbox_action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", parents=[common, as_json], help="list notifications")
    ls.add_argument("--state", choices=[str(s) for s in NotificationState])
    ls.add_argument("--limit", type=int, default=100)


def run_deliver(args: argparse.Namespace, cfg: Config) -> int:
    """``courier deliver --now``."""
    engine, sessions, content = open_store(cfg)
    try:
        service = DeliveryService(cfg, sessions, content)
        quiet = bool(args.json)
        with _bars(quiet) as progress:
            report = service.batch.run(urgent_only=args.urgent_only, progress=progress)
        sent = asyncio.run(service.drain())
    finally:
        engine.dispose()
    data = {
        "notified": report.notified,
        "failed": report.failed,
        "skipped": report.skipped,
        "messages_sent": sent,
    }
    text = (
        f"packaged and notified: {len(report.notified)} {' '.join(report.notified)}\n"
        f"failed: {len(report.failed)} {' '.join(report.failed)}\n"
        f"messages sent now: {sent} (the rest are retried by the running node)"
    )
    print_result(args, data, text)
    return 1 if report.failed else 0


@contextmanager
def _bars(quiet: bool) -> Iterator[Any]:
    """``progress(reference)`` giving each package a bar (bytes copied of all bytes)."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    ) as bars:

        def for_package(reference: str) -> PackageProgress:
            task = bars.add_task(reference, total=None)

            def update(done: int, total: int) -> None:
                bars.update(task, completed=done, total=total)

            return update

        yield for_package


def run_outbox(args: argparse.Namespace, cfg: Config) -> int:
    """``courier outbox list``."""
    engine, sessions, _content = open_store(cfg)
    try:
        q = (
            select(Notification, ReleaseRequest.reference)
            .outerjoin(ReleaseRequest, ReleaseRequest.id == Notification.request_id)
            .order_by(Notification.id.desc())
            .limit(args.limit)
        )
        if args.state:
            q = q.where(Notification.state == args.state)
        with guarded(sessions) as s:
            rows = [_row(n, ref) for n, ref in s.execute(q)]
    finally:
        engine.dispose()
    lines = [f"{'ID':>6} {'KIND':<28} {'STATE':<8} {'TRIES':>5} {'REQUEST':<16} LAST ERROR"]
    lines += [
        f"{r['id']:>6} {r['kind']:<28} {r['state']:<8} {r['attempts']:>5} "
        f"{r['reference'] or '-':<16} {cell(r['last_error'][:60])}"
        for r in rows
    ]
    return print_result(args, rows, "\n".join(lines))


def _row(n: Notification, reference: str | None) -> dict[str, Any]:
    return {
        "id": n.id,
        "kind": n.kind,
        "channel": n.channel,
        "recipient": n.recipient,
        "state": n.state,
        "attempts": n.attempts,
        "reference": reference,
        "params": json.loads(n.params or "{}"),
        "created_at": n.created_at,
        "next_attempt_at": n.next_attempt_at,
        "sent_at": n.sent_at,
        "provider_id": n.provider_id,
        "last_error": n.last_error,
    }
