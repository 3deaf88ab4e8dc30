"""Errors raised by the notification channels (email, SMS, file).

One hierarchy, in the manner of aiosmtplib's ``errors.py``: every failure to hand a
message to its provider is a :class:`DeliveryError`; subclasses also inherit the matching
builtin (``ConnectionError``, ``TimeoutError``) so generic handlers still work.

The outbox relay reads three attributes and nothing else:

- ``permanent``: retrying cannot help (a refused address, an invalid number). Stop, mark
  the request failed or fall back to the second channel, alert staff.
- ``retry_after``: the provider asked us to wait this many seconds (Twilio 429).
- ``outcome_unknown``: the provider may have accepted the message (the link dropped after
  the final dot, an HTTP 5xx or timeout after the POST). Email: re-send with the *same*
  Message-ID. SMS: call ``channel.lookup(message)`` first and re-send only if it finds
  nothing, so a patient never gets two different codes.

``code`` keeps the provider's own error code (SMTP reply code, Twilio error code) for the
attempt log. Messages say what to do next and never contain the address, number, code
or body of the message: they end up in logs and on staff screens.
"""

from __future__ import annotations


class DeliveryError(Exception):
    """A message could not be handed to its provider (see the module docstring)."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.code = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, permanent={self.permanent}, "
            f"retry_after={self.retry_after}, outcome_unknown={self.outcome_unknown}, "
            f"code={self.code})"
        )


class DeliveryConnectionError(DeliveryError, ConnectionError):
    """The provider could not be reached, or the connection dropped. Never permanent."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message, permanent=False, outcome_unknown=outcome_unknown)


class DeliveryTimeoutError(DeliveryError, TimeoutError):
    """The provider did not answer in time. Never permanent."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message, permanent=False, outcome_unknown=outcome_unknown)


class RecipientRefusedError(DeliveryError):
    """The provider refused this recipient for good (SMTP 5xx on RCPT, Twilio 21211,
    21614, 21610). The relay may still reach the patient through the other channel."""

    def __init__(self, message: str, *, code: int | None) -> None:
        super().__init__(message, permanent=True, code=code)


class RateLimitedError(DeliveryError):
    """The provider asked us to slow down; ``retry_after`` says for how long, if it did."""

    def __init__(self, message: str, *, retry_after: float | None, code: int | None) -> None:
        super().__init__(message, permanent=False, retry_after=retry_after, code=code)


class ChannelAuthError(DeliveryError):
    """The provider refused our credentials. Not the message's fault, so not permanent:
    every message would fail the same way until an admin fixes the settings."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message, permanent=False, code=code)


class ChannelSetupError(Exception):
    """The ``email:`` or ``sms:`` settings cannot build a working channel (a secret that
    is missing or unreadable). Raised at start-up, never while sending."""
