"""What every real test peer shares: free ports, the skip-or-fail rule, TCP_NODELAY, loopback.

The peers themselves live one module per program:

- :mod:`tests.dcmtk`: dcmtk's ``storescu``, ``echoscu`` and ``storescp``.
- :mod:`tests.orthanc`: an Orthanc server with its own configuration and storage.
- :mod:`tests.pynetdicom_peers`: a pynetdicom SCP in this process, and
  :func:`~tests.pynetdicom_peers.park_reactor` for the tests' pynetdicom SCUs.

This module owns:

- :func:`free_port`: a free TCP port on 127.0.0.1.
- :func:`require_peer`: skip a test when a peer is missing, or fail it when the environment
  has ``COURIER_REQUIRE_PEERS=1`` (CI), so a missing install never passes silently.
- :func:`nodelay_env`: Debian builds of dcmtk and Orthanc leave Nagle's algorithm on unless
  the environment has ``TCP_NODELAY=1``; every C-STORE then stalls about 40 ms on the
  delayed ACK. Every peer process is started with this environment.
- :func:`loopback_host`: only loopback hosts are accepted (``ValueError`` otherwise): these
  peers exist for tests. dcmtk 3.6.7's ``storescp`` and Orthanc 1.10's DICOM server have no
  bind-address option and listen on every interface; nothing here sends anything off the
  machine.
- :func:`stop_process`, :func:`log_tail`: ending a peer process and quoting its log.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "free_port",
    "log_tail",
    "loopback_host",
    "nodelay_env",
    "require_peer",
    "stop_process",
]


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_peer(name: str, available: bool) -> None:
    """Skip the calling test when peer ``name`` is not available.

    With ``COURIER_REQUIRE_PEERS=1`` in the environment (as in CI) the test fails instead,
    so a missing peer cannot turn a red run green.
    """
    if available:
        return
    import pytest  # here, not at the top: the benchmark imports this module without pytest

    message = f"test peer {name!r} is not installed"
    if os.environ.get("COURIER_REQUIRE_PEERS") == "1":
        pytest.fail(f"{message} (COURIER_REQUIRE_PEERS=1: `make peers` installs it)", False)
    pytest.skip(message)


def nodelay_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``base`` (default: this process's environment) plus ``TCP_NODELAY=1``."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    return env


def loopback_host(host: str) -> str:
    """Return ``host`` when it is ``localhost`` or a loopback address; raise ``ValueError``."""
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"test peers talk to loopback only, not {host!r}")


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate ``process``, kill it after ``grace`` seconds, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a peer's log ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
