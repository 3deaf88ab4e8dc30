"""``courier conformance [--write]``: the DICOM Conformance Statement (PS3.2).

Only argparse here: :mod:`node.conformance`, which imports pynetdicom, pydicom and the
SCP to read their tables, is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = (
    "print the DICOM Conformance Statement (PS3.2) generated from the code's own tables "
    "(--write: into docs/conformance.md)"
)


def add_conformance_parser(sub: Any, _common: Any, _as_json: Any) -> None:
    """Add ``conformance [--write]`` under ``sub``."""
    p = sub.add_parser("conformance", help=HELP)
    p.add_argument(
        "--write",
        action="store_true",
        help="write docs/conformance.md in the source tree instead of printing",
    )


def run_conformance(args: argparse.Namespace) -> int:
    """Print the statement, or write it to :data:`node.conformance.DOC_PATH`; returns 0."""
    from node.conformance import DOC_PATH, statement

    text = statement()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text, encoding="utf-8")
        print(f"courier: wrote {DOC_PATH}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
