"""dcmtk as a real test peer: the ``storescu`` and ``echoscu`` SCUs and a ``storescp`` SCP.

- :func:`have_dcmtk`: whether the tools are installed (pair it with
  :func:`tests.peers.require_peer`).
- :func:`storescu`, :func:`echoscu`: dcmtk's command-line SCUs, run to completion.
- :func:`wait_for_echo`: poll an SCP with C-ECHO until it answers.
- :class:`DcmtkStorescp`: dcmtk's ``storescp`` writing into a directory of its own.

Every process gets ``TCP_NODELAY=1`` and talks to loopback only (see :mod:`tests.peers`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from tests.peers import free_port, log_tail, loopback_host, nodelay_env, stop_process

__all__ = ["DcmtkStorescp", "echoscu", "have_dcmtk", "storescu", "wait_for_echo"]

_DCMTK_TOOLS = ("storescu", "storescp", "echoscu", "dcmdump")


def have_dcmtk() -> bool:
    """Return whether dcmtk's storescu, storescp, echoscu and dcmdump are on PATH."""
    return all(shutil.which(tool) for tool in _DCMTK_TOOLS)


def _as_paths(files_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    if isinstance(files_or_dir, str | os.PathLike):
        return [os.fspath(files_or_dir)]
    return [os.fspath(p) for p in files_or_dir]


def storescu(
    host: str,
    port: int,
    files_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    calling_ae: str = "STORESCU",
    called_ae: str = "COURIER",
    extra: Sequence[str] = (),
    *,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, scanned recursively) with dcmtk's ``storescu``.

    ``extra`` goes before the host: e.g. :func:`synthetic.storescu_args_for` to send a
    compressed file in its own transfer syntax (by default storescu proposes only the
    uncompressed ones and cannot decompress). One association for all files; storescu stops
    at the first failed C-STORE unless ``extra`` has ``-nh``. Returns the completed process
    (output captured as text); the exit code is non-zero when a store failed. Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
    """
    paths = _as_paths(files_or_dir)
    scan = ["+sd", "+r"] if any(os.path.isdir(p) for p in paths) else []
    return _run("storescu", calling_ae, called_ae, [*scan, *extra], host, port, paths, timeout)


def echoscu(
    host: str,
    port: int,
    calling_ae: str = "ECHOSCU",
    called_ae: str = "COURIER",
    extra: Sequence[str] = (),
    *,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with dcmtk's ``echoscu``; exit code 0 means the peer answered."""
    return _run("echoscu", calling_ae, called_ae, extra, host, port, (), timeout)


def _run(
    tool: str,
    calling_ae: str,
    called_ae: str,
    options: Sequence[str],
    host: str,
    port: int,
    paths: Sequence[str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk SCU against ``host:port`` (TCP_NODELAY; output captured as text)."""
    argv = [tool, "-aet", calling_ae, "-aec", called_ae, *options, loopback_host(host), str(port)]
    return subprocess.run(
        [*argv, *paths],
        env=nodelay_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_echo(
    host: str,
    port: int,
    called_ae: str,
    *,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Poll with C-ECHO until the SCP at ``host:port`` answers; return whether it did.

    Gives up early (False) when ``process`` (the SCP) has exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            if (
                echoscu(host, port, called_ae=called_ae, extra=["-to", "2"], timeout=5).returncode
                == 0
            ):
                return True
        time.sleep(0.1)
    return False


class DcmtkStorescp:
    """dcmtk's ``storescp`` on a free port, writing each received instance into a directory.

    Use as a context manager; ``port``, ``ae_title``, ``out_dir`` and ``process`` are set on
    entry. It accepts every transfer syntax dcmtk knows (``+xa``) and, with ``fork=True``,
    forks one child per association (otherwise associations are served one at a time). The
    temporary directory (received files and log) is removed on exit unless ``out_dir`` was
    given. Raises ``RuntimeError`` when it does not answer C-ECHO within ``startup_timeout``.
    """

    def __init__(
        self,
        ae_title: str = "STORESCP",
        *,
        out_dir: Path | None = None,
        fork: bool = False,
        extra: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> None:
        self.ae_title = ae_title
        self.port = 0
        self._given_dir = out_dir
        self._tmp: Path | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else Path()
        self._fork = fork
        self._extra = list(extra)
        self._startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path()

    def __enter__(self) -> Self:
        self._tmp = Path(tempfile.mkdtemp(prefix="storescp-"))
        self.out_dir = self._given_dir or self._tmp / "in"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._tmp / "storescp.log"
        self.port = free_port()
        argv = ["storescp", "-aet", self.ae_title, "+xa", "-dhl", "-od", str(self.out_dir)]
        argv += ["--fork"] if self._fork else []
        argv += [*self._extra, str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, env=nodelay_env(), stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_for_echo(
            "127.0.0.1",
            self.port,
            self.ae_title,
            timeout=self._startup_timeout,
            process=self.process,
        ):
            self.__exit__(None, None, None)
            raise RuntimeError(f"storescp did not start: {log_tail(self.log_path)}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def files(self) -> list[Path]:
        """Return the files received so far, sorted by name."""
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())
