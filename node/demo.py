"""``courier demo push``: send the node a tiny synthetic study, to try it in five minutes.

The study is made here (:func:`node.synthetic.make_ct_series`: a CT phantom, a few
128x128 slices, a made-up patient ``DEMO^PATIENT`` whose data is obviously fake), written
to a temporary folder and sent by C-STORE with :func:`scp.storescu.send_instances`, the
sender the node itself uses for hospital-to-hospital delivery (no storage commitment
asked). By default it goes to the node in ``--config``: ``scp.ae_title`` at
``scp.host`` (127.0.0.1 when the node listens on every address) and ``scp.port``. The
same patient ID and accession give the same UIDs, so pushing twice is an identical
re-send the node acknowledges without keeping a second copy.

What it prints: the Study Instance UID, the accession number, the patient ID and how
many instances the node acknowledged. Exit status: 0 all acknowledged, 4 the node is
unreachable, refused the association or did not acknowledge every instance (the
message says which and what to check).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.output import EXIT_OK, print_result

if TYPE_CHECKING:
    from node.config import Config

EXIT_PEER = 4  # as `courier pacs`: the other DICOM node is unreachable or refused

#: The made-up patient of the demo study; the README's quick start creates its request.
DEMO_PATIENT_ID = "DEMO0001"
DEMO_PATIENT_NAME = "DEMO^PATIENT"
DEMO_BIRTH_DATE = "19700101"
DEMO_ACCESSION = "DEMO0001"
DEMO_CALLING_AE = "COURIER_DEMO"
_ANY_ADDRESS = ("0.0.0.0", "::", "")

HELP = "send the node a tiny synthetic study (DEMO^PATIENT) to try it"


@dataclass(frozen=True)
class _Target:
    """Where the demo study goes (the shape :func:`scp.storescu.send_instances` takes)."""

    ae_title: str
    host: str
    port: int
    commitment: str = "off"


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def add_demo_parser(sub: Any, common: argparse.ArgumentParser, as_json: Any) -> None:
    """Add ``demo push`` under ``sub``."""
    demo = sub.add_parser("demo", help=HELP)
    actions = demo.add_subparsers(dest="demo_action", required=True, metavar="ACTION")
    push = actions.add_parser("push", parents=[common, as_json], help=HELP)
    push.add_argument("--host", help="the node's address (default: scp.host of --config)")
    push.add_argument("--port", type=int, help="its DICOM port (default: scp.port)")
    push.add_argument("--aet", help="the AE title to call (default: scp.ae_title)")
    push.add_argument(
        "--calling-aet",
        default=DEMO_CALLING_AE,
        help=f"our AE title (default {DEMO_CALLING_AE}; list it in scp.allowed_calling_aes "
        "when that list is not empty)",
    )
    push.add_argument("--patient-id", default=DEMO_PATIENT_ID, help="default %(default)s")
    push.add_argument("--accession", default=DEMO_ACCESSION, help="default %(default)s")
    push.add_argument(
        "--instances", type=int, default=5, choices=range(1, 101), metavar="N",
        help="slices in the study, 1-100 (default %(default)s)",
    )  # fmt: skip


def run_demo(args: argparse.Namespace, cfg: Config) -> int:
    """Make the demo study and push it; returns the exit status."""
    # pynetdicom and numpy only for this command (node.cli keeps the others fast).
    from pydicom import dcmread

    from node.synthetic import make_ct_series
    from scp.storescu import (
        AssociationRejected,
        ScuSettings,
        StoreScuError,
        acknowledged,
        send_instances,
    )

    host = args.host or cfg.scp.host
    target = _Target(
        ae_title=args.aet or cfg.scp.ae_title,
        host="127.0.0.1" if host in _ANY_ADDRESS else host,
        port=args.port or cfg.scp.port,
    )
    with tempfile.TemporaryDirectory(prefix="courier-demo-") as tmp:
        paths = make_ct_series(
            Path(tmp),
            n_slices=args.instances,
            rows=128,
            cols=128,
            patient_id=args.patient_id,
            accession=args.accession,
            patient_name=DEMO_PATIENT_NAME,
            birth_date=DEMO_BIRTH_DATE,
            description="DEMO CT CHEST",
        )
        files = []
        for p in paths:
            ds = dcmread(p, stop_before_pixels=True)
            files.append(
                _File(p, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
            )
        study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        where = f"{target.ae_title}@{target.host}:{target.port}"
        try:
            report = send_instances(
                target, files, settings=ScuSettings(calling_ae_title=args.calling_aet)
            )
        except StoreScuError as exc:
            if isinstance(exc, AssociationRejected) and exc.permanent:
                # Not another hospital: the node being tried out. Say what to change there.
                print(
                    f"courier: demo push: {where} refused the association: the node must "
                    f"allow our AE title {args.calling_aet} (list it in "
                    "scp.allowed_calling_aes, or pass --calling-aet with one listed there) "
                    "and answer to the called AE title (--aet, default scp.ae_title)",
                    file=sys.stderr,
                )
            else:
                print(f"courier: demo push to {where}: {exc}", file=sys.stderr)
            return EXIT_PEER
    stored = sum(1 for s in report.statuses.values() if acknowledged(s))
    result = {
        "study_uid": study_uid,
        "accession": args.accession,
        "patient_id": args.patient_id,
        "patient_name": DEMO_PATIENT_NAME,
        "birth_date": DEMO_BIRTH_DATE,
        "instances": len(files),
        "acknowledged": stored,
        "to": where,
    }
    text = (
        f"sent {stored} of {len(files)} instances to {where}\n"
        f"study {study_uid}\n"
        f"accession {args.accession}, patient {args.patient_id} ({DEMO_PATIENT_NAME}, "
        f"born {DEMO_BIRTH_DATE}): synthetic, not a person"
    )
    print_result(args, result, text)
    if stored != len(files):
        failed = {f"0x{s:04X}" if s is not None else "none" for s in report.statuses.values()}
        print(
            f"courier: {where} did not acknowledge every instance (statuses: "
            f"{', '.join(sorted(failed))}); see the node's log",
            file=sys.stderr,
        )
        return EXIT_PEER
    return EXIT_OK
