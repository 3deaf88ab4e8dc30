"""Store: persistence shared by every package.

Owns the SQLAlchemy models and sessions (``store.models``, ``store.db``), the Alembic
migrations applied at start-up (``store.migrations``), the content store on disk whose
paths are built from validated UIDs only (``store.content``), the catalog of
received studies (``store.catalog``), and the settings checks shared by packages that
may not import each other (``store.netaddr``: the address a server listens on).
Imports nothing of ours but ``rules.source``-free stdlib helpers: ``store`` sits below
``scp``, ``delivery``, ``portal`` and ``node``.

Errors: :class:`store.errors.StoreError` and its subclasses.
"""
