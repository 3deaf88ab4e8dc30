"""SCP: Courier's DICOM side.

Owns the AE and its presentation contexts, the association policy and bounded
sockets (``scp.server``), the thin C-ECHO/C-STORE handlers (``scp.handlers``), the
spool that receives datasets on the store's filesystem (``scp.spool``), the durable
ingest that answers 0x0000 only once an instance is on disk and indexed
(``scp.ingest``), header checks (``scp.header``), study stability (``scp.stability``)
and start-up recovery (``scp.recovery``).

May import: ``store`` (and ``rules`` where it evaluates them), ``telemetry``. Never ``delivery``,
``portal`` or ``node``. Errors surface as DICOM status codes (``scp.ingest.Status``).
"""
