"""``courier doctor``: checks what a node needs from the machine and its peers, and says
what to fix. It changes nothing: no migration, no message, no file left behind.

Each check returns one :class:`Finding` (``ok``, ``warn``, ``fail`` or ``skip``) with a
detail and, unless ``ok``, what to do next. Checks that talk to a peer (database server,
SMTP server, Twilio, PACS, the HL7 listener, the public URL) are bounded by ``timeout_s``
each. Findings hold no secret and no patient data: host names, ports, counts, status
codes.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from delivery.channel import build_channels
from delivery.errors import ChannelAuthError, ChannelSetupError, DeliveryError
from node.config import Config, ConfigError, load_config
from node.output import EXIT_NOT_FOUND, EXIT_OK, print_result
from portal import publicurl
from scp import pacs
from store.db import alembic_config, database_url, make_engine

Status = Literal["ok", "warn", "fail", "skip"]

#: Free space under which the node cannot be trusted to take a study (fail), and under
#: which staff should act soon (warn).
FAIL_FREE_BYTES = 1 * 10**9
WARN_FREE_BYTES = 10 * 10**9
#: How many entries under node.data_dir the mode check looks at before it stops (and
#: says so): a data directory holds a file per instance, millions on a busy node.
MODE_SCAN_LIMIT = 200_000
#: How many of the too-open paths a finding names (the count says how many there are).
MODE_EXAMPLES = 5


@dataclass(frozen=True)
class Finding:
    """One check's result."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


Check = Callable[[Config, float], Finding]


def check_rules(cfg: Config, timeout_s: float) -> Finding:
    """The rules compile (the node refuses to start otherwise)."""
    if cfg.source is None:
        return Finding("rules", "skip", "no node.yaml")
    try:
        load_config(cfg.source, compile_rules=True)
    except ConfigError as exc:
        return Finding(
            "rules",
            "fail",
            f"{len(exc.problems)} problem(s), first: {exc.problems[0]}",
            "fix the rules file; `courier check-config` lists every problem",
        )
    return Finding("rules", "ok", "the rules compile")


def check_database(cfg: Config, timeout_s: float) -> Finding:
    """The index database answers, and its schema is at the code's migration head."""
    base = cfg.source.parent if cfg.source else Path.cwd()
    try:
        url = database_url(cfg.store, cfg.data_dir, base)
    except (ValueError, OSError) as exc:
        return Finding("database", "fail", str(exc), "fix store.database_url* in node.yaml")
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    sqlite_file = make_url(url).database if url.startswith("sqlite") else None
    if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).exists():
        # Connecting would make the file (and its folder): a doctor changes nothing.
        return Finding(
            "database", "warn", f"sqlite: {sqlite_file} not made yet", "`courier serve` makes it"
        )
    engine = make_engine(url, busy_timeout_s=min(timeout_s, cfg.store.busy_timeout_s))
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except (OperationalError, DBAPIError) as exc:
        cause = type(getattr(exc, "orig", None) or exc).__name__
        return Finding(
            "database",
            "fail",
            f"cannot open the index database ({cause})",
            "check store.database_url and that the database server is running",
        )
    finally:
        engine.dispose()
    kind = engine.url.get_backend_name()
    if current is None:
        return Finding(
            "database", "warn", f"{kind}: empty (no schema yet)", "`courier serve` creates it"
        )
    if current != head:
        return Finding(
            "database",
            "warn",
            f"{kind}: schema at {current}, this version needs {head}",
            "`courier serve` migrates it at start; back the database up first",
        )
    return Finding("database", "ok", f"{kind}: schema at {head}")


def check_disk(cfg: Config, timeout_s: float) -> Finding:
    """``data_dir`` exists, is writable, and has room."""
    data = cfg.data_dir
    if not data.exists():
        return Finding("disk", "warn", f"{data} does not exist yet", "`courier serve` makes it")
    try:
        with tempfile.NamedTemporaryFile(dir=data, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Finding(
            "disk",
            "fail",
            f"cannot write in {data}: {exc.strerror}",
            "give the node's user write access to node.data_dir",
        )
    free = shutil.disk_usage(data).free
    text = f"{free / 1e9:.1f} GB free in {data}"
    if free < FAIL_FREE_BYTES:
        return Finding("disk", "fail", text, "free space: C-STORE is refused (A700) when full")
    if free < WARN_FREE_BYTES:
        return Finding("disk", "warn", text, "free space or move node.data_dir to a larger disk")
    return Finding("disk", "ok", text)


def check_secret(cfg: Config, timeout_s: float) -> Finding:
    """The node secret (links and codes derive from it) exists, is private and whole."""
    path = cfg.data_dir / "secret.key"
    try:
        st = path.stat()
    except FileNotFoundError:
        return Finding("secret", "warn", f"{path} not made yet", "`courier serve` makes it")
    except OSError as exc:
        return Finding("secret", "fail", f"{path}: {exc.strerror}", "fix its permissions")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Finding(
            "secret",
            "fail",
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
            f"chmod 600 {path}",
        )
    if st.st_size < 32:
        return Finding(
            "secret",
            "fail",
            f"{path} is too short ({st.st_size} bytes)",
            "restore it from backup (deleting it voids every link already sent)",
        )
    return Finding("secret", "ok", f"{path} (mode 600)")


def check_modes(cfg: Config, timeout_s: float, limit: int = MODE_SCAN_LIMIT) -> Finding:
    """Nothing under ``data_dir`` is open to group or others (everything there is made
    0700/0600, see store.content.DIR_MODE). Walks at most ``limit`` entries, without
    following symbolic links; names a few paths relative to ``data_dir`` (instance paths
    hold UIDs only, package paths request references)."""
    data = cfg.data_dir
    if not data.is_dir():
        return Finding("modes", "skip", f"{data} does not exist yet")
    wide: list[tuple[str, int]] = []
    mode = stat.S_IMODE(data.stat().st_mode)
    if mode & _OPEN:
        wide.append((".", mode))
    seen, complete, stack = 0, True, [data]
    while stack and complete:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable to us: the node could not use it either
        for entry in entries:
            seen += 1
            if seen > limit:
                complete = False
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISLNK(st.st_mode):
                continue  # a link's own mode means nothing
            if stat.S_IMODE(st.st_mode) & _OPEN:
                wide.append((str(Path(entry.path).relative_to(data)), stat.S_IMODE(st.st_mode)))
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
    scope = f"{seen} entries" if complete else f"the first {limit} entries (stopped there)"
    if not wide:
        return Finding("modes", "ok", f"{data}: owner-only ({scope} checked)")
    named = ", ".join(f"{p} ({m:o})" for p, m in sorted(wide)[:MODE_EXAMPLES])
    return Finding(
        "modes",
        "warn",
        f"{len(wide)} path(s) under {data} open to group or others in {scope}: {named}",
        f"chmod -R go-rwx {data} (patient data must be the node account's alone); "
        "start the node with `courier`, which makes everything owner-only",
    )


_OPEN = stat.S_IRWXG | stat.S_IRWXO


def check_callers(cfg: Config, timeout_s: float) -> Finding:
    """Who may send DICOM: a warning while ``scp.allowed_calling_aes`` is empty (any calling
    AE is accepted, as shipped, so that a first ``storescu`` works) or pins no host (an AE
    title alone can be claimed from anywhere, and no association slot is reserved)."""
    allowed = cfg.scp.allowed_calling_aes
    if not allowed:
        return Finding(
            "dicom_callers",
            "warn",
            "scp.allowed_calling_aes is empty: any calling AE may send",
            "list the PACS and modalities with their hosts in scp.allowed_calling_aes "
            "(node.yaml shows an example)",
        )
    pinned = sum(p.host is not None for p in allowed)
    if not pinned:
        return Finding(
            "dicom_callers",
            "warn",
            f"{len(allowed)} calling AE(s) allowed, none pinned to a host: any host may "
            "claim them, and no association slot is reserved for them",
            "add each sender's IP address (host:) to its scp.allowed_calling_aes entry",
        )
    return Finding(
        "dicom_callers", "ok", f"{len(allowed)} calling AE(s) allowed, {pinned} pinned to a host"
    )


def check_identity(cfg: Config, timeout_s: float) -> Finding:
    """Right patient: fails while ``identity.check`` is off (a study of another patient
    could then be released on a rule's join alone)."""
    ident = cfg.identity
    if not ident.check:
        return Finding(
            "identity",
            "fail",
            "identity.check is false: studies join requests without comparing the "
            "patient's identity",
            "set identity.check: true; for a PACS in another ID domain, map it with "
            "identity.patient_id_from (node.yaml shows how)",
        )
    source = ident.patient_id_from
    if ident.issuer:
        source += f" (issuer {ident.issuer})"
    return Finding("identity", "ok", f"patient identity checked; ID read from {source}")


def _channels(cfg: Config, environ: Mapping[str, str]) -> tuple[Any, Any] | Finding:
    try:
        return build_channels(cfg.email, cfg.sms, cfg.data_dir, environ)
    except (DeliveryError, ChannelSetupError) as exc:
        return Finding("channels", "fail", str(exc), "fix the email:/sms: section of node.yaml")


@dataclass(frozen=True)
class _Channel:
    """What the doctor says about one channel (email or SMS)."""

    check: str
    index: int  # in build_channels' (email, sms)
    file_note: str
    file_fix: str
    auth_fix: str
    other_fix: str


_EMAIL = _Channel(
    "email",
    0,
    "emails",
    "set email.backend: smtp for patients to get their links",
    "check email.username and the password in email.password_env/_file",
    "check email.host, email.port, email.security and the firewall",
)
_SMS = _Channel(
    "sms",
    1,
    "SMS",
    "set sms.backend: twilio for codes to reach patients' phones",
    "check sms.account_sid and the token in sms.auth_token_env/_file",
    "check sms.api_base and the network",
)


def _check_channel(
    cfg: Config,
    timeout_s: float,
    environ: Mapping[str, str],
    what: _Channel,
    *,
    file_backend: bool,
    file_dir: str,
    where: str,
    ok: str,
) -> Finding:
    if file_backend:
        written = cfg.data_dir / file_dir
        return Finding(
            what.check,
            "warn",
            f"file backend: {what.file_note} are written to {written}, none is sent",
            what.file_fix,
        )
    built = _channels(cfg, environ)
    if isinstance(built, Finding):
        return Finding(what.check, built.status, built.detail, built.fix)
    try:
        asyncio.run(_verify(built[what.index], timeout_s))
    except (DeliveryError, TimeoutError) as exc:
        detail = str(exc) or f"no answer within {timeout_s:g} s"
        fix = what.auth_fix if isinstance(exc, ChannelAuthError) else what.other_fix
        return Finding(what.check, "fail", f"{where}: {detail}", fix)
    return Finding(what.check, "ok", f"{where}: {ok}")


def check_email(cfg: Config, timeout_s: float, environ: Mapping[str, str] = os.environ) -> Finding:
    """SMTP: connect, TLS and log in, then quit (no message). File backend: a warning."""
    e = cfg.email
    return _check_channel(
        cfg,
        timeout_s,
        environ,
        _EMAIL,
        file_backend=e.backend == "file",
        file_dir=e.file_dir,
        where=f"{e.host}:{e.smtp_port}",
        ok="connected, TLS and login accepted",
    )


def check_sms(cfg: Config, timeout_s: float, environ: Mapping[str, str] = os.environ) -> Finding:
    """Twilio: a read-only call with the account's credentials. File backend: a warning."""
    s = cfg.sms
    return _check_channel(
        cfg,
        timeout_s,
        environ,
        _SMS,
        file_backend=s.backend == "file",
        file_dir=s.file_dir,
        where=urlsplit(s.api_base).netloc,
        ok="credentials accepted",
    )


async def _verify(channel: Any, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(channel.verify(), timeout_s)
    finally:
        await channel.aclose()
        # A refused TLS login leaves aiosmtplib's socket closing until the server's
        # close_notify comes back: give it a moment on this loop, or asyncio.run ends
        # first and the transport is collected still "closing" (a ResourceWarning).
        await asyncio.sleep(0.25)


def check_pacs(cfg: Config, timeout_s: float) -> Finding:
    """C-ECHO to the ``pacs:`` section's PACS as Courier's calling AE, within
    ``timeout_s`` (connect, association and the answer each). Skipped without one."""
    p = cfg.pacs
    if p is None:
        return Finding("pacs", "skip", "no pacs: section (no query or pull from a PACS)")
    settings = p.model_copy(
        update={
            "connect_timeout_s": min(p.connect_timeout_s, timeout_s),
            "find_timeout_s": min(p.find_timeout_s, timeout_s),
        }
    )
    where = f"{p.ae_title}@{p.host}:{p.port}"
    try:
        pacs.echo(settings)
    except pacs.PacsUnreachable:
        return Finding(
            "pacs",
            "fail",
            f"{where}: unreachable (no connection or no answer within {timeout_s:g} s)",
            "check pacs.host and pacs.port, that the PACS is running, and the firewall",
        )
    except pacs.AssociationRejected:
        return Finding(
            "pacs",
            "fail",
            f"{where}: refused the association from {p.calling}",
            f"ask the PACS admin to add Courier's AE title {p.calling} with this host, or "
            "fix pacs.ae_title / pacs.calling_ae_title in node.yaml",
        )
    except pacs.PacsError as exc:  # aborted, or C-ECHO answered a failure status
        status = getattr(exc, "status", -1)
        what = (
            f"answered C-ECHO with status 0x{status:04X}"
            if status >= 0
            else "aborted the association or did not answer the C-ECHO"
        )
        return Finding(
            "pacs",
            "fail",
            f"{where}: {what}",
            f"ask the PACS admin to allow verification (C-ECHO) from {p.calling}; see its log",
        )
    return Finding("pacs", "ok", f"{where}: C-ECHO answered success (as {p.calling})")


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reach(host: str) -> str:
    """The address a connection to a listener on ``host`` goes to (loopback for any)."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return host


_BIND_FIXES = {
    errno.EADDRINUSE: (
        "in use by another program (bound, not answering)",
        "free the port, or set ris.port to a free one (and tell the RIS)",
    ),
    errno.EACCES: (
        "not allowed to listen there (a port below 1024 needs privileges)",
        "set ris.port above 1023 (2575 is HL7's own)",
    ),
    errno.EADDRNOTAVAIL: (
        "ris.host is not an address of this machine",
        "set ris.host to one of this machine's addresses (0.0.0.0: all of them)",
    ),
}


def check_ris(cfg: Config, timeout_s: float) -> Finding:
    """The RIS's HL7 (MLLP) listener, when ``ris.enabled``: ``ris.host:ris.port`` answers
    a TCP connection within ``timeout_s`` (``courier serve`` runs and listens; nothing is
    sent), or else the port can be bound there now (bound and closed at once: the node
    will listen when it starts). Skipped while ``ris.enabled`` is false."""
    r = cfg.ris
    if not r.enabled:
        return Finding("ris", "skip", "ris.enabled is false (no HL7 listener)")
    where = _where(r.host, r.port)
    if r.port == 0:
        return Finding("ris", "ok", f"{where}: a free port chosen when courier serve starts")
    try:
        with socket.create_connection((_reach(r.host), r.port), timeout=timeout_s):
            pass
    except OSError:
        pass  # nothing answers: can the node listen there?
    else:
        return Finding("ris", "ok", f"{where}: the HL7 (MLLP) listener answers")
    family = socket.AF_INET6 if ipaddress.ip_address(r.host).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server
            sock.bind((r.host, r.port))
    except OSError as exc:
        what, fix = _BIND_FIXES.get(
            exc.errno or 0, (f"cannot listen: {exc.strerror}", "check ris.host and ris.port")
        )
        return Finding("ris", "fail", f"{where}: {what}", fix)
    return Finding(
        "ris",
        "ok",
        f"{where}: nothing listens yet; the port is free for courier serve's HL7 listener",
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def check_public_url(
    cfg: Config, timeout_s: float, *, context: ssl.SSLContext | None = None
) -> Finding:
    """``portal.public_url`` reaches this portal: ``GET /d/-`` (an inert link that changes
    nothing) must answer Courier's ``303`` to ``/access``."""
    p = cfg.portal
    if not p.enabled:
        return Finding("public_url", "skip", "portal.enabled is false")
    url = p.public_url.rstrip("/")
    plain = publicurl.plain_http_problem(url) is not None
    opener = urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=context)
    )
    try:
        opener.open(url + "/d/-", timeout=timeout_s)
        return Finding(
            "public_url",
            "fail",
            f"{url}: answered, but not as the portal does (no redirect)",
            "point portal.public_url (and the reverse proxy) at `courier serve`'s portal",
        )
    except urllib.error.HTTPError as exc:
        location = exc.headers.get("Location", "")
        if exc.code != 303 or not location.endswith("/access"):
            return Finding(
                "public_url",
                "fail",
                f"{url}: HTTP {exc.code}, not the portal's answer",
                "point portal.public_url (and the reverse proxy) at `courier serve`'s portal",
            )
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        return Finding(
            "public_url",
            "fail",
            f"{url}: {reason}",
            "is `courier serve` running, and does portal.public_url name it?",
        )
    if plain:  # node.yaml refuses this (portal.publicurl); kept for a config built in code
        return Finding(
            "public_url",
            "fail",
            f"{url}: reaches the portal over plain HTTP",
            publicurl.FIX,
        )
    return Finding("public_url", "ok", f"{url}: reaches the portal")


#: The names node.yaml ships with; patients should never see them.
SHIPPED_NAMES = frozenset({"", "courier"})


def check_names(cfg: Config, timeout_s: float) -> Finding:
    """The hospital's display name (``node.hospital_name``) and the emails' sender name
    (``email.from_name``) are set: warns while either is the shipped default (the
    emails would say "Your imaging from courier is ready", from a bare address)."""
    unset = [
        key
        for key, value in (
            ("node.hospital_name", cfg.hospital_name),
            ("email.from_name", cfg.email.from_name),
        )
        if " ".join(value.split()).lower() in SHIPPED_NAMES
    ]
    if unset:
        return Finding(
            "names",
            "warn",
            f"{' and '.join(unset)} still the shipped default: patients would read "
            f'"Your imaging from {cfg.hospital_name} is ready"',
            "set node.hospital_name and email.from_name (the first keys of node.yaml's "
            "node: and email: sections) to the hospital's name",
        )
    return Finding("names", "ok", f"emails name {cfg.hospital_name}")


CHECKS: tuple[Check, ...] = (
    check_rules,
    check_database,
    check_disk,
    check_secret,
    check_modes,
    check_email,
    check_sms,
    check_callers,
    check_identity,
    check_names,
    check_pacs,
    check_ris,
    check_public_url,
)


def run_checks(cfg: Config, timeout_s: float = 5.0) -> list[Finding]:
    """Every check, in order; a check that crashes is reported as failed, not raised."""
    findings = []
    for check in CHECKS:
        try:
            findings.append(check(cfg, timeout_s))
        except Exception as exc:
            name = check.__name__.removeprefix("check_")
            findings.append(
                Finding(name, "fail", f"check crashed: {type(exc).__name__}", "report a bug")
            )
    return findings


def add_doctor_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """``courier doctor [--timeout S] [--json]``."""
    doctor = sub.add_parser(
        "doctor",
        parents=[common, as_json],
        help="check the database, disk, secret, file modes under node.data_dir, SMTP, "
        "Twilio, the PACS (C-ECHO), the HL7 listener (ris.enabled) and the public URL, and say "
        "what to fix (exit 1 when a check fails; changes nothing)",
    )
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="seconds each network check may take"
    )


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def run_doctor(args: argparse.Namespace, cfg: Config) -> int:
    """Print every finding; exit 1 when any failed."""
    findings = run_checks(cfg, timeout_s=max(0.1, min(args.timeout, 60.0)))
    lines = []
    for f in findings:
        lines.append(f"{_MARK[f.status]}  {f.check:<11} {f.detail}")
        if f.fix:
            lines.append(f"{'':<17} → {f.fix}")
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    lines.append(f"{failed} failed, {warned} warning(s)")
    data = {"findings": [f.as_dict() for f in findings], "failed": failed, "warnings": warned}
    print_result(args, data, "\n".join(lines))
    return EXIT_NOT_FOUND if failed else EXIT_OK
