"""Real DICOM peers on loopback for tests and benchmarks: dcmtk, Orthanc and pynetdicom.

- :func:`free_port`: a free TCP port on 127.0.0.1.
- :func:`require_peer`: skip a test when a peer is missing, or fail it when the environment
  has ``COURIER_REQUIRE_PEERS=1`` (CI), so a missing install never passes silently.
- :func:`storescu`, :func:`echoscu`: dcmtk's command-line SCUs.
- :class:`DcmtkStorescp`: dcmtk's ``storescp`` writing into a directory of its own.
- :class:`Orthanc`: an Orthanc server with its own configuration and storage.
- :class:`PynetdicomScp`: a small pynetdicom SCP in this process, for the answers no real
  peer gives on demand (a failure status for one instance, 0xA801, a refused association,
  a storage commitment report on a new association).
- :func:`park_reactor`: hold a pynetdicom requestor's reactor still before a request, so a
  peer that answers within a millisecond cannot lose its answer to the reactor.

Debian builds of dcmtk and Orthanc leave Nagle's algorithm on unless the environment has
``TCP_NODELAY=1``; every C-STORE then stalls about 40 ms on the delayed ACK. Every process
started here gets ``TCP_NODELAY=1``.

Only loopback hosts are accepted (``ValueError`` otherwise): these peers exist for tests.
dcmtk 3.6.7's ``storescp`` and Orthanc 1.10's DICOM server have no bind-address option and
listen on every interface; nothing here sends anything off the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = [
    "DcmtkStorescp",
    "Orthanc",
    "OrthancError",
    "PynetdicomScp",
    "echoscu",
    "free_port",
    "have_dcmtk",
    "have_orthanc",
    "nodelay_env",
    "park_reactor",
    "require_peer",
    "storescu",
    "wait_for_echo",
]

ORTHANC_BIN = "/usr/sbin/Orthanc"
_DCMTK_TOOLS = ("storescu", "storescp", "echoscu", "dcmdump")


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


def have_dcmtk() -> bool:
    """Return whether dcmtk's storescu, storescp, echoscu and dcmdump are on PATH."""
    return all(shutil.which(tool) for tool in _DCMTK_TOOLS)


def have_orthanc() -> bool:
    """Return whether the Orthanc server binary is installed."""
    return os.access(ORTHANC_BIN, os.X_OK)


def nodelay_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``base`` (default: this process's environment) plus ``TCP_NODELAY=1``."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    return env


def _loopback(host: str) -> str:
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"test peers talk to loopback only, not {host!r}")


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
    argv = [
        "storescu",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *scan,
        *extra,
        _loopback(host),
        str(port),
        *paths,
    ]
    return subprocess.run(
        argv, env=nodelay_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


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
    argv = ["echoscu", "-aet", calling_ae, "-aec", called_ae, *extra, _loopback(host), str(port)]
    return subprocess.run(
        argv, env=nodelay_env(), capture_output=True, text=True, timeout=timeout, check=False
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


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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
            raise RuntimeError(f"storescp did not start: {_tail(self.log_path)}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            _stop(self.process)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def files(self) -> list[Path]:
        """Return the files received so far, sorted by name."""
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())


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
                name: [aet, _loopback(host), port]
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
                    f"Orthanc exited with {self.process.returncode}: {_tail(self.log_path)}"
                )
            try:
                self.get("/system")
                return
            except (OSError, OrthancError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer /system: {_tail(self.log_path)}")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            _stop(self.process, grace=20.0)
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


# -- pynetdicom --------------------------------------------------------------------------


Context = str | tuple[str, bool, bool]  # abstract syntax, or (abstract syntax, SCU, SCP role)
Handler = tuple[Any, Any]  # (pynetdicom event, handler)


class PynetdicomScp:
    """A pynetdicom SCP on ``127.0.0.1:port`` (0: a free port), in this process.

    It accepts ``contexts`` (an abstract syntax with pynetdicom's default transfer
    syntaxes, or ``(abstract syntax, scu_role, scp_role)`` for role selection), plus every
    storage SOP class with ``storage=True``, and binds ``handlers``. With
    ``require_called_ae`` it refuses associations addressed to another AE title; with
    ``require_calling_ae`` (AE titles) it refuses every other calling AE (a picky PACS).

    With ``storage=True`` it answers C-STOREs: ``per_association`` lists the UIDs per
    association (one list per accepted association, also without ``storage``), a UID in
    ``fail_once`` is answered 0xA700 the first time it arrives, ``before_store`` (when
    set) is called with each UID before the answer (to hold one back), and with
    ``keep_datasets`` (the default) ``received`` maps each SOP Instance UID to the
    dataset bytes as sent. Courier's own SCP switches pynetdicom to chunked receive
    process-wide (``scp.spool.install``); a peer that keeps datasets reads them from
    memory, so it switches that off while it runs and restores it on exit: beside
    Courier's SCP in the same process, pass ``keep_datasets=False``.
    """

    OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (for a UID in fail_once)

    def __init__(
        self,
        ae_title: str = "PEER",
        port: int = 0,
        *,
        contexts: Sequence[Context] = (),
        storage: bool = False,
        handlers: Sequence[Handler] = (),
        require_called_ae: bool = False,
        require_calling_ae: Sequence[str] = (),
        keep_datasets: bool = True,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self._contexts = list(contexts)
        self._storage = storage
        self._keep = storage and keep_datasets
        self._handlers = list(handlers)
        self.require_called_ae = require_called_ae
        self.require_calling_ae = list(require_calling_ae)
        self.fail_once: set[str] = set()
        self.before_store: Callable[[str], None] | None = None
        self.received: dict[str, bytes] = {}
        self.per_association: list[list[str]] = []
        self._server: Any = None
        self._chunked = False

    def _accepted(self, _event: Any) -> None:
        self.per_association.append([])

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.per_association[-1].append(uid)
        if self.before_store is not None:
            self.before_store(uid)
        if uid in self.fail_once:
            self.fail_once.discard(uid)
            return self.OUT_OF_RESOURCES  # Refused: out of resources
        if self._keep:
            self.received[uid] = bytes(event.request.DataSet.getvalue())
        return 0x0000  # Success

    def uids(self, association: int) -> list[str]:
        """The SOP Instance UIDs stored on the ``association``-th association (from 0)."""
        return self.per_association[association]

    def __enter__(self) -> Self:
        from pynetdicom import AE, _config, evt
        from pynetdicom.presentation import AllStoragePresentationContexts

        ae = AE(ae_title=self.ae_title)
        if self._storage:
            ae.supported_contexts = AllStoragePresentationContexts
        for context in self._contexts:
            if isinstance(context, str):
                ae.add_supported_context(context)
            else:
                uid, scu_role, scp_role = context
                ae.add_supported_context(uid, scu_role=scu_role, scp_role=scp_role)
        ae.require_called_aet = self.require_called_ae
        ae.require_calling_aet = self.require_calling_ae
        handlers: list[Any] = [(evt.EVT_ACCEPTED, self._accepted), *self._handlers]
        if self._storage:
            handlers.append((evt.EVT_C_STORE, self._store))
        self._chunked = bool(_config.STORE_RECV_CHUNKED_DATASET)
        if self._keep:
            _config.STORE_RECV_CHUNKED_DATASET = False
        try:
            self._server = ae.start_server(
                ("127.0.0.1", self.port), block=False, evt_handlers=handlers
            )
        except BaseException:
            _config.STORE_RECV_CHUNKED_DATASET = self._chunked
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        from pynetdicom import _config

        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._keep:
            _config.STORE_RECV_CHUNKED_DATASET = self._chunked


def park_reactor(assoc: Any, timeout: float = 1.0) -> None:
    """Hold a pynetdicom requestor's reactor at its checkpoint before one request is sent.

    Call it right before ``assoc.send_c_store`` (or ``send_n_action``, ...). pynetdicom's
    ``send_*`` pauses the reactor by clearing a checkpoint and waiting for its
    ``_is_paused`` flag, which is still True for a moment after the reactor passed the
    checkpoint: if the response comes back within that moment (Courier answers in well
    under a millisecond; the reactor may be waiting for the GIL on a loaded machine), the
    reactor takes it and ``send_*`` returns an empty answer. Here we clear the checkpoint
    and wait until the reactor thread really waits on it; ``send_*`` sets it again when
    done. Bounded by ``timeout`` seconds, and returns early when the association ends
    (the request then fails as it would have).

    Courier's own sender has its own, stricter wait (``scp/storesend.py``); this one
    serves the tests' pynetdicom SCUs.
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    deadline = time.monotonic() + timeout
    while (
        assoc.is_established
        and time.monotonic() < deadline
        and not (assoc._is_paused and checkpoint._cond._waiters)  # the reactor waits on it
    ):
        time.sleep(0.0002)
