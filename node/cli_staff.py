"""``courier staff add|password|list|disable|enable``: who may sign in to the staff pages.

:func:`add_staff_parsers` adds the commands to ``courier``'s parser and
:func:`run_staff_command` runs one. A password is never an argument (argv is visible to
every user of the machine in ``ps`` and lands in shell history): it is typed at a
prompt (twice), or read from ``--password-file PATH`` or standard input (``-``, or any
non-terminal stdin), first line only. Passwords are kept as scrypt hashes
(:mod:`portal.passwords`); disabling a user or setting a new password ends their open
sessions at once.

Exit status as in :mod:`node.cli`: 0 success, 1 no such user / already exists,
2 bad input (the username or password refused; nothing is written), 3 the database is
unavailable. ``--json`` prints data as JSON on stdout.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from node.config import Config
from node.output import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, print_result
from node.stores import open_store
from portal import passwords
from portal.staff_auth import check_username
from store.catalog import guarded
from store.errors import StoreError
from store.models import PortalSession, StaffUser, utcnow


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def add_staff_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``staff add|password|list|disable|enable`` under ``subparsers``; the chosen
    action lands in ``args.staff_action``."""
    staff = subparsers.add_parser("staff", help="staff sign-in accounts (add, list, ...)")
    actions = staff.add_subparsers(dest="staff_action", required=True, metavar="ACTION")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from the first line of PATH ('-': standard input) "
        "instead of prompting; never give it on the command line",
    )
    # allow_abbrev=False: "--password SECRET" must be an error, not "--password-file SECRET".
    add = actions.add_parser(
        "add",
        parents=[common, as_json, source],
        help="add a staff user (asks for a password)",
        allow_abbrev=False,
    )
    add.add_argument("username", help="1-64 of a-z 0-9 . _ - @ (stored in lower case)")
    pw = actions.add_parser(
        "password",
        parents=[common, as_json, source],
        help="set a new password (ends the user's sessions)",
        allow_abbrev=False,
    )
    pw.add_argument("username")
    actions.add_parser("list", parents=[common, as_json], help="list staff users")
    off = actions.add_parser(
        "disable", parents=[common, as_json], help="stop a user signing in (ends sessions)"
    )
    off.add_argument("username")
    on = actions.add_parser("enable", parents=[common, as_json], help="let a user sign in again")
    on.add_argument("username")


def run_staff_command(args: argparse.Namespace, cfg: Config) -> int:
    """Run the ``staff`` action in ``args``; returns the exit status."""
    try:
        username = ""
        hashed = ""
        if args.staff_action != "list":
            username = _username(args.username)
        if args.staff_action in ("add", "password"):
            hashed = passwords.hash_password(_read_password(args.password_file))
    except passwords.PasswordError as exc:
        return _fail(args, EXIT_USAGE, f"password refused ({exc}); nothing was stored")
    except _Refused as exc:
        return _fail(args, exc.status, str(exc))
    try:
        engine, sessions, _content = open_store(cfg)
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    try:
        if args.staff_action == "list":
            return _list(args, sessions)
        if args.staff_action == "add":
            return _add(args, sessions, username, hashed)
        return _change(args, sessions, username, hashed)
    except _Refused as exc:
        return _fail(args, exc.status, str(exc))
    except StoreError as exc:
        return _fail(args, EXIT_UNAVAILABLE, str(exc))
    finally:
        engine.dispose()


def _username(text: str) -> str:
    try:
        return check_username(text)
    except ValueError as exc:
        raise _Refused(EXIT_USAGE, f"username refused: {exc}") from None


def _read_password(source: str | None) -> str:
    """The password from the file, stdin or a prompt (see the module docstring)."""
    if source == "-" or (source is None and not sys.stdin.isatty()):
        line = sys.stdin.readline()
    elif source is not None:
        try:
            with Path(source).open(encoding="utf-8") as fh:
                line = fh.readline()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Refused(
                EXIT_USAGE, f"cannot read --password-file: {exc.__class__.__name__}"
            ) from None
    else:
        line = getpass.getpass("New password: ")
        if getpass.getpass("Same password again: ") != line:
            raise _Refused(EXIT_USAGE, "the two passwords differ; nothing was stored")
    password = line.rstrip("\r\n")
    if not password:
        raise _Refused(EXIT_USAGE, "no password given; nothing was stored")
    return password


def _user_dict(user: StaffUser, last_sign_in: datetime | None) -> dict[str, Any]:
    return {
        "username": user.username,
        "created_at": user.created_at,
        "disabled_at": user.disabled_at,
        "failed_logins": user.failed_logins,
        "last_sign_in": last_sign_in,
    }


def _add(args: argparse.Namespace, sessions: sessionmaker[Session], name: str, hashed: str) -> int:
    try:
        with guarded(sessions) as s, s.begin():
            user = StaffUser(
                username=name,
                password_hash=hashed,
                created_at=utcnow(),
                disabled_at=None,
                failed_logins=0,
            )
            s.add(user)
            s.flush()
            data = _user_dict(user, None)
    except IntegrityError:
        raise _Refused(
            EXIT_NOT_FOUND,
            f"staff user {name} already exists; `courier staff password {name}` sets a new "
            "password",
        ) from None
    return print_result(args, data, f"staff user {name} added; they sign in at /staff/login")


def _change(
    args: argparse.Namespace, sessions: sessionmaker[Session], name: str, hashed: str
) -> int:
    now = utcnow()
    action = args.staff_action
    with guarded(sessions) as s, s.begin():
        user = s.scalars(select(StaffUser).where(StaffUser.username == name)).first()
        if user is None:
            raise _Refused(EXIT_NOT_FOUND, f"no staff user {name}; see `courier staff list`")
        if action == "password":
            user.password_hash, user.failed_logins = hashed, 0
        elif action == "disable":
            user.disabled_at = user.disabled_at or now
        else:
            user.disabled_at = None
        if action in ("password", "disable"):
            s.execute(
                update(PortalSession)
                .where(PortalSession.staff_user_id == user.id, PortalSession.ended_at.is_(None))
                .values(ended_at=now)
            )
        data = _user_dict(user, None)
    text = {
        "password": f"new password set for {name}; their open sessions were ended",
        "disable": f"staff user {name} disabled; their open sessions were ended",
        "enable": f"staff user {name} may sign in again",
    }[action]
    return print_result(args, {k: v for k, v in data.items() if k != "last_sign_in"}, text)


def _list(args: argparse.Namespace, sessions: sessionmaker[Session]) -> int:
    with guarded(sessions) as s:
        last: dict[int | None, datetime | None] = {
            uid: at
            for uid, at in s.execute(
                select(PortalSession.staff_user_id, func.max(PortalSession.created_at))
                .where(PortalSession.kind == "staff")
                .group_by(PortalSession.staff_user_id)
            )
        }
        rows = [
            _user_dict(u, last.get(u.id))
            for u in s.scalars(select(StaffUser).order_by(StaffUser.username))
        ]
    lines = [f"{'USERNAME':<24} {'STATE':<9} {'FAILED':>6} {'LAST SIGN-IN':<16} CREATED"]
    lines += [
        f"{r['username']:<24} {'disabled' if r['disabled_at'] else 'active':<9} "
        f"{r['failed_logins']:>6} "
        f"{r['last_sign_in'].strftime('%Y-%m-%d %H:%M') if r['last_sign_in'] else '-':<16} "
        f"{r['created_at']:%Y-%m-%d}"
        for r in rows
    ]
    return print_result(args, rows, "\n".join(lines))


def _fail(args: argparse.Namespace, status: int, message: str) -> int:
    print(f"courier: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    return status
