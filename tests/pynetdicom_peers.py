"""pynetdicom as a test peer, in this process: a small SCP and a steady hand for its SCUs.

- :class:`PynetdicomScp`: a pynetdicom SCP on loopback, for the answers no real peer gives
  on demand (a failure status for one instance, 0xA801, a refused association, a storage
  commitment report on a new association).
- :func:`park_reactor`: hold a pynetdicom requestor's reactor still before a request, so a
  peer that answers within a millisecond cannot lose its answer to the reactor.

pynetdicom is imported inside the calls, so the benchmarks can import this module cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Self

from tests.peers import free_port

__all__ = ["Context", "Handler", "PynetdicomScp", "park_reactor"]


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
