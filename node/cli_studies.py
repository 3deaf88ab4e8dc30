"""``courier studies list|show``: what arrived, read from the index database."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import func, select

from node.config import Config
from node.output import EXIT_NOT_FOUND, cell, fields, print_result
from node.stores import open_store
from store.catalog import guarded
from store.models import (
    Instance,
    InstanceConflict,
    RequestStudy,
    Study,
    StudyDecision,
    StudyState,
)


def add_studies_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``studies list|show``."""
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


def run_studies(args: argparse.Namespace, cfg: Config) -> int:
    """``courier studies list|show``; returns the exit status."""
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
