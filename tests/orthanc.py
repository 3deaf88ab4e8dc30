"""Orthanc as a real test peer: a server with its own configuration and storage, on free ports.

- :func:`have_orthanc`: whether the server binary is installed (pair it with
  :func:`tests.peers.require_peer`).
- :class:`Orthanc`: the server as a context manager, with small REST helpers (upload,
  C-STORE to a modality, C-ECHO, list what it holds).
- :class:`OrthancError`: an HTTP error from its REST API.

Orthanc is started with ``TCP_NODELAY=1`` and its modalities must be on loopback (see
:mod:`tests.peers`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from tests.peers import free_port, log_tail, loopback_host, nodelay_env, stop_process

__all__ = ["ORTHANC_BIN", "Orthanc", "OrthancError", "have_orthanc"]

ORTHANC_BIN = "/usr/sbin/Orthanc"


def have_orthanc() -> bool:
    """Return whether the Orthanc server binary is installed."""
    return os.access(ORTHANC_BIN, os.X_OK)


class OrthancError(RuntimeError):
    """Orthanc answered an HTTP error; ``status`` is the HTTP code, ``body`` its text."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(f"{message}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Orthanc:
    """An Orthanc server with its own configuration and empty storage, on free ports.

    ``modalities`` maps Orthanc's name for a remote modality to ``(aet, host, port)``
    (hosts must be loopback). ``config`` overrides or adds configuration keys (e.g.
    ``{"SyncStorageArea": False}``). On entry the JSON configuration is written into a
    temporary directory (which also holds storage, index and log, is created under
    ``workdir`` or the system's temporary directory, and is removed on exit unless
    ``keep=True``), Orthanc is started with ``TCP_NODELAY=1``, and the call returns
    once ``GET /system`` answers; ``RuntimeError`` (with the log's tail) if it does not
    within ``startup_timeout`` seconds. HTTP helpers use urllib only and raise
    :class:`OrthancError` on HTTP errors.

    Keys checked against Orthanc 1.10.1's own defaults (``Orthanc --config=FILE``):
    ``RemoteAccessAllowed: false`` keeps HTTP on loopback; ``Plugins: []`` loads none;
    ``SyncStorageArea`` (default true) fsyncs each stored file.
    """

    def __init__(
        self,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        *,
        aet: str = "ORTHANC",
        config: Mapping[str, Any] | None = None,
        executable: str = ORTHANC_BIN,
        startup_timeout: float = 30.0,
        keep: bool = False,
        workdir: Path | None = None,
    ) -> None:
        self.aet = aet
        self._workdir = workdir
        self.modalities = dict(modalities or {})
        self._overrides = dict(config or {})
        self._executable = executable
        self._startup_timeout = startup_timeout
        self._keep = keep
        self.dicom_port = 0
        self.http_port = 0
        self.dir = Path()
        self.process: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        """Orthanc's combined stdout/stderr."""
        return self.dir / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """Return the configuration written on entry (ports must be chosen first)."""
        return {
            "Name": "courier-test-orthanc",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "LuaScripts": [],
            "DicomModalities": {
                name: [aet, loopback_host(host), port]
                for name, (aet, host, port) in self.modalities.items()
            },
            "DicomScuTimeout": 10,
            "SaveJobs": False,
            **self._overrides,
        }

    def __enter__(self) -> Self:
        self.dir = Path(tempfile.mkdtemp(prefix="orthanc-", dir=self._workdir))
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        config_path = self.dir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self._executable, str(config_path)],
                env=nodelay_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.process.returncode}: {log_tail(self.log_path)}"
                )
            try:
                self.get("/system")
                return
            except (OSError, OrthancError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer /system: {log_tail(self.log_path)}")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop_process(self.process, grace=20.0)
        if not self._keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- REST -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 60.0,
    ) -> Any:
        """Send one request to the REST API and return the decoded JSON answer (or None)."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            raise OrthancError(f"{method} {path}", err.code, text) from None
        return json.loads(data) if data.strip() else None

    def get(self, path: str) -> Any:
        """GET ``path`` and return its JSON."""
        return self.request("GET", path)

    def upload(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """POST each file to ``/instances``; return the Orthanc IDs of the instances."""
        ids = []
        for path in paths:
            answer = self.request(
                "POST", "/instances", Path(path).read_bytes(), content_type="application/dicom"
            )
            ids.append(str(answer["ID"]))
        return ids

    def store_to(self, modality: str, resources: Sequence[str], synchronous: bool = True) -> Any:
        """Ask Orthanc to C-STORE ``resources`` (Orthanc IDs) to ``modality``; return its JSON.

        Synchronous by default: the call returns when the transfer is over, and an
        :class:`OrthancError` means it failed.
        """
        body = json.dumps({"Resources": list(resources), "Synchronous": synchronous}).encode()
        return self.request("POST", f"/modalities/{modality}/store", body)

    def echo(self, modality: str) -> bool:
        """C-ECHO ``modality`` from Orthanc; return whether it answered."""
        try:
            self.request("POST", f"/modalities/{modality}/echo", b"{}")
        except OrthancError:
            return False
        return True

    def studies(self) -> list[str]:
        """Return the Orthanc IDs of all stored studies."""
        return [str(s) for s in self.get("/studies")]

    def instances(self) -> list[str]:
        """Return the Orthanc IDs of all stored instances."""
        return [str(s) for s in self.get("/instances")]

    def study_instance_uids(self) -> list[str]:
        """Return the StudyInstanceUID of every stored study, sorted."""
        studies = self.get("/studies?expand")
        return sorted(str(s["MainDicomTags"]["StudyInstanceUID"]) for s in studies)
