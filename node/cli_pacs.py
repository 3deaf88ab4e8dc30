"""``courier pacs find|echo``: the PACS in node.yaml's ``pacs:`` section, from the shell,
and the C-FIND behind ``courier request create --pull``.

Exit status as in :mod:`node.cli` (0 success, 1 not found, 2 bad usage or invalid
configuration, 3 the database is unavailable), plus :data:`EXIT_PACS` (4): the PACS
could not be reached, refused us, or answered a failure (the message says what to do).
The patient ID and the studies are printed for the staff member who asked; nothing of
them is logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from node.config import Config
from node.output import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, cell, print_result
from node.pulls import Wanted
from release.validation import RequestDraft
from scp.pacs import PacsError, StudyHit, echo, find_studies
from scp.pacs_settings import PacsSettings

EXIT_PACS = 4
"""The PACS is unreachable, refused the association, or answered a failure status."""

_NO_PACS = (
    "no pacs: section in node.yaml; add one (ae_title, host, port of the PACS: see the "
    "commented example in the shipped node.yaml) and check it with `courier pacs echo`"
)


class PullRefused(Exception):
    """``request create --pull`` cannot go ahead; ``status`` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_pacs_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``pacs find|echo`` under ``subparsers`` (the action lands in ``args.pacs_action``)."""
    pacs = subparsers.add_parser("pacs", help="query the PACS in node.yaml's pacs: section")
    actions = pacs.add_subparsers(dest="pacs_action", required=True, metavar="ACTION")
    find = actions.add_parser(
        "find",
        parents=[common, as_json],
        help="list a patient's studies on the PACS with their instance counts "
        "(exit 1: none; 4: PACS unreachable or refusing)",
    )
    find.add_argument("--patient-id", required=True, help="patient ID / MRN, exactly")
    actions.add_parser(
        "echo", parents=[common, as_json], help="C-ECHO the PACS (exit 4 when it fails)"
    )


def run_pacs_command(args: argparse.Namespace, cfg: Config) -> int:
    """Run the ``pacs`` action in ``args``; returns the exit status."""
    if cfg.pacs is None:
        return _fail(args, EXIT_USAGE, _NO_PACS)
    try:
        if args.pacs_action == "echo":
            echo(cfg.pacs)
            data = {"ok": True, "pacs": cfg.pacs.ae_title, "calling_ae_title": cfg.pacs.calling}
            return print_result(args, data, f"{_name(cfg.pacs)}: C-ECHO OK")
        if args.pacs_action == "find":
            return _find(args, cfg.pacs)
    except PacsError as exc:
        return _fail(args, EXIT_PACS, str(exc))
    except ValueError as exc:
        return _fail(args, EXIT_USAGE, f"--patient-id: {exc}")
    return EXIT_USAGE


def _find(args: argparse.Namespace, settings: PacsSettings) -> int:
    hits = find_studies(settings, args.patient_id)
    data = {
        "patient_id": args.patient_id,
        "pacs": settings.ae_title,
        "studies": [h.as_dict() for h in hits],
    }
    if not hits:
        print_result(args, data, f"no studies for patient {args.patient_id} on {_name(settings)}")
        return EXIT_NOT_FOUND
    lines = [f"patient {args.patient_id} on {_name(settings)}: {len(hits)} study(ies)"]
    lines.append(
        f"{'STUDY UID':<64} {'DATE':<8} {'MODALITY':<9} {'ACCESSION':<16} {'INST':>6} DESCRIPTION"
    )
    lines += [
        f"{cell(h.study_uid, 64)} {cell(h.study_date, 8)} {cell(h.modalities, 9)} "
        f"{cell(h.accession, 16)} {'?' if h.instances is None else h.instances:>6} "
        f"{cell(h.description)}"
        for h in hits
    ]
    lines.append("pull with: courier request create ... --pull --study-uid UID (or --accession)")
    print_result(args, data, "\n".join(lines))
    return EXIT_OK


def pull_selection(
    cfg: Config, draft: RequestDraft, study_uids: list[str], accessions: list[str]
) -> tuple[RequestDraft, list[Wanted], list[str]]:
    """For ``request create --pull``: look the chosen studies up on the PACS (C-FIND
    for the draft's patient) and return the draft selecting them by Study UID with the
    PACS's instance counts as ``expected``, the studies to pull, and warnings for staff.

    Raises :class:`PullRefused`: no ``pacs:`` section (2), a chosen study the PACS does
    not hold for this patient (1), the PACS unreachable or refusing (4).
    """
    if cfg.pacs is None:
        raise PullRefused(_NO_PACS, EXIT_USAGE)
    try:
        hits = find_studies(cfg.pacs, draft.patient_id)
    except PacsError as exc:
        raise PullRefused(str(exc), EXIT_PACS) from None
    chosen: dict[str, StudyHit] = {}
    by_uid = {h.study_uid: h for h in hits}
    for uid in study_uids:
        if uid not in by_uid:
            raise PullRefused(_not_held("--study-uid", uid, cfg.pacs), EXIT_NOT_FOUND)
        chosen[uid] = by_uid[uid]
    for accession in accessions:
        found = [h for h in hits if h.accession == accession]
        if not found:
            raise PullRefused(_not_held("--accession", accession, cfg.pacs), EXIT_NOT_FOUND)
        chosen.update((h.study_uid, h) for h in found)
    counts = {uid: h.instances if h.instances else None for uid, h in chosen.items()}
    warnings = [
        f"the PACS gave no instance count for study {uid}: it is complete when stable"
        for uid, n in counts.items()
        if n is None
    ]
    selection: list[dict[str, Any]] = [
        {"kind": "study_uid", "value": uid, "expected_instances": n} for uid, n in counts.items()
    ]
    new = RequestDraft.model_validate({**draft.model_dump(), "selection": selection})
    wanted = [Wanted(uid, n) for uid, n in counts.items()]
    return new, wanted, warnings


def _not_held(option: str, value: str, settings: PacsSettings) -> str:
    return (
        f"{option} {value}: {_name(settings)} holds no such study for this patient; "
        "list theirs with `courier pacs find --patient-id ...`"
    )


def _name(settings: PacsSettings) -> str:
    return f"PACS {settings.ae_title} at {settings.host}:{settings.port}"


def _fail(args: argparse.Namespace, status: int, message: str) -> int:
    print(f"courier: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    return status
