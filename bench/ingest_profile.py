"""Where the time per received instance goes, by stage, in microseconds.

Usage::

    .venv/bin/python bench/ingest_profile.py [--set small|ct] [--n 1000] [--db sqlite|postgresql]
                                             [--associations 1]

Starts the Storage SCP in this process (as ``courier serve`` does, one worker, SQLite
``synchronous=FULL`` by default) twice, once with pynetdicom's receive path
(``scp.fast_store: false``) and once with Courier's own (``true``), pushes the same
instances with dcmtk's ``storescu`` on one association (TCP_NODELAY=1; ``--associations
N``: N concurrent ones, the files split in N), and times the stages of each C-STORE by
wrapping the functions that do them (with several associations the stages overlap, so
they are summed time per instance, not shares of the wall time):

- ``header``: reading and checking the header (``scp.header.read_header``);
- ``hash``: SHA-256 of the file read back (pynetdicom's path; the fast path hashes while
  writing, counted in ``spool write``);
- ``spool write``: writing the arriving dataset to the spool file;
- ``fsync file``: ``store.content.fsync_file`` (the file's fdatasync);
- ``fsync folder``: ``store.group_sync.GroupSync.sync``, the wait until a flush of the
  folder (shared by concurrent placers) covers the new name;
- ``place (rest)``: the rest of placing the file (link, unlink, folders);
- ``index row``: ``Catalog.add`` (one transaction, its commit durable);
- ``receive path``: everything else per instance (wall time / n minus the above):
  PDUs, command sets, responses, threads, and the sender's own work.

Below the table, the flushes per instance: the files' and the folders' actually issued
(``store.group_sync.fsync_dir`` calls: fewer than one per instance when concurrent
placers share them).

The wrappers cost a few microseconds each; the figures are for comparing stages and paths.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import data_sets  # noqa: E402
from tests import dcmtk  # noqa: E402

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
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, owner: Any, name: str, stage: str) -> Callable[[], None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self.total[stage] += elapsed
                    self.calls[stage] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


@contextlib.contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    from scp import ingest, spool
    from store import catalog, content, group_sync

    undo = [
        timers.wrap(ingest, "read_header", "header"),
        # The hash of a file read back: whichever function ingest calls for it.
        timers.wrap(
            ingest, "sha256_of" if hasattr(ingest, "sha256_of") else "content_sha256", "hash"
        ),
        timers.wrap(spool.SpoolFile, "write", "spool write"),
        timers.wrap(content, "fsync_file", "fsync file"),
        timers.wrap(group_sync.GroupSync, "sync", "fsync folder"),
        timers.wrap(group_sync, "fsync_dir", "folder flush"),
        timers.wrap(content.ContentStore, "place", "place"),
        timers.wrap(catalog.Catalog, "add", "index row"),
    ]
    try:
        yield
    finally:
        for u in undo:
            u()


def push(port: int, files: list[Path], associations: int) -> None:
    """storescu on ``associations`` concurrent associations, the files split among them."""
    parts = [files[i::associations] for i in range(associations)]
    failures: list[str] = []

    def one(part: list[Path]) -> None:
        result = dcmtk.storescu("127.0.0.1", port, part)
        if result.returncode != 0:
            failures.append(result.stderr[-1500:])

    threads = [threading.Thread(target=one, args=(p,)) for p in parts if p]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(failures[0])


def run(
    files: list[Path], fast: bool, db: str, workdir: Path, associations: int = 1
) -> dict[str, float]:
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
            push(port, files, associations)
            wall = time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()
    n = len(files)
    us = {k: v / n * 1e6 for k, v in timers.total.items()}
    us.pop("folder flush", None)  # inside "fsync folder"
    us["place (rest)"] = (
        us.pop("place", 0.0) - us.get("fsync file", 0.0) - us.get("fsync folder", 0.0)
    )
    us["receive path"] = wall / n * 1e6 - sum(us.values())
    us["total"] = wall / n * 1e6
    us["file flushes"] = timers.calls["fsync file"] / n
    us["folder flushes"] = timers.calls["folder flush"] / n
    return us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("small", "ct"), default="small")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL URL")
    parser.add_argument("--associations", type=int, default=1, help="concurrent storescu")
    args = parser.parse_args()
    files = data_sets([args.set])[0].files[: args.n]
    results = {}
    for fast in (False, True):
        with tempfile.TemporaryDirectory(prefix="courier-profile-") as tmp:
            results[fast] = run(files, fast, args.db, Path(tmp), args.associations)
    print(
        f"{args.set}, {len(files)} instances, {args.associations} association(s), "
        f"{args.db}: us per instance"
    )
    print()
    print("| stage | pynetdicom path | fast path |")
    print("|---|---:|---:|")
    for stage in (*STAGES, "receive path", "total"):
        print(
            f"| {stage} | {results[False].get(stage, 0):.0f} | {results[True].get(stage, 0):.0f} |"
        )
    for count in ("file flushes", "folder flushes"):
        print(
            f"| {count} per instance | {results[False][count]:.2f} | {results[True][count]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
