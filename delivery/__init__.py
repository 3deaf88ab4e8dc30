"""Delivery: getting a ready request to its recipient.

Owns packaging (ZIP parts with DICOMDIR, READMEs, manifest and previews: the
sub-package :mod:`delivery.packaging`, with its own docstring), disc images and the CD
burn queue (``delivery.disc``, ``delivery.discs``, ``delivery.disc_images``), grants and
codes (``delivery.grants``, ``delivery.codes``), the channels (email, SMS, file), the
outbox and its relay, the nightly batch and its scheduler, hospital-to-hospital sends
(``delivery.dicomsend``: the C-STORE itself is handed in by ``node``, since ``delivery``
may not import ``scp``), and the message templates and catalogs.

May import ``store``, ``release``, ``telemetry`` and ``imaging`` (previews are rendered
through it, in a limited child process); never ``scp``, ``portal`` or ``node``.
"""
