"""Release: requests to release a patient's studies by secure link.

Owns the release requests themselves: validation of what staff submit
(``release.validation``), short human-typable references with a check character
(``release.reference``), the request states and the one table of allowed transitions
(``release.states``), and the service that creates, finds, moves and audits requests
(``release.requests``), the one rule of whether a request's link is live, which the
portal and delivery's messages both follow (``release.links``), and matching stable
studies to pending requests through the rules, with completeness and overdue sweeps
(``release.matching``), the moves a request makes as studies attach, shared by matching
and staff (``release.progress``), the patient-identity check every join passes
(``release.identity``) and the staff's two ways of closing a mismatch
(``release.mismatch``), the release policy's hold on a ready request (an embargo, the
wait for the final report; staff release early or hold longer: ``release.embargo``;
which requests a hold keeps back now, for the lists: ``release.holds``), and the figures
read back from the requests' history for staff and the hospital's reporting (outcomes
per day, time to first download, failures by cause: ``release.report``). Packaging and
sending (``delivery``) and the web (``portal``) build on it.

Imports nothing of ours but ``store`` and ``rules``.

Errors (``release.errors``): :class:`~release.errors.RequestError` and its subclasses
:class:`~release.errors.RequestNotFound`, :class:`~release.errors.InvalidTransition`,
:class:`~release.errors.RequestConflict`, :class:`~release.errors.InvalidRequest`. Bad
drafts raise pydantic's ``ValidationError``; :func:`release.validation.validation_errors`
turns it into per-field messages.
"""
