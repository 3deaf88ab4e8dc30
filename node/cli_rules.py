"""``courier rules test FILE.dcm|DIR… [--calling-ae X] [--called-ae Y] [--json]``.

Offline, without the node running: for each study found in the files, which rule
would decide at C-STORE (``reject`` rules, per instance) and once the study is stable
(``release``/``hold``/``discard``), and why each earlier rule did not match; for a
release, the release policy that would hold it (the rule's ``release:`` block, or
node.yaml's ``delivery.release``) and what it would say if the study arrived now (or
at ``--arrived``), its final report not in yet. Values from the headers are shown:
this is a staff tool at a console, never a log.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
from pydicom.errors import InvalidDicomError

from node.config import Config, ConfigError, load_config
from node.output import print_text
from rules import (
    AssociationFacts,
    Decision,
    RuleSet,
    RuleSyntaxError,
    explain_dict,
    explain_text,
    facts_from_dataset,
    load_rules,
)
from rules.policy import ReleasePolicy


def add_rules_parsers(
    sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``rules test`` to the ``courier`` parser."""
    rules = sub.add_parser("rules", help="check and explain the rules").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    test = rules.add_parser(
        "test", parents=[common, as_json], help="which rule decides for these DICOM files, and why"
    )
    test.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    test.add_argument("--rules", type=Path, help="a rules file (default: node.yaml's rules)")
    test.add_argument("--calling-ae", default="", help="as if sent by this AE title")
    test.add_argument("--called-ae", default="", help="as if sent to this AE title")
    test.add_argument("--peer-host", default="127.0.0.1", help="as if sent from this address")
    test.add_argument(
        "--arrived",
        type=_aware,
        help="explain the release policy as if the study arrived then "
        "(ISO 8601 with its offset, e.g. 2026-03-27T12:00:00Z; default now)",
    )


def _files(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        else:
            yield p


def run_rules_command(args: argparse.Namespace, cfg_path: Path) -> int:
    """Run ``rules test``; returns the exit status (0 ok, 2 bad rules or input)."""
    try:
        ruleset = load_rules(args.rules) if args.rules else _config_rules(cfg_path)
    except (RuleSyntaxError, ConfigError) as exc:
        print(f"courier: invalid rules:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"courier: cannot read {args.rules}: {exc.strerror}", file=sys.stderr)
        return 2
    association = AssociationFacts(args.calling_ae, args.called_ae or "", args.peer_host)
    site = _site(cfg_path)
    arrived = args.arrived or datetime.now(UTC)
    studies: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for f in _files(args.paths):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, RecursionError):
            skipped.append(str(f))
            continue
        uid = str(ds.get("StudyInstanceUID", "")) or "(no StudyInstanceUID)"
        facts = facts_from_dataset(ds, association, wanted=ruleset.wanted)
        entry = studies.setdefault(uid, {"study_uid": uid, "instances": 0, "rejected": 0})
        entry["instances"] += 1
        at_store = ruleset.decide(facts, "store")
        if at_store.action == "reject":
            entry["rejected"] += 1
            if entry["rejected"] == 1:
                entry["store"] = at_store  # show the first refusal, not an acceptance
        entry.setdefault("store", at_store)
        if "stable" not in entry and at_store.action != "reject":
            # A stable study is decided on what was stored: a refused instance is not.
            entry["stable"] = ruleset.decide(facts, "stable")
            entry["policy"] = _policy(
                entry["stable"], ruleset, site, uid, str(ds.get("StudyDate", "")), arrived
            )
    if args.json:
        out = [
            {
                "study_uid": e["study_uid"],
                "instances": e["instances"],
                "rejected_instances": e["rejected"],
                "at_store": explain_dict(e["store"], show_values=True),
                "when_stable": (
                    explain_dict(e["stable"], show_values=True) if "stable" in e else None
                ),
                "release_policy": e.get("policy"),
            }
            for e in studies.values()
        ]
        print(json.dumps({"studies": out, "skipped": skipped}, indent=2))
    else:  # header values are shown: printed with print_text (terminal-safe)
        lines = []
        for e in studies.values():
            lines.append(f"study {e['study_uid']} ({e['instances']} instances)")
            if e["rejected"]:
                lines.append(f"  at C-STORE: {e['rejected']} instance(s) refused")
                lines.append(_indent(explain_text(e["store"], show_values=True)))
            if "stable" in e:
                lines.append("  when stable:")
                lines.append(_indent(explain_text(e["stable"], show_values=True)))
                if e.get("policy"):
                    policy = e["policy"]
                    lines.append(f"    release policy ({policy['source']}): {policy['policy']}")
                    lines.append(f"      if it arrived {policy['arrived']}: {policy['verdict']}")
            else:
                lines.append("  nothing would be stored")
        lines += [f"skipped (not DICOM): {s}" for s in skipped]
        if lines:
            print_text("\n".join(lines))
    return 0 if studies else 2


def _aware(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time's offset, e.g. 2026-03-27T12:00:00Z")
    return when.astimezone(UTC)


def _site(cfg_path: Path) -> tuple[ReleasePolicy | None, str]:
    """node.yaml's ``delivery.release`` and ``delivery.timezone`` (none and UTC when it
    cannot be read: ``--rules`` works without a node.yaml)."""
    try:
        cfg = load_config(cfg_path)
    except (ConfigError, OSError):
        return None, "UTC"
    return cfg.delivery.release, cfg.delivery.timezone


def _policy(
    decision: Decision,
    ruleset: RuleSet,
    site: tuple[ReleasePolicy | None, str],
    study_uid: str,
    study_date: str,
    arrived: datetime,
) -> dict[str, str] | None:
    """The release policy a released study would get, explained (None: not released)."""
    if decision.action != "release" or decision.rule is None:
        return None
    from release.embargo import SITE_DEFAULT, StudyFacts, decide

    default, zone_name = site
    rule = ruleset.rule(decision.rule)
    if rule is not None and rule.release is not None:
        source, policy = f"rule {rule.name}", rule.release
    elif default is not None:
        source, policy = SITE_DEFAULT, default
    else:
        return {
            "source": "none",
            "policy": "at once",
            "arrived": _local(arrived, ZoneInfo(zone_name)),
            "verdict": "released as soon as its request is ready",
        }
    zone = ZoneInfo(zone_name)
    study = StudyFacts(decision.rule, study_uid, arrived, study_date)
    verdict = decide([(source, policy, study)], reported=False, now=arrived, zone=zone)
    return {
        "source": source,
        "policy": policy.describe(),
        "arrived": _local(arrived, zone),
        "verdict": verdict.why,
        "hold": verdict.kind or "none",
        "until": verdict.until.isoformat() if verdict.until else "",
    }


def _local(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _config_rules(cfg_path: Path) -> RuleSet:
    cfg: Config = load_config(cfg_path)
    return cfg.ruleset


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
