"""Shared helpers for the release tests: a valid draft, row counts, and requests made
through the ``courier`` command line of a running node."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from release.validation import RequestDraft
from store.models import ReleaseRequest, RequestEvent, RequestSelection
from tests.conftest import COURIER, NodeProcess

# A number phonenumbers accepts as a UK mobile (the 07700 900xxx drama range is not valid).
MOBILE = "+447911123456"
EMAIL = "patient@example.org"


def draft_data(**overrides: Any) -> dict[str, Any]:
    """A valid, synthetic request as submitted (override any field)."""
    data: dict[str, Any] = {
        "patient_id": "MRN-000123",
        "patient_name": "Test^Patient",
        "patient_birth_date": "19700131",
        "recipient_email": EMAIL,
        "second_channel": f"sms:{MOBILE}",
        "selection": [{"kind": "accession", "value": "ACC0001"}],
        "requested_by": "dr.test",
    }
    data.update(overrides)
    return data


def draft(**overrides: Any) -> RequestDraft:
    return RequestDraft.model_validate(draft_data(**overrides))


def counts(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    """(requests, selections, events) rows."""
    with sessions() as s:
        return tuple(  # type: ignore[return-value]
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (ReleaseRequest, RequestSelection, RequestEvent)
        )


def courier(node: NodeProcess, *argv: str, check: bool = True, timeout: float = 300) -> Any:
    """Run ``courier ARGV --config <node's> --json`` in the node's environment (it names
    the test database); the decoded JSON, or None without output. With ``check``, a
    non-zero exit fails the test with the end of its stderr."""
    out = subprocess.run(
        [str(COURIER), *argv, "--config", str(node.config), "--json"],
        capture_output=True,
        text=True,
        env=node.env,
        timeout=timeout,
        check=False,
    )
    if check:
        assert out.returncode == 0, f"courier {argv[0]} failed: {out.stderr[-2000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else None


def create_by_cli(node: NodeProcess, *options: str) -> str:
    """A request for the synthetic patient (email :data:`EMAIL`, SMS :data:`MOBILE`) made
    with ``courier request create OPTIONS`` (the selection and any other options, e.g.
    ``--accession ACC1 --urgency now``); returns its reference."""
    req = courier(
        node,
        "request",
        "create",
        "--patient-id",
        "SYN0001",
        "--patient-name",
        "Synthetic^Patient",
        "--birth-date",
        "19700131",
        "--email",
        EMAIL,
        "--second-channel",
        f"sms:{MOBILE}",
        *options,
    )
    return str(req["reference"])


def wait_state(node: NodeProcess, ref: str, *want: str, rounds: int = 120) -> str:
    """Poll ``courier request show REF`` until the request is in one of ``want``
    (bounded: ``rounds`` x 0.5 s); returns the last state seen."""
    state = ""
    for _ in range(rounds):
        state = courier(node, "request", "show", ref)["state"]
        if state in want:
            break
        time.sleep(0.5)
    return state
