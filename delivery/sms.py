"""SMS through Twilio (or a Twilio-compatible gateway at ``sms.api_base``).

The official ``twilio`` client is blocking (``requests``), so each call runs in a worker
thread with a per-request timeout and an ``asyncio`` backstop. Error mapping:

- 429 → ``RateLimitedError`` with ``retry_after`` from the ``Retry-After`` header;
- 21211 (invalid To), 21614 (not a mobile), 21610 (recipient replied STOP) →
  ``RecipientRefusedError`` with the code: the relay sends the code by the second email;
- other 4xx → permanent; 401/403 → ``ChannelAuthError`` (an admin's fix, not permanent);
- 5xx, a read timeout or a dropped connection after the POST went out →
  ``outcome_unknown=True``. Twilio's POST is not idempotent, so the relay must call
  :meth:`TwilioChannel.lookup` before retrying: it lists the recipient's recent messages
  (newest first) and matches :attr:`OutgoingMessage.client_ref`, which the composer puts
  in the text. No date filter: Twilio leaves ``DateSent`` empty while a message is
  queued, and a queued message is exactly the one we must not send twice.

Text is made GSM-7-safe first (:func:`gsm_safe`): a single typographic quote, dash or
non-breaking space forces the whole SMS into UCS-2, which cuts a segment from 160 to 70
characters: an English code SMS then costs two or three segments instead of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from delivery.channel import OutgoingMessage, Receipt
from delivery.channel_settings import SmsSettings
from delivery.errors import (
    ChannelAuthError,
    DeliveryConnectionError,
    DeliveryError,
    DeliveryTimeoutError,
    RateLimitedError,
    RecipientRefusedError,
)
from delivery.smstext import gsm_safe as gsm_safe  # re-exported: its home was here
from delivery.smstext import is_gsm7 as is_gsm7
from delivery.smstext import segments as segments

log = logging.getLogger(__name__)
# twilio's HTTP client logs every request's query string at INFO, and a message look-up
# filters by the patient's number: keep that logger at WARNING whatever the root level.
_http_log = logging.getLogger(f"{__name__}.http")
_http_log.setLevel(logging.WARNING)

_REFUSED = {21211: "invalid number", 21614: "not a mobile number", 21610: "replied STOP"}


def _as_rest_error(exc: TwilioException) -> TwilioRestException:
    """twilio's page fetch raises a bare ``TwilioException("Unable to fetch page",
    response)``: the same facts as a ``TwilioRestException`` (status, Twilio's code)."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = int(getattr(response, "status_code", 0) or 0)
    code = None
    with contextlib.suppress(ValueError, AttributeError):
        code = json.loads(getattr(response, "text", "") or "{}").get("code")
    return TwilioRestException(status, "", msg=str(exc.args[0] if exc.args else exc), code=code)


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """Twilio's client, remembering the last response's headers per thread (Twilio's
    exceptions drop them, and 429's ``Retry-After`` lives there)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout, logger=_http_log)
        self.local = threading.local()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        self.local.headers = {}
        response = super().request(method, url, *args, **kwargs)
        self.local.headers = dict(response.headers or {})
        return response


def _retry_after(headers: dict[str, str], now: datetime) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


class TwilioChannel:
    """Sends SMS messages through the Twilio REST API; safe to share between tasks."""

    name = "twilio"
    kind = "sms"

    def __init__(
        self,
        settings: SmsSettings,
        *,
        auth_token: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._s = settings
        self._clock = clock
        self._http = _HttpClient(timeout=settings.timeout_s)
        # A non-empty environment keeps TWILIO_EDGE/TWILIO_REGION in os.environ from
        # rewriting the host we point the client at.
        self._client = Client(
            settings.account_sid,
            auth_token,
            http_client=self._http,
            environment={"COURIER": "1"},
        )
        self._client.api.base_url = settings.api_base

    async def send(self, message: OutgoingMessage) -> Receipt:
        """POST the message; returns its Twilio SID. Raises DeliveryError."""
        if message.kind != "sms":
            raise ValueError("TwilioChannel sends SMS only")
        kwargs: dict[str, Any] = {"to": message.to, "body": gsm_safe(message.text)}
        if self._s.messaging_service_sid:
            kwargs["messaging_service_sid"] = self._s.messaging_service_sid
        else:
            kwargs["from_"] = self._s.from_number
        created = await self._call(lambda: self._client.messages.create(**kwargs), posted=True)
        log.info("sms %s accepted by Twilio as %s", message.message_id, created.sid)
        return Receipt(provider_id=str(created.sid), channel=self.name, accepted_at=self._clock())

    async def lookup(self, message: OutgoingMessage) -> Receipt | None:
        """The recipient's most recent messages (up to 50) searched for ``client_ref``
        (else the exact text); the match's SID, or ``None``. Raises DeliveryError when
        Twilio cannot be asked: the relay must not send blind then."""
        filters: dict[str, Any] = {"to": message.to, "limit": 50, "page_size": 50}
        if self._s.from_number:
            filters["from_"] = self._s.from_number
        found = await self._call(lambda: self._client.messages.list(**filters), posted=False)
        wanted = gsm_safe(message.text)
        for m in found:
            body = m.body or ""
            if (message.client_ref in body) if message.client_ref else body == wanted:
                return Receipt(
                    provider_id=str(m.sid),
                    channel=self.name,
                    accepted_at=m.date_created or self._clock(),
                )
        return None

    async def verify(self) -> None:
        """Ask Twilio something harmless with these credentials (the newest message's
        header; nothing is sent). Raises DeliveryError (``ChannelAuthError`` for refused
        credentials), as sending would."""
        await self._call(lambda: self._client.messages.list(limit=1, page_size=1), posted=False)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        if self._http.session is not None:
            self._http.session.close()

    async def _call(self, fn: Callable[[], Any], *, posted: bool) -> Any:
        """Run ``fn`` in a thread and map every failure to a DeliveryError. ``posted``:
        the request may change state at Twilio, so a lost answer is an unknown outcome."""

        def run() -> Any:
            try:
                return fn()
            except TwilioRestException as exc:
                headers = getattr(self._http.local, "headers", {})
                raise self._rest_error(exc, headers) from None
            except TwilioException as exc:  # a list's page fetch fails with this one
                headers = getattr(self._http.local, "headers", {})
                raise self._rest_error(_as_rest_error(exc), headers) from None

        # Backstop only: requests' own timeout (connect and each read) fires first.
        try:
            return await asyncio.wait_for(asyncio.to_thread(run), self._s.timeout_s * 2 + 5)
        except DeliveryError:
            raise
        except requests.exceptions.ConnectTimeout:
            raise DeliveryTimeoutError(
                "Twilio could not be reached in time; it will be retried"
            ) from None
        except (requests.exceptions.Timeout, TimeoutError):
            raise DeliveryTimeoutError(
                "Twilio did not answer in time; look the message up before retrying",
                outcome_unknown=posted,
            ) from None
        except requests.exceptions.ConnectionError as exc:
            refused = "NewConnectionError" in repr(exc.args[0] if exc.args else exc)
            raise DeliveryConnectionError(
                "the connection to Twilio failed; check sms.api_base and the network",
                outcome_unknown=posted and not refused,
            ) from None
        except requests.exceptions.RequestException:
            raise DeliveryConnectionError(
                "the request to Twilio failed; it will be retried", outcome_unknown=posted
            ) from None

    def _rest_error(self, exc: TwilioRestException, headers: dict[str, str]) -> DeliveryError:
        code = exc.code if isinstance(exc.code, int) else None
        if exc.status == 429:
            return RateLimitedError(
                "Twilio asked us to slow down; retry after the wait it gave",
                retry_after=_retry_after(headers, self._clock()),
                code=code,
            )
        if code in _REFUSED:
            return RecipientRefusedError(
                f"Twilio refused the number ({code}: {_REFUSED[code]}); send the code by "
                "the second email, or ask staff to correct the number",
                code=code,
            )
        if exc.status in (401, 403):
            return ChannelAuthError(
                "Twilio refused our credentials; check sms.account_sid and the auth token",
                code=code,
            )
        if exc.status >= 500:
            return DeliveryError(
                "Twilio failed with a server error; look the message up before retrying",
                permanent=False,
                outcome_unknown=True,
                code=code,
            )
        return DeliveryError(
            f"Twilio refused the message ({code}); see https://www.twilio.com/docs/errors/{code}",
            permanent=True,
            code=code,
        )
