"""Portal: the web app: the REST API for staff and the RIS (:mod:`portal.api`), the
patient and clinician pages (link, code, download, share), the staff pages (requests,
timeline, actions, burn queue) and ``/metrics``.

May import ``store``, ``release``, ``delivery``, ``rules`` and ``telemetry``; never ``node``.
"""
