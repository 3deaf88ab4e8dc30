"""``courier report``: the figures of the staff Reports page, for the hospital's own
reporting.

``courier report [--days 30|365] [--json]`` prints, for the last ``--days`` UTC days
(default 30, today included), what :mod:`release.report` computes: requests per day by
outcome, time from request to first download per ISO week (median and 90th percentile,
in hours), failures by cause. ``--json`` gives :meth:`release.report.Report.as_dict`;
the text form lists totals, the weeks, the causes, then only the days with something in
them. No patient data: counts and times.

This module imports only ``argparse`` when the CLI starts; the store and the report are
imported when the command runs, so other commands do not pay for them.

Exit status as in :mod:`node.cli`: 0 printed (even all zeros), 2 bad usage or
configuration, 3 the database is unavailable.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config import Config
    from release.report import Report

PERIODS = (30, 365)  # release.report.PERIODS, kept here so the parser needs no import


def add_report_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``report``."""
    p = subparsers.add_parser(
        "report",
        parents=[common, as_json],
        help="requests by outcome per day, time to first download, failures by cause",
    )
    p.add_argument(
        "--days",
        type=int,
        choices=PERIODS,
        default=PERIODS[0],
        help="the period: the last 30 or 365 UTC days, today included (default 30)",
    )


def run_report(args: argparse.Namespace, cfg: Config) -> int:
    """``courier report``; returns the exit status."""
    from node.output import print_result
    from node.stores import open_store
    from release.report import Reports

    engine, sessions, _content = open_store(cfg)
    try:  # a database that is down raises StoreError: exit 3 (node.cli)
        report = Reports(sessions).build(args.days)
    finally:
        engine.dispose()
    return print_result(args, report.as_dict(), report_text(report))


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_text(report: Report) -> str:
    """The report as a few plain tables (the days with nothing in them left out)."""
    from release.report import CAUSES, OUTCOMES

    keys = list(OUTCOMES)
    lines = [
        f"Requests by outcome, {report.since:%Y-%m-%d} to {report.until:%Y-%m-%d %H:%M} UTC "
        f"({report.days} days)",
    ]
    lines += [f"  {OUTCOMES[k]:<34} {report.totals.get(k, 0):>7}" for k in keys]
    lines += ["", "Time from request to first download, by ISO week (hours)"]
    lines.append(f"  {'WEEK':<9} {'DOWNLOADS':>9} {'MEDIAN':>8} {'90TH':>8} {'UNDER 2 DAYS':>12}")
    for w in report.weeks:
        lines.append(
            f"  {w.week:<9} {w.downloads:>9} {_hours(w.median_h):>8} {_hours(w.p90_h):>8} "
            f"{w.under_2_days:>12}"
        )
    lines += ["", "Failures by cause"]
    lines += [f"  {CAUSES[k]:<40} {n:>7}" for k, n in report.failures.items()]
    lines += ["", "Days with an outcome (others: none)"]
    lines.append("  " + f"{'DAY':<10} " + " ".join(f"{k[:10].upper():>10}" for k in keys))
    busy = [d for d in report.per_day if any(d.counts.values())]
    for d in busy:
        cells = " ".join(f"{d.counts[k]:>10}" for k in keys)
        lines.append(f"  {d.day.isoformat():<10} {cells}")
    if not busy:
        lines.append("  (none)")
    return "\n".join(lines)
