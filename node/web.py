"""The web app (REST API, patient and staff pages) served by uvicorn inside ``courier
serve``, on its own thread: h11 on the asyncio loop, wrapped in :class:`~node.sendfile.
ZeroCopy` so package downloads go out with ``sendfile``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from node.config import Config
from node.sendfile import ZeroCopy
from portal.api import create_app
from portal.context import PortalContext

log = logging.getLogger("courier.node.web")


def api_key_hashes(cfg: Config) -> list[str]:
    """Digests from node.yaml plus the keys file (missing file: none)."""
    hashes = list(cfg.portal.api_key_hashes)
    path: Path = cfg.api_keys_path
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                hashes.append(line.lower())
    return hashes


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
        config = uvicorn.Config(
            app,
            http="h11",  # the protocol ZeroCopy knows
            loop="asyncio",
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
