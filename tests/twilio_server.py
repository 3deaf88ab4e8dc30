"""A local Twilio-compatible HTTP endpoint on 127.0.0.1:0 for the SMS tests.

Implements what Courier uses of Twilio's 2010-04-01 REST API, closely enough for the
official ``twilio`` client: ``POST`` and ``GET /2010-04-01/Accounts/{Sid}/Messages.json``
(form-encoded create; list filtered by ``To``/``From``, newest first) and ``GET
.../Messages/{MessageSid}.json``. Basic auth with the account SID and auth token is
checked on every request (401 with code 20003 otherwise, as Twilio answers).

Faults are scripted per ``POST`` attempt (counted from 1 after :meth:`script`)::

    gw.script({1: Fault("status", status=429, retry_after="7"), 2: Fault("refuse", code=21211)})

Kinds: ``status`` (an error status with a Twilio JSON body), ``refuse`` (400 with a
Twilio error code), ``accept_then_500`` (the message is stored, the answer is a 500),
``timeout`` (optionally store, then answer only after ``seconds``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

_MESSAGES = re.compile(
    r"^/2010-04-01/Accounts/(AC[0-9a-f]{32})/Messages(?:/(SM[0-9a-f]{32}))?\.json$"
)


@dataclass(frozen=True)
class Fault:
    kind: Literal["status", "refuse", "accept_then_500", "timeout"]
    status: int = 500
    code: int | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    store: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    auth: tuple[str, str] | None
    headers: dict[str, str]


@dataclass
class _State:
    sid: str
    token: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    posts: int = 0
    faults: dict[int, Fault] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "status": status,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the requests are recorded instead

    def _reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[Recorded, re.Match[str] | None]:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        auth = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            auth = (user, password)
        rec = Recorded(
            self.command,
            parts.path,
            {k: v[0] for k, v in parse_qs(parts.query).items()},
            {k: v[0] for k, v in parse_qs(raw).items()},
            auth,
            dict(self.headers),
        )
        st = self.server.state
        with st.lock:
            st.requests.append(rec)
        return rec, _MESSAGES.match(parts.path)

    def _authorised(self, rec: Recorded, match: re.Match[str] | None) -> bool:
        st = self.server.state
        if match is None:
            self._reply(404, _error(404, 20404, "The requested resource was not found"))
            return False
        if rec.auth != (st.sid, st.token) or match.group(1) != st.sid:
            self._reply(401, _error(401, 20003, "Authenticate"))
            return False
        return True

    def do_GET(self) -> None:
        rec, match = self._record()
        if not self._authorised(rec, match):
            return
        assert match is not None
        st = self.server.state
        with st.lock:
            msgs = list(reversed(st.messages))  # newest first, as Twilio lists
        if match.group(2):
            found = [m for m in msgs if m["sid"] == match.group(2)]
            if not found:
                self._reply(404, _error(404, 20404, "The requested resource was not found"))
            else:
                self._reply(200, found[0])
            return
        for key, attr in (("To", "to"), ("From", "from")):
            if key in rec.query:
                msgs = [m for m in msgs if m[attr] == rec.query[key]]
        size = int(rec.query.get("PageSize", "50"))
        self._reply(
            200,
            {
                "messages": msgs[:size],
                "page": 0,
                "page_size": size,
                "start": 0,
                "end": min(size, len(msgs)) - 1,
                "uri": rec.path,
                "first_page_uri": rec.path,
                "next_page_uri": None,
                "previous_page_uri": None,
            },
        )

    def do_POST(self) -> None:
        rec, match = self._record()
        if not self._authorised(rec, match) or match is None or match.group(2):
            return
        st = self.server.state
        with st.lock:
            st.posts += 1
            fault = st.faults.get(st.posts)
        if fault and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            code = fault.code or (20429 if fault.status == 429 else fault.status)
            self._reply(fault.status, _error(fault.status, code, "Scripted failure"), headers)
            return
        if fault and fault.kind == "refuse":
            self._reply(400, _error(400, fault.code or 21211, "Scripted refusal"))
            return
        to = rec.form.get("To", "")
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", to):
            self._reply(400, _error(400, 21211, "The 'To' number is not a valid phone number."))
            return
        now = datetime.now(UTC)
        msg = {
            "sid": "SM" + secrets.token_hex(16),
            "account_sid": st.sid,
            "to": to,
            "from": rec.form.get("From"),
            "body": rec.form.get("Body", ""),
            "messaging_service_sid": rec.form.get("MessagingServiceSid"),
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": format_datetime(now, usegmt=True),
            "date_updated": format_datetime(now, usegmt=True),
            "date_sent": None,
            "api_version": "2010-04-01",
            "error_code": None,
            "error_message": None,
            "price": None,
            "price_unit": "USD",
            "num_media": "0",
            "uri": f"{rec.path[:-5]}/x.json",
        }
        if fault is None or fault.kind == "accept_then_500" or fault.store:
            with st.lock:
                st.messages.append(msg)
        if fault and fault.kind == "accept_then_500":
            self._reply(500, _error(500, 20500, "Internal Server Error"))
            return
        if fault and fault.kind == "timeout":
            st.stopping.wait(fault.seconds)
            self.close_connection = True
        with contextlib.suppress(OSError):  # a client that gave up waiting: expected
            self._reply(201, msg)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


class TwilioServer:
    """Start with ``with``; ``base_url``, ``sid``, ``token``, ``messages``, ``requests``."""

    def __init__(self) -> None:
        self.sid = "AC" + secrets.token_hex(16)
        self.token = secrets.token_hex(16)
        self._state = _State(self.sid, self.token)
        self._server = _Server(self._state)
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.messages)

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def posts(self) -> int:
        return self._state.posts

    def script(self, faults: dict[int, Fault]) -> None:
        """Faults by POST attempt, counted from the next one (1 = the next POST)."""
        with self._state.lock:
            base = self._state.posts
            self._state.faults = {base + n: f for n, f in faults.items()}

    def __enter__(self) -> TwilioServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
