"""Store: persistence shared by every package.

Owns the SQLAlchemy models and sessions (``store.models``, ``store.db``), the Alembic
migrations applied at start-up (``store.migrations``), the content store on disk whose
paths are built from validated UIDs only (``store.content``), and the catalog of
received studies (``store.catalog``). Imports nothing of ours but ``rules.source``-free
stdlib helpers: ``store`` sits below ``scp``, ``delivery``, ``portal`` and ``node``.

Errors: :class:`store.errors.StoreError` and its subclasses.
"""
