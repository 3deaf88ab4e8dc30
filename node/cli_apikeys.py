"""``courier apikey create|list|revoke``: staff/RIS API keys in the index database.

A key is printed once, by ``create``; only its SHA-256 digest is kept (``api_keys``,
:mod:`portal.apikeys`). Every running ``courier serve`` looks keys up in the database on
each API call, so a key made or revoked here takes effect at once, without a restart.
``create`` and ``revoke`` are audited (``api-key``). ``list`` shows the digests fixed in
node.yaml (``portal.api_key_hashes``) and the legacy keys file too: those are read at
start and cannot be revoked here (remove them there, then restart).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from node.config import Config
from node.output import EXIT_NOT_FOUND, EXIT_USAGE, cell, print_result
from node.stores import open_store
from portal.apikeys import (
    MIN_PREFIX,
    UnknownKey,
    actor_of,
    create_key,
    find_key,
    list_keys,
    read_keys_file,
    revoke_key,
)
from store.catalog import guarded
from store.models import ApiKey, utcnow


def add_apikey_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """Add ``apikey create|list|revoke``."""
    apikey = sub.add_parser("apikey", help="staff/RIS API keys (create, list, revoke)")
    actions = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk = actions.add_parser(
        "create",
        parents=[common, as_json],
        help="make a key: printed once, only its digest is kept; works at once",
    )
    mk.add_argument("--label", default="", help="who or what uses it (shown in list)")
    actions.add_parser(
        "list",
        parents=[common, as_json],
        help="every key: id, label, digest prefix, created, last used, revoked",
    )
    rv = actions.add_parser(
        "revoke", parents=[common, as_json], help="refuse a key from now on, in every process"
    )
    rv.add_argument(
        "key", metavar="ID|PREFIX", help=f"its id, or at least {MIN_PREFIX} digits of its digest"
    )


def _key_dict(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "label": row.label,
        "digest_prefix": row.digest[:12],
        "actor": actor_of(row.digest),
        "created_at": row.created_at,
        "created_by": row.created_by,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
        "revoked_by": row.revoked_by,
        "source": "database",
    }


def _fixed(cfg: Config) -> list[dict[str, Any]]:
    """The digests read at start: node.yaml and the legacy keys file."""
    fixed = [(h.strip().lower(), "node.yaml") for h in cfg.portal.api_key_hashes]
    fixed += [(h, str(cfg.api_keys_path)) for h in read_keys_file(cfg.api_keys_path)]
    return [{"digest_prefix": h[:12], "actor": actor_of(h), "source": src} for h, src in fixed]


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value is not None else "-"


def run_apikey_command(args: argparse.Namespace, cfg: Config) -> int:
    """``courier apikey …``; returns the exit status."""
    from node.cli_requests import cli_actor

    engine, sessions, _content = open_store(cfg)
    try:
        with guarded(sessions) as s:
            now = utcnow()
            if args.action == "create":
                key, row = create_key(s, args.label, cli_actor(), now)
                s.commit()
                text = (
                    f"API key #{row.id} (shown once; give it to the caller, it is not stored):\n"
                    f"  {key}\n"
                    f"digest {row.digest[:12]}… kept; it works at once, no restart needed"
                )
                return print_result(args, {"key": key, **_key_dict(row)}, text)
            if args.action == "list":
                rows = [_key_dict(r) for r in list_keys(s)]
                fixed = _fixed(cfg)
                lines = [
                    f"{'ID':>4} {'DIGEST':<12} {'LABEL':<24} {'CREATED':<16} "
                    f"{'LAST USED':<16} REVOKED"
                ]
                lines += [
                    f"{r['id']:>4} {r['digest_prefix']:<12} {cell(r['label'], 24)} "
                    f"{_when(r['created_at']):<16} {_when(r['last_used_at']):<16} "
                    f"{_when(r['revoked_at'])}"
                    for r in rows
                ]
                lines += [
                    f"{'-':>4} {f['digest_prefix']:<12} (fixed in {f['source']}; read at start)"
                    for f in fixed
                ]
                return print_result(args, rows + fixed, "\n".join(lines))
            try:
                row = find_key(s, args.key)
            except UnknownKey as exc:
                print(f"courier: {exc}", file=sys.stderr)
                return EXIT_USAGE if "at least" in str(exc) else EXIT_NOT_FOUND
            if not revoke_key(s, row, cli_actor(), now):
                print(f"courier: API key #{row.id} was already revoked", file=sys.stderr)
                return EXIT_NOT_FOUND
            s.commit()
            return print_result(
                args, _key_dict(row), f"API key #{row.id} revoked; refused from now on"
            )
    finally:
        engine.dispose()
