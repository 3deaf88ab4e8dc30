"""The web app (REST API, patient and staff pages) served by uvicorn inside ``courier
serve``, on its own thread: h11 on the asyncio loop, wrapped in :class:`~node.sendfile.
ZeroCopy` so package downloads go out with ``sendfile``.

Slow clients (slowloris: many connections each sending half a request header) are cut
off by :func:`guarded_h11`, uvicorn's h11 protocol with two additions uvicorn lacks:

- a header deadline: a connection must send each request's complete header within
  ``portal.header_timeout_s`` of opening (or of the first byte after a keep-alive
  pause), else it is closed. uvicorn itself only times out idle keep-alive connections
  (``portal.keep_alive_s``), and only after a first response: a connection that sends
  nothing, or half a header, would otherwise stay open for ever;
- a cap per client address: past ``portal.max_connections_per_host`` open connections
  from one TCP peer, a new one is closed at once. Addresses in ``portal.trusted_proxies``
  are not capped: behind the reverse proxy (the production set-up) every client arrives
  from the proxy's address, so the proxy applies the per-client limits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable

import h11
import uvicorn
from sqlalchemy.orm import Session, sessionmaker
from uvicorn.protocols.http.h11_impl import H11Protocol

from node.config import Config
from node.sendfile import ZeroCopy
from portal.api import create_app
from portal.apikeys import read_keys_file
from portal.context import PortalContext

log = logging.getLogger("courier.node.web")


def api_key_hashes(cfg: Config) -> list[str]:
    """Digests from node.yaml plus the legacy keys file (missing file: none), read at
    start; keys in the database are looked up on each call (:mod:`portal.apikeys`)."""
    return list(cfg.portal.api_key_hashes) + read_keys_file(cfg.api_keys_path)


def guarded_h11(
    header_timeout_s: float, max_per_host: int, uncapped: Iterable[str] = ()
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header deadline and the per-address cap of the
    module docstring (``max_per_host`` 0: no cap). One class per server: its counts
    live on the server's event loop, so they need no lock."""
    open_per_host: dict[str, int] = {}
    exempt = frozenset(uncapped)
    warned = [float("-inf")]

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _host = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = self.client[0] if self.client else ""
            open_per_host[self._host] = open_per_host.get(self._host, 0) + 1
            over = open_per_host[self._host] > max_per_host > 0
            if over and self._host not in exempt:
                now = self.loop.time()
                if now - warned[0] >= 60:  # one line a minute, whatever the flood
                    warned[0] = now
                    log.warning("web: connections closed over portal.max_connections_per_host")
                transport.abort()  # no reply: a reply would be more work for a flood
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            left = open_per_host.get(self._host, 1) - 1
            if left > 0:
                open_per_host[self._host] = left
            else:
                open_per_host.pop(self._host, None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # IDLE: h11 has not seen a complete request header yet (a new connection, or
            # the next request on a kept-alive one) and there is unread header data.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._deadline is None:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()  # uvicorn's keep-alive timer takes over until the next byte
            super().on_response_complete()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("web: closed a connection that sent no complete request header in time")
                self.transport.close()

    return GuardedH11


class WebServer:
    """uvicorn on a thread; :meth:`stop` ends it."""

    def __init__(
        self,
        cfg: Config,
        sessions: sessionmaker[Session],
        portal: PortalContext | None = None,
    ) -> None:
        p = cfg.portal
        allow = p.metrics_allow if p.metrics_enabled else None
        app = ZeroCopy(
            create_app(sessions, api_key_hashes(cfg), portal=portal, metrics_allow=allow)
        )
        tls = {}
        if p.tls_cert_file and p.tls_key_file:
            tls = {
                "ssl_certfile": str(cfg.data_dir / p.tls_cert_file),
                "ssl_keyfile": str(cfg.data_dir / p.tls_key_file),
            }
        # uvicorn's access log would print request paths (link tokens, references): off.
        # log_config=None: uvicorn's own warnings go through the node's handler, in the
        # node's format (node.log_format), instead of a handler of its own.
        # Proxy headers are believed only from the configured proxies.
        protocol = guarded_h11(p.header_timeout_s, p.max_connections_per_host, p.trusted_proxies)
        config = uvicorn.Config(
            app,
            http=protocol,  # uvicorn's h11 (the protocol ZeroCopy knows), guarded
            loop="asyncio",
            timeout_keep_alive=p.keep_alive_s,  # type: ignore[arg-type]  # a float works
            host=p.host,
            port=p.port,
            log_level="warning",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=bool(p.trusted_proxies),
            forwarded_allow_ips=",".join(p.trusted_proxies) or "",
            **tls,  # type: ignore[arg-type]
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="courier-web", daemon=True)

    def start(self) -> None:
        """Serve; returns once the socket listens (or the server failed to start)."""
        self._thread.start()
        for _ in range(200):  # bounded: 200 x 50 ms
            if self._server.started or not self._thread.is_alive():
                break
            self._thread.join(0.05)
        if not self._server.started:
            raise RuntimeError("the web app did not start: is portal.port free?")

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for it."""
        self._server.should_exit = True
        self._thread.join(10)
