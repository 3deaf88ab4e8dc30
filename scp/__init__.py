"""SCP: Courier's DICOM side.

Owns the AE and its presentation contexts, the association policy and bounded
sockets (``scp.server``), the TLS listener (``scp.tls``), the thin C-ECHO/C-STORE
handlers (``scp.handlers``), the spool that receives datasets on the store's filesystem
(``scp.spool``), the durable ingest that answers 0x0000 only once an instance is on disk
and indexed (``scp.ingest``), header checks (``scp.header``), study stability
(``scp.stability``), start-up recovery (``scp.recovery``), storage commitment as the
receiver (``scp.commitment_scp``, reports in ``scp.commitment_reports``); and Courier as
an SCU: C-FIND/C-MOVE against the PACS (``scp.pacs``, settings in
``scp.pacs_settings``), C-STORE to another hospital (``scp.storescu``) with its storage
commitment requests (``scp.commitment``).

May import: ``store`` (and ``rules`` where it evaluates them), ``telemetry``, ``imaging``
(the declared pixel size only: nothing here decodes pixels). Never
``delivery``, ``portal`` or ``node``. Errors surface as DICOM status codes
(``scp.ingest.Status``); the SCU side has its own families (``scp.pacs.PacsError``,
``scp.storescu.StoreScuError``) whose messages say what to fix.
"""
