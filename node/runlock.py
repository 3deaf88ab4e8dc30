"""One ``courier serve`` per node: a lock held for the node process's whole life.

A second ``courier serve`` on the same node (an admin starting one by hand beside
systemd's, a container started twice on one volume) used to get far before anything
stopped it: it cleared the running node's metrics folder and, at start-up recovery,
swept its spool, deleting datasets still arriving and the receivers' ready spool files
(those C-STOREs then failed with 0x0110); with ``scp.workers`` above 1 both nodes could
even listen on the port together (SO_REUSEPORT). Now it stops first, with the pid of
the node that runs.

The lock is a POSIX record lock (``lockf``) on ``<data_dir>/node.lock``
(``node-<node.name>.lock`` when nodes share the data directory and the database): the
kernel releases it when the process ends, however it ends (``kill -9`` included), and a
process forked from the node (imaging's children) does not inherit it. The holder never
opens the file a second time (closing any descriptor of a file releases a POSIX lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from node.config import Config, ConfigError
from node.stores import shared_database
from store.content import DIR_MODE, FILE_MODE


class NodeRunning(ConfigError):
    """Another ``courier serve`` holds this node's lock."""

    heading = "not started"


def lock_path(cfg: Config, url: str) -> Path:
    """The node's lock file (see the module's docstring)."""
    if shared_database(url):
        return cfg.data_dir / f"node-{cfg.node.name}.lock"
    return cfg.data_dir / "node.lock"


def take(cfg: Config, url: str) -> int:
    """Lock the node for this process; returns the descriptor to keep open (closing it
    releases the lock). Raises :class:`NodeRunning` when another process holds it,
    :class:`ConfigError` when the data directory cannot hold the lock file."""
    path = lock_path(cfg, url)
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise ConfigError(
            [
                f"{path}: cannot create the node's lock file ({exc.strerror}); check "
                "node.data_dir exists and this user may write it"
            ]
        ) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise NodeRunning(
            [
                f"{cfg.source}: node {cfg.node.name!r} is already running on this data "
                f"directory{f' (pid {holder})' if holder else ''}; stop it first "
                f"(`systemctl stop courier`, or kill that pid), or give this one its own "
                "node.data_dir"
            ]
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    """Give the lock back (the node stopped)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _holder(fd: int) -> int | None:
    """The pid the running node wrote, if it reads as one."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    return None
