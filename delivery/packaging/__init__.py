"""Packaging: turning a request's stored instances into the files a patient downloads.

Owns the package (:mod:`~delivery.packaging.package`: ZIP parts, atomic writes, sweeping
partial files), one part's contents (:mod:`~delivery.packaging.builder`), the ZIP writer
(:mod:`~delivery.packaging.zipwriter`), the DICOMDIR (:mod:`~delivery.packaging.dicomdir`),
the manifest (:mod:`~delivery.packaging.manifest`), the part plan
(:mod:`~delivery.packaging.parts`), the plain-language README
(:mod:`~delivery.packaging.readme`), the selected items
(:mod:`~delivery.packaging.items`), the series thumbnails
(:mod:`~delivery.packaging.preview`), the offline viewer in every part and on every disc
(:mod:`~delivery.packaging.viewer`, its static files in ``viewer_assets/``) and their
errors (:mod:`~delivery.packaging.errors`).

May import ``store``, ``imaging``, ``telemetry`` and ``delivery.i18n`` (the templates and
catalogs are shared with the messages); never the channels, the outbox, ``scp``,
``portal`` or ``node``. Discs (:mod:`delivery.disc`) reuse the builder's public pieces.
"""
