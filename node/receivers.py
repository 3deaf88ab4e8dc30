"""The receiving processes of ``courier serve``, seen from the node process.

The Storage SCP runs in ``scp.workers`` child processes (:mod:`node.receiver`), each
listening on ``scp.port`` (and ``scp.tls_port``), the kernel spreading connections
over them (SO_REUSEPORT when there are several). The node process supervises them and
runs the rest, so a receiving process holds the SCP's memory only, and the node
process none of it: it never imports the SCP's server side (:mod:`scp.server`).

:class:`Receivers` starts them all and waits until each says it listens (or exits, or
``timeout_s`` passes: :class:`ReceiverError`), tells them of a new version of the rules
(SIGHUP), tells which died, and stops them with SIGTERM (SIGKILL after ``grace_s``).
Their log lines go to the node's stderr, in the node's format.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from node.receiver import READY


class ReceiverError(RuntimeError):
    """A receiving process did not start; the message says which and what to check."""


class Receivers:
    """``count`` receiving processes for the node.yaml at ``config``."""

    def __init__(self, config: Path, count: int, *, port: int, timeout_s: float = 120.0) -> None:
        self._config = config
        self._count = count
        self._port = port
        self._timeout_s = timeout_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ready: set[int] = set()  # pids that wrote READY
        self._reload_pending = False

    def start(self, stop: threading.Event | None = None) -> None:
        """Start every receiver, then wait until each listens.

        Raises :class:`ReceiverError` when one exits first or does not listen within
        ``timeout_s``; the ones already started are stopped. Returns early, without
        error, when ``stop`` is set meanwhile (the node is stopping).
        """
        try:
            for _ in range(self._count):
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "node.receiver",
                            str(self._config),
                            str(os.getpid()),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                    )
                )
            deadline = time.monotonic() + self._timeout_s
            for proc in self.procs:
                if not self._wait_ready(proc, stop, deadline):
                    return
        except BaseException:
            self.stop()
            raise

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], stop: threading.Event | None, deadline: float
    ) -> bool:
        """True once ``proc`` wrote :data:`READY`; False when ``stop`` was set first."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        got = b""
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            readable, _, _ = select.select([fd], [], [], 0.5)
            if readable:
                chunk = os.read(fd, len(READY))
                if not chunk:  # it exited: its log lines above say why
                    proc.wait()
                    raise ReceiverError(
                        f"receiving process {proc.pid} exited with status {proc.returncode} "
                        f"before it listened on scp.port {self._port}; its log lines above "
                        "say why"
                    )
                got += chunk
                if got == READY:
                    proc.stdout.close()
                    self._ready.add(proc.pid)
                    if self._reload_pending:  # a SIGHUP came while it started
                        proc.send_signal(signal.SIGHUP)
                    return True
        raise ReceiverError(
            f"receiving process {proc.pid} did not listen on scp.port {self._port} within "
            f"{self._timeout_s:.0f} s; check that the index database answers"
        )

    @property
    def pids(self) -> list[int]:
        """The receiving processes' pids, in start order."""
        return [p.pid for p in self.procs]

    def dead(self) -> list[tuple[int, int]]:
        """(pid, exit status) of each receiving process that has exited."""
        return [(p.pid, p.returncode) for p in self.procs if p.poll() is not None]

    def reload_rules(self) -> None:
        """Ask every receiving process to take up the version of the rules the node
        accepted (SIGHUP; each also looks about once a second).

        Only those that listen: one still starting has no handler yet, and SIGHUP's
        default action would kill it. It gets the signal once it listens."""
        self._reload_pending = True
        for p in self.procs:
            if p.pid in self._ready and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to each, then SIGKILL to any still running after ``grace_s``."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
