"""Where the time per received instance goes, by stage, in microseconds.

Usage::

    .venv/bin/python bench/ingest_profile.py [--set small|ct] [--n 1000] [--db sqlite|postgresql]

Starts the Storage SCP in this process (as ``courier serve`` does, one worker, SQLite
``synchronous=FULL`` by default) twice, once with pynetdicom's receive path
(``scp.fast_store: false``) and once with Courier's own (``true``), pushes the same
instances with dcmtk's ``storescu`` on one association (TCP_NODELAY=1), and times the
stages of each C-STORE by wrapping the functions that do them:

- ``header``: reading and checking the header (``scp.header.read_header``);
- ``hash``: SHA-256 of the file read back (pynetdicom's path; the fast path hashes while
  writing, counted in ``spool write``);
- ``spool write``: writing the arriving dataset to the spool file;
- ``fsync file``, ``fsync folder``: ``store.content.fsync_file`` / ``fsync_dir``;
- ``place (rest)``: the rest of placing the file (link, unlink, folders);
- ``index row``: ``Catalog.add`` (one transaction, its commit durable);
- ``receive path``: everything else per instance (wall time / n minus the above):
  PDUs, command sets, responses, threads, and the sender's own work.

The wrappers cost a few microseconds each; the figures are for comparing stages and paths.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import data_sets  # noqa: E402
from tests import peers  # noqa: E402

STAGES = (
    "header",
    "hash",
    "spool write",
    "fsync file",
    "fsync folder",
    "place (rest)",
    "index row",
)


class Timers:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, stage: str) -> Callable[[], None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total[stage] += time.perf_counter() - t0

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


@contextlib.contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    from scp import ingest, spool
    from store import catalog, content

    undo = [
        timers.wrap(ingest, "read_header", "header"),
        timers.wrap(ingest, "sha256_of", "hash"),
        timers.wrap(spool.SpoolFile, "write", "spool write"),
        timers.wrap(content, "fsync_file", "fsync file"),
        timers.wrap(content, "fsync_dir", "fsync folder"),
        timers.wrap(content.ContentStore, "place", "place"),
        timers.wrap(catalog.Catalog, "add", "index row"),
    ]
    try:
        yield
    finally:
        for u in undo:
            u()


def run(files: list[Path], fast: bool, db: str, workdir: Path) -> dict[str, float]:
    from scp import spool
    from scp.ingest import Ingest
    from scp.server import start_server
    from scp.settings import ScpSettings
    from store.catalog import Catalog
    from store.content import ContentStore
    from store.db import make_engine, make_sessions, migrate

    url = f"sqlite:///{workdir / 'index.db'}" if db == "sqlite" else db
    engine = make_engine(url)
    migrate(engine)
    content = ContentStore(workdir / "data")
    content.prepare()
    spool.install(content.spool)
    settings = ScpSettings(ae_title="COURIER", port=11112, fast_store=fast)
    server = start_server(settings, Ingest(content, Catalog(make_sessions(engine))), port=0)
    port = int(server.server_address[1])
    timers = Timers()
    try:
        with instrumented(timers):
            t0 = time.perf_counter()
            result = peers.storescu("127.0.0.1", port, files)
            wall = time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-1500:])
    n = len(files)
    us = {k: v / n * 1e6 for k, v in timers.total.items()}
    us["place (rest)"] = (
        us.pop("place", 0.0) - us.get("fsync file", 0.0) - us.get("fsync folder", 0.0)
    )
    us["receive path"] = wall / n * 1e6 - sum(us.values())
    us["total"] = wall / n * 1e6
    return us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("small", "ct"), default="small")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL URL")
    args = parser.parse_args()
    files = data_sets([args.set])[0].files[: args.n]
    results = {}
    for fast in (False, True):
        with tempfile.TemporaryDirectory(prefix="courier-profile-") as tmp:
            results[fast] = run(files, fast, args.db, Path(tmp))
    print(f"{args.set}, {len(files)} instances, one association, {args.db}: us per instance")
    print()
    print("| stage | pynetdicom path | fast path |")
    print("|---|---:|---:|")
    for stage in (*STAGES, "receive path", "total"):
        print(
            f"| {stage} | {results[False].get(stage, 0):.0f} | {results[True].get(stage, 0):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
