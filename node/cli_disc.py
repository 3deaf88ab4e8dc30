"""``courier export-iso REFERENCE OUT.iso``: a request's studies as a disc image to burn.

The CD fallback for a patient who cannot use the link: the request's stored instances
go into an ISO 9660 image laid out as an IHE PDI medium (:mod:`delivery.disc`), and the
request's timeline records ``disc image written (N instances)`` by ``cli:<login>``. The
request's state does not change; any request but a cancelled one can be exported (an
overdue one with what has arrived so far).

Exit status as in :mod:`node.cli`: 0 written; 1 not found or refused (unknown reference,
cancelled request, no stored instance, an instance file missing or unreadable, OUT exists
without ``--force``, the write failed); 2 bad usage (OUT's folder is missing or not
writable, OUT is a folder) or invalid configuration; 3 the database is unavailable.
``--json`` prints the result (or ``{"error": ...}``) on stdout. Output names the file,
its size and counts; no patient data is printed or logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.orm import Session, sessionmaker

from delivery.disc import DiscExistsError, DiscResult, DiscTargetError, write_disc_image
from delivery.disc import Progress as DiscProgress
from delivery.packaging.errors import PackageError
from delivery.packaging.items import package_items
from delivery.packaging.package import PackageInfo
from node.cli_requests import cli_actor  # the one way CLI commands name their operator
from node.config import Config
from node.output import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, cell, print_result
from node.stores import open_store
from release.errors import InvalidTransition, RequestError
from release.records import event_dict
from release.requests import RequestBook
from store.audit import actor_of, record
from store.catalog import guarded
from store.errors import StoreError
from store.models import ReleaseRequest, RequestEvent, RequestState, utcnow


def add_disc_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``export-iso``."""
    export = subparsers.add_parser(
        "export-iso",
        parents=[common, as_json],
        help="write a request's studies as a CD/DVD image (ISO 9660, IHE PDI layout)",
    )
    export.add_argument("reference", help="request reference (e.g. CR-7KQ4-M2XD-9) or id")
    export.add_argument("out", type=Path, metavar="OUT.iso", help="the image file to write")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run_export_iso(args: argparse.Namespace, cfg: Config) -> int:
    """``courier export-iso``; returns the exit status."""
    try:
        engine, sessions, content = open_store(cfg)
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    try:
        book = RequestBook(sessions)
        req = book.get(args.reference)
        if req.state == RequestState.CANCELLED:
            return _fail(
                args,
                EXIT_NOT_FOUND,
                f"request {req.reference} is cancelled: its studies are not to be released",
            )
        from delivery.disc_images import delivered_report_files, delivered_studies

        items = package_items(sessions, content, req.id, report_studies=delivered_studies)
        info = PackageInfo(
            reference=req.reference,
            language=req.language,
            contact=cfg.delivery.contact,
            created=utcnow(),
            reports=delivered_report_files(sessions, content, req.id, req.language),
        )
        with _bar(bool(args.json), req.reference) as progress:
            result = write_disc_image(
                items,
                args.out,
                info=info,
                force=args.force,
                progress=progress,
                viewer=cfg.delivery.offline_viewer_options(),
            )
        reason = f"disc image written ({result.instances} instances)"
        try:
            event = _record(book, sessions, req.id, reason, {i.study_uid for i in items})
        except (StoreError, RequestError) as exc:
            status = EXIT_UNAVAILABLE if isinstance(exc, StoreError) else EXIT_NOT_FOUND
            return _fail(
                args,
                status,
                f"the disc image is at {result.path}, but the request's timeline could not "
                f"record it ({exc}); note it by hand",
            )
    except DiscExistsError as exc:
        return _fail(args, EXIT_NOT_FOUND, str(exc))
    except DiscTargetError as exc:
        return _fail(args, EXIT_USAGE, str(exc))
    except (RequestError, PackageError) as exc:
        return _fail(args, EXIT_NOT_FOUND, str(exc))
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    finally:
        engine.dispose()
    return print_result(args, _data(req.reference, result, event), _text(req.reference, result))


def _record(
    book: RequestBook,
    sessions: sessionmaker[Session],
    request_id: int,
    reason: str,
    studies: set[str],
) -> RequestEvent:
    """Note ``reason`` in the request's timeline (its state stays as it is), and audit
    the export in the same transaction (the image's path is not recorded: staff name
    files, sometimes after the patient)."""
    for _ in range(3):  # the state may move under us (a batch, a sweep): note it again
        try:
            with guarded(sessions) as s, s.begin():
                req = s.get(ReleaseRequest, request_id)
                assert req is not None  # requests are never deleted
                state = RequestState(req.state)
                event = book.move(s, req, state, state, cli_actor(), reason, utcnow())
                record(
                    s,
                    "export",
                    actor=actor_of("cli", cli_actor().removeprefix("cli:")),
                    studies=sorted(studies),
                    request=req.reference,
                    detail=f"{reason} for a CD/DVD",
                    at=event.at,
                )
                return event
        except InvalidTransition:
            continue
    raise InvalidTransition("the request kept changing while its timeline was written")


def _medium(result: DiscResult) -> str:
    if result.medium == "CD":
        return "fits a CD (700 MB)"
    if result.medium == "DVD":
        return "needs a DVD (4.7 GB)"
    return "larger than a single-layer DVD: burn it to a double-layer DVD or a Blu-ray"


def _data(reference: str, result: DiscResult, event: RequestEvent) -> dict[str, Any]:
    return {
        "reference": reference,
        "path": str(result.path),
        "size": result.size,
        "sha256": result.sha256,
        "volume_id": result.volume_id,
        "medium": result.medium,
        "studies": result.studies,
        "series": result.series,
        "instances": result.instances,
        "notes": list(result.notes),
        "event": event_dict(event),
    }


def _text(reference: str, result: DiscResult) -> str:
    lines = [
        f"{reference}: disc image written to {result.path}",
        f"  {result.size / 1e6:.1f} MB, {_medium(result)}; volume {result.volume_id}",
        f"  {result.studies} studies, {result.series} series, {result.instances} instances",
        f"  SHA-256 {result.sha256}",
    ]
    lines += [f"  note: {cell(n)}" for n in result.notes]
    return "\n".join(lines)


def _fail(args: argparse.Namespace, status: int, message: str) -> int:
    print(f"courier: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    return status


@contextmanager
def _bar(quiet: bool, reference: str) -> Iterator[DiscProgress | None]:
    """A progress bar of image bytes written (none with ``--json``)."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bars:
        task = bars.add_task(reference, total=None)

        def update(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        yield update
