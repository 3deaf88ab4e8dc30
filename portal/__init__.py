"""Portal: the web app: the REST API for staff and the RIS (:mod:`portal.api`) and, in a
later issue, the patient and staff pages.

May import ``store``, ``release``, ``delivery``, ``rules`` and ``telemetry``; never ``node``.
"""
