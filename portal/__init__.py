"""Portal: the web app: the REST API for staff and the RIS (:mod:`portal.api`), the
patient and clinician pages (link, code, files, download, share, the image viewer
(:mod:`portal.viewer`), DICOMweb for the recipient's own viewer (:mod:`portal.dicomweb`),
access history and more time), the staff pages (requests, holds, timeline, actions, burn
queue) and ``/metrics``.

May import ``store``, ``release``, ``delivery``, ``rules``, ``imaging`` (rendering runs in
its child processes, never in the serving process) and ``telemetry``; never ``node``.
"""
