"""Portal: patient pages, staff pages and the REST API.

Not built yet (see the portal issue). May import ``store``, ``delivery`` and ``rules``.
"""
