"""Errors raised by the release package; each message says what to do next.

- :class:`RequestError`: base.
- :class:`RequestNotFound` (also a ``LookupError``): no request with that reference or id.
- :class:`InvalidTransition` (also a ``ValueError``): the request's state does not allow
  the move, or another actor moved it first.
- :class:`RequestConflict` (also a ``ValueError``): an idempotency key reused with
  different content.
- :class:`InvalidRequest` (also a ``ValueError``): an argument such as the actor or the
  reason is empty or too long.

Messages carry references and states only, never patient data: they may be logged.
"""

from __future__ import annotations


class RequestError(Exception):
    """Base of every release request error."""


class RequestNotFound(RequestError, LookupError):
    """No request has this reference or id."""


class InvalidTransition(RequestError, ValueError):
    """The move is not allowed from the request's current state (or someone moved first)."""


class RequestConflict(RequestError, ValueError):
    """An idempotency key was reused for a different request."""


class InvalidRequest(RequestError, ValueError):
    """An argument of a request operation is malformed."""
