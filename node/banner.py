"""What ``courier serve`` says once it is up: where to go next.

A new user who has just typed ``make run`` should not have to read the README to find
the staff pages, learn that nobody can sign in yet, or know where to point a PACS. So
once every part the node's role runs is listening, :func:`announce` logs, at INFO and
once per start (never in the receiving child processes):

- the staff pages' URL (``portal.public_url`` + ``/staff``), how many staff accounts
  can sign in, and when none can, the command that makes one (``courier staff add``);
- the public URL patients' links start with;
- the DICOM side: AE title, port, TLS port, and whether any calling AE may send.

Only settings and a count: no patient data, no secret. Each line is its own log
record (one event per line, in text as in JSON).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import __version__
from node.config import DEFAULT_CONFIG, Config
from store.models import StaffUser

log = logging.getLogger("courier.node.start")


def staff_accounts(sessions: sessionmaker[Session]) -> int | None:
    """Staff accounts that may sign in (not disabled); ``None`` when the database
    cannot say (the banner then says so instead of guessing)."""
    try:
        with sessions() as s:
            q = select(func.count()).select_from(StaffUser).where(StaffUser.disabled_at.is_(None))
            return int(s.scalar(q) or 0)
    except SQLAlchemyError:
        return None


def _config_flag(cfg: Config) -> str:
    """`` --config PATH`` when the node runs on another file than ``./node.yaml``."""
    if cfg.source is None or cfg.source == (Path.cwd() / DEFAULT_CONFIG).resolve():
        return ""
    return f" --config {cfg.source}"


def banner_lines(cfg: Config, role: str, scp_port: int | None, accounts: int | None) -> list[str]:
    """The banner for a node of ``role`` receiving on ``scp_port`` (``None``: it does
    not receive) with ``accounts`` staff accounts (``None``: unknown)."""
    lines = [f"courier {__version__} is up (role {role}, node {cfg.node.name}); where to go next:"]
    p = cfg.portal
    url = p.public_url.rstrip("/")
    if p.enabled and role in ("all", "web"):
        if accounts is None:
            who = "staff accounts unknown: the database did not answer"
        elif accounts == 0:
            who = (
                "no staff account yet: add one with "
                f"`courier staff add USERNAME{_config_flag(cfg)}`"
            )
        else:
            who = f"{accounts} staff account(s) can sign in"
        lines.append(f"  staff pages:   {url}/staff ({who})")
        lines.append(f"  patient links: {url}/d/… (portal.public_url)")
    elif role in ("all", "web"):
        lines.append("  staff pages:   none (portal.enabled is false)")
    if scp_port is not None:
        s = cfg.scp
        tls = f", DICOM over TLS on port {s.tls_port}" if s.tls_port is not None else ""
        callers = (
            "any calling AE may send (scp.allowed_calling_aes is empty)"
            if not s.allowed_calling_aes
            else f"{len(s.allowed_calling_aes)} calling AE(s) allowed"
        )
        lines.append(f"  DICOM:         AE title {s.ae_title} on port {scp_port}{tls}; {callers}")
    doctor = f"`courier doctor{_config_flag(cfg)}`"
    if cfg.hospital_name.lower() == "courier":
        lines.append(
            f"  then:          set node.hospital_name in node.yaml; {doctor} says what else"
        )
    else:
        lines.append(f"  then:          {doctor} checks the database, mail, SMS and the public URL")
    return lines


def announce(cfg: Config, role: str, scp_port: int | None, sessions: sessionmaker[Session]) -> None:
    """Log :func:`banner_lines` at INFO, one record per line."""
    accounts = staff_accounts(sessions) if cfg.portal.enabled and role in ("all", "web") else 0
    for line in banner_lines(cfg, role, scp_port, accounts):
        log.info("%s", line)
