"""``courier rules test FILE.dcm|DIR… [--calling-ae X] [--called-ae Y] [--json]``.

Offline, without the node running: for each study found in the files, which rule
would decide at C-STORE (``reject`` rules, per instance) and once the study is stable
(``release``/``hold``/``discard``), and why each earlier rule did not match. Values
from the headers are shown: this is a staff tool at a console, never a log.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from node.config import Config, ConfigError, load_config
from node.output import print_text
from rules import (
    AssociationFacts,
    RuleSet,
    RuleSyntaxError,
    explain_dict,
    explain_text,
    facts_from_dataset,
    load_rules,
)


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
            else:
                lines.append("  nothing would be stored")
        lines += [f"skipped (not DICOM): {s}" for s in skipped]
        if lines:
            print_text("\n".join(lines))
    return 0 if studies else 2


def _config_rules(cfg_path: Path) -> RuleSet:
    cfg: Config = load_config(cfg_path)
    return cfg.ruleset


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
